"""A KVM vCPU: the xstate ioctls, MSRs, INIT/RESET and guest execution.

Each method is named after its ioctl and follows the kernel function that serves it
(arch/x86/kvm/x86.c; msrs.c in 7.x), as the profile's switches select. Failures raise
:class:`~kvmfpu.kvm.errors.KvmError` with the errno the kernel returns and a reason
naming the function, the condition and the commit.
"""

from __future__ import annotations

import errno
import struct
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import wraps
from typing import TYPE_CHECKING, Concatenate, Final, ParamSpec, TypeVar

from kvmfpu.arch import legacy
from kvmfpu.arch import xfeatures as xf
from kvmfpu.arch.xfeatures import bits, describe_mask
from kvmfpu.core import msrs as msr
from kvmfpu.core.faults import DeviceNotAvailable, Fault, GeneralProtection, InvalidOpcode
from kvmfpu.kvm import pvm
from kvmfpu.kvm.cpuid import (
    EMPTY,
    KVM_MAX_CPUID_ENTRIES,
    CpuidEntry,
    GuestCpuid,
    intern,
    pack_entries,
    xstate_required_size,
)
from kvmfpu.kvm.errors import KvmError, closed_fd, einval
from kvmfpu.kvm.origins import cite
from kvmfpu.linux import uabi
from kvmfpu.linux.fpstate import FpuGuest, Thread
from kvmfpu.uapi import KVM_CAP_XSAVE2

if TYPE_CHECKING:
    from kvmfpu.kvm.system import Kvm
    from kvmfpu.kvm.vm import Vm
    from kvmfpu.linux.kernel import HostKernel

T = TypeVar("T")
P = ParamSpec("P")
ALL: Final = (1 << 64) - 1
KVM_MAX_XCRS: Final = 16
MAX_IO_MSRS: Final = 256
KVM_XSAVE_SIZE: Final = 4096

# MP states (include/uapi/linux/kvm.h).
MP_RUNNABLE, MP_UNINITIALIZED, MP_INIT_RECEIVED, MP_HALTED, MP_SIPI_RECEIVED = 0, 1, 2, 3, 4
MP_AP_RESET_HOLD = 9
MP_NAMES: Final = {0: "RUNNABLE", 1: "UNINITIALIZED", 2: "INIT_RECEIVED", 3: "HALTED",
                   4: "SIPI_RECEIVED", 5: "STOPPED", 6: "CHECK_STOP", 7: "OPERATING",
                   8: "LOAD", 9: "AP_RESET_HOLD", 10: "SUSPENDED"}
_X86_MP_STATES: Final = {MP_RUNNABLE, MP_UNINITIALIZED, MP_INIT_RECEIVED, MP_HALTED,
                         MP_SIPI_RECEIVED, MP_AP_RESET_HOLD}

CET_MSRS: Final = (msr.IA32_U_CET, msr.IA32_S_CET, msr.IA32_PL0_SSP, msr.IA32_PL1_SSP,
                   msr.IA32_PL2_SSP, msr.IA32_PL3_SSP, msr.IA32_INT_SSP_TAB)
#: CET MSRs whose state lives in the guest's xsave area (kvm_get/set_xstate_msr).
_XSTATE_CET: Final = {msr.IA32_U_CET: (11, 0), msr.IA32_PL3_SSP: (11, 8),
                      msr.IA32_PL0_SSP: (12, 0), msr.IA32_PL1_SSP: (12, 8),
                      msr.IA32_PL2_SSP: (12, 16)}


def _serialised(method: Callable[Concatenate[Vcpu, P], T]) -> Callable[Concatenate[Vcpu, P], T]:
    """A vCPU ioctl: under the emulated core's lock (Kvm.lock: vcpu->mutex, taken by
    kvm_vcpu_ioctl with mutex_lock_killable, and the one core the model runs vCPUs on)."""
    @wraps(method)
    def locked(self: Vcpu, /, *args: P.args, **kwargs: P.kwargs) -> T:
        lock = self._lock
        lock.acquire()
        try:
            return method(self, *args, **kwargs)
        finally:
            lock.release()
    return locked


class MsrFailure(Exception):
    """A single MSR access failed (KVM returns 1 or KVM_MSR_RET_UNSUPPORTED)."""

    def __init__(self, reason: str, unsupported: bool = False):
        super().__init__(reason)
        self.reason = reason
        self.unsupported = unsupported


@dataclass
class SRegs:
    """The parts of KVM_GET/SET_SREGS that matter for xstate."""

    cr0_ts: bool = False
    cr4_osxsave: bool = False
    cr4_pke: bool = False
    cpl: int = 0


class Vcpu:
    __slots__ = (
        "__weakref__",
        "_hooks",
        "_kvmfpu_fd",
        "_lock",
        "_running",
        "at_reset_vector",
        "cet_s",
        "closed",
        "cpuid",
        "gfpu",
        "gss",
        "gsx",
        "has_run",
        "ia32_xss",
        "id",
        "int_ssp_tab",
        "kvm",
        "last_msr_failure",
        "mp_state",
        "pending_init",
        "pending_sipi",
        "pkru",
        "sregs",
        "thread",
        "vm",
        "xcr0",
        "xfd_no_write_intercept",
    )

    def __init__(self, vm: Vm, vcpu_id: int):
        self.vm = vm
        self.id = vcpu_id
        kvm = vm.kvm
        self.kvm: Kvm = kvm            # an attribute, not a property: the ioctls' hot path
        hk = kvm.hk
        # kvm_arch_vcpu_create -> fpu_alloc_guest_fpstate (fpu_init_guest_permissions locks
        # the process's guest permissions).
        fps = hk.guest_fpstate()
        p = kvm.kernel
        if p.has("fpu_guest"):
            uabi_size = (hk.user_size(hk.cfg.user_default)
                         if p.has("uabi_size_default_bug") else KVM_XSAVE_SIZE)
        else:
            uabi_size = KVM_XSAVE_SIZE
        self.gfpu = FpuGuest(fps, fps.xfeatures, kvm.process.guest_perm.state_perm, uabi_size)
        kvm.lock_guest_permissions()
        self.thread = Thread(name=f"vcpu{vcpu_id}")
        self.cpuid: GuestCpuid = EMPTY
        self.gsx = 0                 # vcpu->arch.guest_supported_xcr0
        self.gss = 0                 # vcpu->arch.guest_supported_xss (6.18)
        self.pkru = 0
        self.sregs = SRegs()
        # kvm_arch_vcpu_create: APs wait for INIT/SIPI only with an in-kernel LAPIC.
        self.mp_state = MP_RUNNABLE if vcpu_id == 0 or not vm.irqchip else MP_UNINITIALIZED
        self.pending_init = False
        self.pending_sipi = False
        self.at_reset_vector = True      # RIP = FFF0h, CS = F000h (not otherwise modelled)
        self.has_run = False
        self.xfd_no_write_intercept = False
        self.cet_s = 0
        self.int_ssp_tab = 0
        self.last_msr_failure: str | None = None
        self._hooks: dict[str, list[Callable[[], None]]] = {}
        self._running = False
        self.closed = False
        self._lock = kvm.lock
        # kvm_vcpu_reset(vcpu, false): XCR0 = FP, IA32_XSS = 0.
        self.xcr0 = xf.FP
        self.ia32_xss = 0

    # -- raw ioctls ------------------------------------------------------------------------
    def close(self) -> None:
        """Close the vCPU fd: later ioctls on it fail with EBADF. The vCPU itself lives on
        until its VM is closed (kvm_vcpu_release only drops a VM reference), so its id stays
        taken (KVM_CREATE_VCPU: EEXIST, as measured on this machine's /dev/kvm)."""
        with self.vm.kvm.lock:
            self.closed = True
            from kvmfpu.kvm.ioctl import forget
            forget(self)

    def destroy(self) -> None:
        """kvm_destroy_vcpus (the VM is closed): the fpstates go back to the arena and the fd
        answers EBADF, so nothing of this vCPU reaches a later VM's."""
        self.close()
        hk = self.vm.kvm.hk
        hk.free_fpstate(self.gfpu.fpstate)
        if self.thread.fpstate is not None and self.thread.fpstate is not self.gfpu.fpstate:
            hk.free_fpstate(self.thread.fpstate)
        self.thread.fpstate = None

    def fileno(self) -> int:
        if self.closed:
            raise closed_fd("vCPU")
        from kvmfpu.kvm.ioctl import fileno
        return fileno(self)

    def ioctl(self, request: int, arg: object = 0, mutate_flag: bool = True) -> object:
        """The vCPU fd's ioctls with the uapi layouts (fills a writable buffer in place)."""
        from kvmfpu.kvm.ioctl import _dispatch
        return _dispatch(self, request, arg, mutate_flag)

    # -- helpers ---------------------------------------------------------------------------
    def _usable(self, what: str) -> None:
        """An ioctl may run: the fd is open and the vCPU is not in KVM_RUN."""
        if self.closed:
            raise closed_fd("vCPU")
        if self._running:
            raise RuntimeError(f"{what}: the vCPU is in KVM_RUN (leave the guest() block first)")

    def _user_xfeatures_origin(self) -> tuple[str, str]:
        """Where fpstate->user_xfeatures came from, and the origin key to cite."""
        p = self.kvm.kernel
        if p.has("user_xfeatures_from_cpuid") and self.cpuid is not EMPTY:
            extra = " | FP | SSE (a1020a25e697)" if p.has("fpsse_always") else \
                " without FP/SSE (before a1020a25e697)"
            return f"set from guest CPUID.(0xD,0){extra}", "user_xfeatures_cpuid"
        return "the host's default user features", "uabi_header"

    # -- KVM_GET_XSAVE / KVM_GET_XSAVE2 / KVM_SET_XSAVE ---------------------------------------
    def get_xsave(self) -> bytes:
        """KVM_GET_XSAVE: 4096 bytes of standard-format state."""
        # The lock inline, not through @_serialised: KVM_GET/SET_XSAVE and the checks of
        # ``kvmfpu validate`` are the hot path.
        lock = self._lock
        lock.acquire()
        try:
            if self.closed or self._running:
                self._usable("KVM_GET_XSAVE")
            kvm = self.kvm
            p = kvm.kernel
            if not p.has("fpu_guest"):
                return bytes(uabi.fill_xsave_5_15(kvm.hk, self.gfpu, self.gsx, self.pkru))
            if p.has("xsave2") and self.gfpu.uabi_size > KVM_XSAVE_SIZE:
                raise einval("kvm_vcpu_ioctl_x86_get_xsave",
                             f"guest_fpu.uabi_size {self.gfpu.uabi_size} > sizeof(struct "
                             "kvm_xsave) 4096 (dynamic features enabled): use KVM_GET_XSAVE2",
                             cite("get_xsave_uabi"))
            return self._copy_out(KVM_XSAVE_SIZE)
        finally:
            lock.release()

    @_serialised
    def get_xsave2(self) -> bytes:
        """KVM_GET_XSAVE2 into a buffer of KVM_CHECK_EXTENSION(KVM_CAP_XSAVE2) bytes, as
        VMMs size it: the kernel writes guest_fpu.uabi_size bytes, the rest stays zero."""
        self._usable("KVM_GET_XSAVE2")
        kvm = self.kvm
        if not kvm.kernel.has("xsave2"):
            raise einval("kvm_arch_vcpu_ioctl", "KVM_GET_XSAVE2 does not exist before 5.17",
                         cite("get_xsave_uabi"))
        out = self._copy_out(self.gfpu.uabi_size)
        size = kvm.check_extension(KVM_CAP_XSAVE2)
        return out + bytes(size - len(out)) if size > len(out) else out

    def _copy_out(self, size: int) -> bytes:
        kvm = self.kvm
        mask = self.gsx | xf.FPSSE if kvm.kernel.has("get_masks_guest_xcr0") else ALL
        return bytes(uabi.copy_guest_fpstate_to_uabi(kvm.hk, self.gfpu, size, mask, self.pkru))

    def _xsave_input(self, buf: bytes | bytearray | memoryview) -> memoryview:
        """What the kernel copies in (guest_fpu.uabi_size bytes), with XFD-armed bits
        cleared from XSTATE_BV where the kernel does that (b45f72177594)."""
        view = memoryview(buf).cast("B")
        need = self.gfpu.uabi_size
        if len(view) < need:
            raise uabi.short_buffer(len(view), need, "kvm_vcpu_ioctl_x86_set_xsave (memdup_user)")
        data = view[:need]
        xfd = self.gfpu.fpstate.xfd
        short = need < legacy.EXTENDED
        if short or (xfd and self.kvm.kernel.has("xfd_clears_xstate_bv")):
            copy = bytearray(data)
            if short:
                # 5.17's short uabi_size (d187ba531230): the kernel read the header beyond
                # the copied bytes; the model reads zeros there.
                copy += bytes(legacy.EXTENDED - len(copy))
            if xfd and self.kvm.kernel.has("xfd_clears_xstate_bv"):
                bv = struct.unpack_from("<Q", copy, legacy.XSTATE_BV)[0]
                struct.pack_into("<Q", copy, legacy.XSTATE_BV, bv & ~xfd)
            return memoryview(copy)
        return data

    def check_xsave(self, buf: bytes | bytearray | memoryview) -> None:
        """KVM_SET_XSAVE's checks alone: raises the KvmError KVM_SET_XSAVE would, changes
        nothing (what ``kvmfpu validate`` runs)."""
        lock = self._lock
        lock.acquire()
        try:
            if self.closed:
                raise closed_fd("vCPU")
            kvm = self.kvm
            data = self._xsave_input(buf)
            if not kvm.kernel.has("fpu_guest"):
                uabi.check_xsave_5_15(kvm.hk, data, kvm.caps.supported_xcr0)
            else:
                uabi.check_uabi_to_guest_fpstate(kvm.hk, self.gfpu, data,
                                                 kvm.caps.supported_xcr0,
                                                 *self._user_xfeatures_origin())
        finally:
            lock.release()

    def set_xsave(self, buf: bytes | bytearray | memoryview) -> None:
        """KVM_SET_XSAVE: the kernel reads guest_fpu.uabi_size bytes (4096, more with AMX)."""
        lock = self._lock
        lock.acquire()
        try:
            if self.closed or self._running:
                self._usable("KVM_SET_XSAVE")
            kvm = self.kvm
            data = self._xsave_input(buf)
            if not kvm.kernel.has("fpu_guest"):
                pkru = uabi.load_xsave_5_15(kvm.hk, self.gfpu, data, kvm.caps.supported_xcr0)
            else:
                pkru = uabi.copy_uabi_to_guest_fpstate(kvm.hk, self.gfpu, data,
                                                       kvm.caps.supported_xcr0,
                                                       *self._user_xfeatures_origin())
            if pkru is not None:
                self.pkru = pkru
        finally:
            lock.release()

    # -- XCRs ----------------------------------------------------------------------------------
    def _xcr_valid_bits(self) -> tuple[int, str]:
        p = self.kvm.kernel
        if p.has("xcr0_valid_from_user_xfeatures"):
            return (self.gfpu.fpstate.user_xfeatures,
                    "fpstate->user_xfeatures (988896bb6182, until ee519b3a2ae3)")
        if self.cpuid is EMPTY:
            return 0, "guest_supported_xcr0, 0 until KVM_SET_CPUID2"
        return self.gsx, "guest_supported_xcr0 = CPUID.(0xD,0) & KVM's supported XCR0"

    def xcr_problem(self, index: int, xcr0: int) -> str | None:
        """Why __kvm_set_xcr(vcpu, index, xcr0) fails (with where the check came from), or
        None."""
        found = self._xcr_check(index, xcr0)
        return None if found is None else f"{found[0]} [{cite(found[1])}]"

    def _xcr_check(self, index: int, xcr0: int) -> tuple[str, str] | None:
        """(condition, origin key) of the first __kvm_set_xcr check ``xcr0`` fails."""
        if index != 0:
            return f"index {index} != XCR_XFEATURE_ENABLED_MASK", "xsetbv"
        if not xcr0 & xf.FP:
            return f"XCR0 {xcr0:#x}: x87 (bit 0) must be set", "xsetbv"
        if xcr0 & xf.YMM and not xcr0 & xf.SSE:
            return f"XCR0 {xcr0:#x}: YMM without SSE", "xsetbv"
        valid, what = self._xcr_valid_bits()
        valid |= xf.FP
        if xcr0 & ~valid:
            return (f"XCR0 {xcr0:#x} sets {describe_mask(xcr0 & ~valid)} outside the valid bits "
                    f"{valid:#x} ({what})", "xcr0_supported")
        if bool(xcr0 & xf.BNDREGS) != bool(xcr0 & xf.BNDCSR):
            return f"XCR0 {xcr0:#x}: BNDREGS and BNDCSR must be set together", "xcr0_mpx"
        if xcr0 & xf.AVX512:
            if not xcr0 & xf.YMM:
                return f"XCR0 {xcr0:#x}: AVX-512 without YMM", "xcr0_avx512"
            if xcr0 & xf.AVX512 != xf.AVX512:
                return f"XCR0 {xcr0:#x}: AVX-512 bits 7:5 must be all set", "xcr0_avx512"
        if self.kvm.kernel.has("amx") and xcr0 & xf.XTILE and xcr0 & xf.XTILE != xf.XTILE:
            return f"XCR0 {xcr0:#x}: XTILECFG and XTILEDATA must be set together", "xcr0_amx"
        return None

    @_serialised
    def get_xcrs(self) -> list[tuple[int, int]]:
        """KVM_GET_XCRS: [(xcr index, value)] (empty on a host without XSAVE)."""
        self._usable("KVM_GET_XCRS")
        if not self.kvm.hk.cfg.has_xsave:
            return []
        return [(0, self.xcr0)]

    @_serialised
    def set_xcrs(self, xcrs: Sequence[tuple[int, int]], *, flags: int = 0,
                 nr_xcrs: int | None = None) -> None:
        """KVM_SET_XCRS (kvm_vcpu_ioctl_x86_set_xcrs)."""
        self._usable("KVM_SET_XCRS")
        fn = "kvm_vcpu_ioctl_x86_set_xcrs"
        nr = len(xcrs) if nr_xcrs is None else nr_xcrs
        if not self.kvm.hk.cfg.has_xsave:
            raise einval(fn, "the host has no XSAVE", cite("xcrs"))
        if nr > KVM_MAX_XCRS:
            raise einval(fn, f"nr_xcrs {nr} > KVM_MAX_XCRS (16)", cite("xcrs"))
        if flags:
            raise einval(fn, f"flags {flags:#x} != 0", cite("xcrs"))
        for index, value in list(xcrs)[:nr]:
            if index == 0:
                found = self._xcr_check(0, value)
                if found:
                    raise einval("__kvm_set_xcr", found[0], cite(found[1]))
                self.xcr0 = value
                break

    # -- CPUID -----------------------------------------------------------------------------------
    @_serialised
    def set_cpuid2(self, entries: Sequence[CpuidEntry] | GuestCpuid) -> None:
        """KVM_SET_CPUID2 (kvm_set_cpuid, kvm_vcpu_after_set_cpuid)."""
        self._usable("KVM_SET_CPUID2")
        kvm = self.kvm
        p = kvm.kernel
        if isinstance(entries, GuestCpuid):
            table = entries
        else:
            if len(entries) > KVM_MAX_CPUID_ENTRIES:
                raise KvmError(errno.E2BIG, "kvm_vcpu_ioctl_set_cpuid2",
                               f"nent {len(entries)} > KVM_MAX_CPUID_ENTRIES (256)",
                               commit=cite("cpuid2"))
            table = intern(pack_entries(entries), len(entries))
        if kvm.flavor == "pvm":
            fixed = pvm.fixed_cpuid(table.entries, kvm.host, kvm.caps.supported_xcr0)
            table = intern(pack_entries(fixed), len(fixed))
        if self.has_run and p.has("set_cpuid_after_run_identical"):
            # Compared after the runtime update of both (kvm_set_cpuid's
            # __kvm_update_cpuid_runtime), so KVM_GET_CPUID2 output is accepted back.
            if ([self._runtime(e) for e in table.entries]
                    != [self._runtime(e) for e in self.cpuid.entries]):
                raise einval("kvm_set_cpuid", "the vCPU has run and the new CPUID differs "
                                              "(kvm_cpuid_check_equal)",
                             cite("cpuid_after_run_equal"))
            return
        if self.has_run and p.has("set_cpuid_after_run_forbidden"):
            raise einval("kvm_vcpu_ioctl_set_cpuid2", "KVM_SET_CPUID2 after KVM_RUN",
                         cite("cpuid_after_run_forbidden"))
        # kvm_check_cpuid: CPUID.0x80000008 virtual-address width, dynamic xfeatures.
        e = table.find(0x8000_0008, 0)
        if e is not None and (e.eax >> 8 & 0xFF) not in (0, 48, 57):
            raise einval("kvm_check_cpuid", f"CPUID.0x80000008 reports {e.eax >> 8 & 0xFF} "
                                            "virtual-address bits (only 0, 48 or 57)",
                         cite("check_cpuid_vaddr"))
        if p.has("amx"):
            # CPUID.(0xD,0) & XFEATURE_MASK_USER_DYNAMIC, not limited to what KVM supports:
            # asking for XTILEDATA where it cannot be permitted fails with -EPERM too.
            self._enable_guest_xfd_features(table.gsx_raw & xf.DYNAMIC_MASK)
        self.cpuid = table
        self.gsx = table.gsx_raw & kvm.caps.supported_xcr0
        self.gss = table.gss_raw & kvm.caps.supported_xss if p.has("cet") else 0
        fps = self.gfpu.fpstate
        if p.has("user_xfeatures_from_cpuid"):
            fps.user_xfeatures = self.gsx | (xf.FPSSE if p.has("fpsse_always") else 0)

    def _enable_guest_xfd_features(self, xfeatures: int) -> None:
        """fpu_enable_guest_xfd_features -> __xfd_enable_feature -> fpstate_realloc."""
        kvm = self.kvm
        xfeatures &= ~self.gfpu.xfeatures
        if not xfeatures:
            return
        perm = kvm.process.guest_perm
        if perm.state_perm & xfeatures != xfeatures:
            raise KvmError(errno.EPERM, "__xfd_enable_feature",
                           f"guest CPUID enables {describe_mask(xfeatures)} without "
                           "ARCH_REQ_XCOMP_GUEST_PERM", commit=cite("xfd_enable"))
        p = kvm.kernel
        kvm.hk.fpstate_realloc(self.gfpu, xfeatures, perm.state_size, perm.user_state_size,
                               user_xfeatures_too=not p.has("user_xfeatures_from_cpuid"),
                               thread=self.thread if self._running else None)

    @_serialised
    def get_cpuid2(self, nent: int = KVM_MAX_CPUID_ENTRIES) -> list[CpuidEntry]:
        """KVM_GET_CPUID2, with KVM's runtime bits (OSXSAVE, XSAVE sizes) applied."""
        if self.closed:
            raise closed_fd("vCPU")
        if nent < len(self.cpuid):
            raise KvmError(errno.E2BIG, "kvm_vcpu_ioctl_get_cpuid2",
                           f"nent {nent} < {len(self.cpuid)} entries", commit=cite("cpuid2"))
        return [self._runtime(e) for e in self.cpuid.entries]

    def _runtime(self, e: CpuidEntry) -> CpuidEntry:
        """kvm_update_cpuid_runtime: OSXSAVE from CR4, CPUID.0xD EBX sizes from XCR0/XSS."""
        layout = self.kvm.host.layout
        align = self.kvm.kernel.has("amx")
        if e.function == 1:
            ecx = e.ecx | 1 << 27 if self.sregs.cr4_osxsave else e.ecx & ~(1 << 27)
            return e._replace(ecx=ecx)
        if e.function == 0xD and e.index == 0:
            return e._replace(ebx=xstate_required_size(layout, self.xcr0, False, align))
        if e.function == 0xD and e.index == 1 and e.eax & 0xA:
            mask = self.xcr0 | (self.ia32_xss if self.kvm.kernel.has("cet") else 0)
            return e._replace(ebx=xstate_required_size(layout, mask, True, align))
        return e

    # -- MSRs ------------------------------------------------------------------------------------
    def _guest_supported_xfd(self) -> int:
        p = self.kvm.kernel
        if p.has("xcr0_valid_from_user_xfeatures"):
            return self.gfpu.fpstate.user_xfeatures & xf.XTILEDATA
        return self.gsx & xf.XTILEDATA

    def _advertised(self, index: int) -> bool:
        return index in self.kvm.msr_index_list()

    def _cpuid_has(self, feature: str) -> bool:
        if self.cpuid is EMPTY:
            return False
        if feature in ("shstk", "ibt"):
            # guest_cpu_cap_has: guest CPUID & what KVM supports (a CPUID claiming CET on a
            # host KVM offers none gives no CET MSRs).
            return self.cpuid.has[feature] and bool(getattr(self.kvm.caps, feature))
        return self.cpuid.has[feature]

    def _set_msr(self, index: int, data: int, host: bool) -> None:
        kvm = self.kvm
        p = kvm.kernel
        name = msr.name(index)
        if index == msr.IA32_XSS:
            if p.has("cet"):
                if not self._cpuid_has("xsaves"):
                    raise MsrFailure(f"{name}: guest CPUID lacks XSAVES "
                                     "(KVM_MSR_RET_UNSUPPORTED, 338543cbe033)", unsupported=True)
                if data & ~self.gss:
                    raise MsrFailure(f"{name}={data:#x} sets bits outside guest_supported_xss "
                                     f"{self.gss:#x}")
            else:
                if not host and not self._cpuid_has("xsaves"):
                    raise MsrFailure(f"{name}: guest CPUID lacks XSAVES")
                if data & ~kvm.caps.supported_xss:
                    raise MsrFailure(f"{name}={data:#x}: KVM supports no IA32_XSS bits "
                                     f"(kvm_caps.supported_xss = {kvm.caps.supported_xss:#x})")
            self.ia32_xss = data
            return
        if index in (msr.IA32_XFD, msr.IA32_XFD_ERR) and p.has("amx"):
            if not host and not self._cpuid_has("xfd"):
                raise MsrFailure(f"{name}: guest CPUID lacks XFD")
            supported = self._guest_supported_xfd()
            if data & ~supported:
                raise MsrFailure(f"{name}={data:#x} outside kvm_guest_supported_xfd "
                                 f"{supported:#x} (guest XCR0 support & XTILEDATA)")
            if index == msr.IA32_XFD:
                running = self._running and self.thread.fpstate is self.gfpu.fpstate
                kvm.hk.fpu_update_guest_xfd(self.thread if running else None, self.gfpu, data)
                if not host and data and kvm.flavor == "vmx":
                    # b5274b1b7ba8: stop intercepting XFD writes after the first non-zero one.
                    self.xfd_no_write_intercept = True
            else:
                self.gfpu.xfd_err = data
            return
        if index in CET_MSRS and p.has("cet"):
            self._set_cet_msr(index, data, host)
            return
        raise MsrFailure(f"{name} is not an MSR KVM handles here", unsupported=False)

    def _set_cet_msr(self, index: int, data: int, host: bool) -> None:
        name = msr.name(index)
        shstk, ibt = self._cpuid_has("shstk"), self._cpuid_has("ibt")
        la57 = self.kvm.host.has("la57")
        if index in (msr.IA32_U_CET, msr.IA32_S_CET):
            if not (shstk or ibt):
                raise MsrFailure(f"{name}: guest CPUID has neither SHSTK nor IBT",
                                 unsupported=True)
            problem = msr.u_s_cet_problem(data, shstk, ibt)
        else:
            if not shstk:
                raise MsrFailure(f"{name}: guest CPUID lacks SHSTK", unsupported=True)
            if index == msr.IA32_INT_SSP_TAB:
                problem = None if msr.canonical(data, la57) else f"{data:#x} is not canonical"
            else:
                problem = msr.ssp_problem(data, la57)
        if problem:
            raise MsrFailure(f"{name}: {problem} (kvm_is_valid_u_s_cet / SSP checks)")
        if index == msr.IA32_S_CET:
            self.cet_s = data
        elif index == msr.IA32_INT_SSP_TAB:
            self.int_ssp_tab = data
        else:
            self._xstate_msr(index, data)

    def _xstate_msr(self, index: int, data: int | None) -> int:
        """kvm_set/get_xstate_msr: load the guest FPU, WRMSR/RDMSR, put it back."""
        hk = self.kvm.hk
        with self._guest_fpu_loaded():
            cpu = hk.cpu
            cpu.cpl = 0
            if data is None:
                return int(cpu.rdmsr(index))
            cpu.wrmsr(index, data)
            return data

    def _get_msr(self, index: int, host: bool) -> int:
        kvm = self.kvm
        p = kvm.kernel
        name = msr.name(index)
        if index == msr.IA32_XSS:
            if not host and not self._cpuid_has("xsaves"):
                raise MsrFailure(f"{name}: guest CPUID lacks XSAVES")
            return self.ia32_xss
        if index in (msr.IA32_XFD, msr.IA32_XFD_ERR) and p.has("amx"):
            if not host and not self._cpuid_has("xfd"):
                raise MsrFailure(f"{name}: guest CPUID lacks XFD")
            return self.gfpu.fpstate.xfd if index == msr.IA32_XFD else self.gfpu.xfd_err
        if index in CET_MSRS and p.has("cet"):
            shstk, ibt = self._cpuid_has("shstk"), self._cpuid_has("ibt")
            if index in (msr.IA32_U_CET, msr.IA32_S_CET):
                if not (shstk or ibt):
                    raise MsrFailure(f"{name}: guest CPUID has neither SHSTK nor IBT", True)
            elif not shstk:
                raise MsrFailure(f"{name}: guest CPUID lacks SHSTK", True)
            if index == msr.IA32_S_CET:
                return self.cet_s
            if index == msr.IA32_INT_SSP_TAB:
                return self.int_ssp_tab
            return self._xstate_msr(index, None)
        raise MsrFailure(f"{name} is not an MSR KVM handles here")

    def _do_msr(self, index: int, value: int, write: bool) -> int:
        """kvm_do_msr_access for a host-initiated access (KVM_GET/SET_MSRS)."""
        try:
            if write:
                self._set_msr(index, value, host=True)
                return value
            return self._get_msr(index, host=True)
        except MsrFailure as failure:
            p = self.kvm.kernel
            if (failure.unsupported and p.has("msr_host_zero_write_advertised")
                    and (not write or value == 0) and self._advertised(index)):
                return 0
            raise

    @_serialised
    def get_msrs(self, indices: Iterable[int]) -> list[tuple[int, int]]:
        """KVM_GET_MSRS: the (index, value) pairs read, stopping at the first failure (the
        ioctl returns their count). Why it stopped is in ``last_msr_failure``."""
        self._usable("KVM_GET_MSRS")
        idx = list(indices)
        if len(idx) >= MAX_IO_MSRS:
            raise KvmError(errno.E2BIG, "msr_io", f"nmsrs {len(idx)} >= MAX_IO_MSRS (256)",
                           commit=cite("msr_io"))
        out: list[tuple[int, int]] = []
        self.last_msr_failure = None
        for index in idx:
            try:
                out.append((index, self._do_msr(index, 0, write=False)))
            except MsrFailure as failure:
                self.last_msr_failure = failure.reason
                break
        return out

    @_serialised
    def set_msrs(self, entries: Iterable[tuple[int, int]]) -> int:
        """KVM_SET_MSRS: how many entries were written before the first failure."""
        self._usable("KVM_SET_MSRS")
        pairs = list(entries)
        if len(pairs) >= MAX_IO_MSRS:
            raise KvmError(errno.E2BIG, "msr_io", f"nmsrs {len(pairs)} >= MAX_IO_MSRS (256)",
                           commit=cite("msr_io"))
        self.last_msr_failure = None
        for n, (index, value) in enumerate(pairs):
            try:
                self._do_msr(index, value, write=True)
            except MsrFailure as failure:
                self.last_msr_failure = failure.reason
                return n
        return len(pairs)

    # -- MP state, INIT, RESET ---------------------------------------------------------------
    @_serialised
    def get_mp_state(self) -> int:
        """KVM_GET_MP_STATE: runs kvm_apic_accept_events, so a pending INIT is emulated."""
        self._usable("KVM_GET_MP_STATE")
        p = self.kvm.kernel
        # Before 6.18 (and until 8819a49f9ff8 in 6.18-rc6) KVM_GET_MP_STATE loads the guest
        # FPU when MPX is supported, for the INIT path's sake.
        load = self.kvm.caps.mpx and (not p.has("xstate_reset_on_init_only")
                                      or p.has("init_fpu_put_imbalance_bug"))
        if load:     # "All paths that lead to INIT are required to load the guest's FPU"
            self._load_guest_fpu(["kvm_arch_vcpu_ioctl_get_mpstate", "kvm_load_guest_fpu"])
        try:
            self._accept_events()
        finally:
            if load:
                self._put_guest_fpu(["kvm_arch_vcpu_ioctl_get_mpstate", "kvm_put_guest_fpu"])
        return self.mp_state

    @_serialised
    def set_mp_state(self, state: int) -> None:
        self._usable("KVM_SET_MP_STATE")
        p = self.kvm.kernel
        if p.has("mp_state_validation") and state not in _X86_MP_STATES:
            raise einval("kvm_arch_vcpu_ioctl_set_mpstate",
                         f"mp_state {state} is not an x86 state", cite("mp_state"))
        if state != MP_RUNNABLE and not self.vm.irqchip:
            raise einval("kvm_arch_vcpu_ioctl_set_mpstate",
                         f"mp_state {MP_NAMES.get(state, state)} needs an in-kernel LAPIC "
                         "(KVM_CREATE_IRQCHIP)", cite("mp_state_lapic"))
        if state == MP_SIPI_RECEIVED:
            # KVM keeps INIT_RECEIVED and latches the SIPI (kvm_arch_vcpu_ioctl_set_mpstate).
            self.mp_state = MP_INIT_RECEIVED
            self.pending_sipi = True
        else:
            self.mp_state = state

    @_serialised
    def send_init(self) -> None:
        """Latch an INIT (KVM_SET_VCPU_EVENTS with KVM_VCPUEVENT_VALID_SMM and
        smi.latched_init=1); the next KVM_GET_MP_STATE or KVM_RUN emulates it
        (kvm_apic_accept_events). Without an in-kernel LAPIC KVM ignores the latch
        (kvm_vcpu_ioctl_x86_set_vcpu_events), and so does the model."""
        self._usable("KVM_SET_VCPU_EVENTS")
        if self.vm.irqchip:
            self.pending_init = True

    def _accept_events(self) -> None:
        """kvm_apic_accept_events: a latched INIT resets the vCPU (the BSP becomes RUNNABLE,
        an AP waits for SIPI), then a latched SIPI starts a vCPU waiting in INIT_RECEIVED."""
        if self.pending_init:
            self.pending_init = False
            self.reset(init_event=True)
            self.at_reset_vector = True
            self.mp_state = MP_RUNNABLE if self.id == 0 else MP_INIT_RECEIVED
        if self.pending_sipi:
            self.pending_sipi = False
            if self.mp_state == MP_INIT_RECEIVED:
                self.mp_state = MP_RUNNABLE

    def reset(self, *, init_event: bool) -> None:
        """kvm_vcpu_reset's xstate part (x86.c; kvm_xstate_reset from 6.18)."""
        kvm = self.kvm
        p = kvm.kernel
        hk = kvm.hk
        fps = self.gfpu.fpstate
        if p.has("xstate_reset_on_init_only"):
            mask = (kvm.caps.supported_xcr0 | kvm.caps.supported_xss) & (xf.MPX | xf.CET)
            if init_event and mask:
                # 6.18-rc1..rc5 put/load unconditionally; 8819a49f9ff8 only if in use.
                in_use = fps.in_use or p.has("init_fpu_put_imbalance_bug")
                if in_use:
                    self._put_guest_fpu(["kvm_xstate_reset", "kvm_put_guest_fpu"])
                for b in bits(mask):
                    hk.fpstate_clear_xstate_component(self.gfpu.fpstate, b)
                if in_use:
                    self._load_guest_fpu(["kvm_xstate_reset", "kvm_load_guest_fpu"])
        elif kvm.caps.mpx:
            if init_event:
                self._put_guest_fpu(["kvm_vcpu_reset", "kvm_put_guest_fpu"])
            for b in (3, 4):
                hk.fpstate_clear_xstate_component(self.gfpu.fpstate, b)
            if init_event:
                self._load_guest_fpu(["kvm_vcpu_reset", "kvm_load_guest_fpu"])
        if not init_event:
            self.xcr0 = xf.FP
            self.ia32_xss = 0
        elif not p.has("xss_keep_on_init"):
            self.ia32_xss = 0
        # INIT and RESET: CR0 = 60000010h (TS clear), CR4 = 0, CPL 0 (SDM Vol. 3 §10.1.1;
        # checked on this machine's kvm_pvm); XCR0 survives INIT.
        self.sregs = SRegs()

    # -- guest FPU load/put (fpu_swap_kvm_fpstate) -------------------------------------------
    def _load_guest_fpu(self, chain: list[str]) -> None:
        self.kvm.hk.fpu_swap_kvm_fpstate(self.thread, self.gfpu, True, chain)

    def _put_guest_fpu(self, chain: list[str]) -> None:
        self.kvm.hk.fpu_swap_kvm_fpstate(self.thread, self.gfpu, False, chain)

    @contextmanager
    def _guest_fpu_loaded(self) -> Iterator[None]:
        if self.gfpu.fpstate.in_use:
            yield
            return
        # The ioctl runs on the vCPU thread: its PKRU is in the register when the guest
        # FPU is put back (so the guest fpstate's XSTATE_BV keeps PKRU, as on a real host).
        with self.kvm.hk.running(self.thread):
            self._load_guest_fpu(["kvm_load_guest_fpu"])
            try:
                yield
            finally:
                self._put_guest_fpu(["kvm_put_guest_fpu"])

    # -- sregs -------------------------------------------------------------------------------
    @_serialised
    def get_sregs(self) -> SRegs:
        if self.closed:
            raise closed_fd("vCPU")
        return SRegs(**self.sregs.__dict__)

    @_serialised
    def set_sregs(self, /, sregs: SRegs | None = None, **changes: object) -> None:
        """KVM_SET_SREGS for the xstate-relevant bits (CR0.TS, CR4.OSXSAVE, CR4.PKE, CPL)."""
        self._usable("KVM_SET_SREGS")
        new = SRegs(**(sregs or self.sregs).__dict__)
        for k, v in changes.items():
            if not hasattr(new, k):
                raise TypeError(f"unknown sreg {k}")
            setattr(new, k, v)
        kvm = self.kvm
        if new.cr4_osxsave and not kvm.hk.cfg.has_xsave:
            raise einval("kvm_set_cr4", "CR4.OSXSAVE on a host without XSAVE "
                                        "(cr4_reserved_bits)", cite("cr4_osxsave"))
        if new.cr4_pke and not kvm.caps.pku:
            raise einval("kvm_set_cr4", "CR4.PKE: KVM offers no PKU (cr4_reserved_bits)",
                         cite("cr4_osxsave"))
        # __kvm_is_valid_cr4: cr4_guest_rsvd_bits come from the guest CPUID once
        # KVM_SET_CPUID2 ran. kvm_pvm accepts OSXSAVE regardless (measured here).
        if self.cpuid is not EMPTY and kvm.flavor != "pvm":
            if new.cr4_osxsave and not self._cpuid_has("xsave"):
                raise einval("kvm_set_cr4", "CR4.OSXSAVE but the guest CPUID has no XSAVE "
                                            "(cr4_guest_rsvd_bits)", cite("cr4_osxsave"))
            if new.cr4_pke and not self._cpuid_has("pku"):
                raise einval("kvm_set_cr4", "CR4.PKE but the guest CPUID has no PKU "
                                            "(cr4_guest_rsvd_bits)", cite("cr4_osxsave"))
        self.sregs = new
        # __set_sregs_common: "older userspace won't unhalt the vcpu on reset" - the BSP at
        # the reset vector becomes RUNNABLE.
        if self.id == 0 and self.at_reset_vector:
            self.mp_state = MP_RUNNABLE

    # -- injected host events ----------------------------------------------------------------
    @_serialised
    def inject(self, point: str, event: str | Callable[[], None]) -> None:
        """Run a host event at the next ``point`` of KVM_RUN: "irq_window" (after a VM exit,
        IRQs enabled, before the exit handler) or "entry" (before the next VM entry).
        Events: "kernel_fpu_begin" (an interrupt that uses the FPU), "preempt" (a context
        switch away and back), or any callable."""
        if self.closed:
            raise closed_fd("vCPU")
        if point not in ("irq_window", "entry"):
            raise ValueError(f"unknown injection point {point!r}")
        if isinstance(event, str):
            hk = self.kvm.hk
            if event == "kernel_fpu_begin":
                def run() -> None:
                    hk.kernel_fpu_begin(self.thread, "irq")
                    hk.kernel_fpu_end()
            elif event == "preempt":
                def run() -> None:
                    hk.context_switch_out(self.thread)
            else:
                raise ValueError(f"unknown event {event!r}")
            self._hooks.setdefault(point, []).append(run)
        else:
            self._hooks.setdefault(point, []).append(event)

    def _fire(self, point: str) -> None:
        for fn in self._hooks.pop(point, []):
            fn()

    # -- KVM_RUN ---------------------------------------------------------------------------------
    @contextmanager
    def guest(self) -> Iterator[Guest]:
        """One KVM_RUN: ``with vcpu.guest() as g: g.xsetbv(0, v); g.wrmsr(...); ...``.

        The guest FPU is loaded on entry (kvm_load_guest_fpu) and put back on exit; host
        faults (seed 003's #NM) surface as HostOops. The block holds the core's lock (KVM_RUN
        holds vcpu->mutex): other threads' ioctls wait until it ends."""
        lock = self._lock
        lock.acquire()
        try:
            self._usable("KVM_RUN")
            kvm = self.kvm
            g = Guest(self)
            self._accept_events()
            self.has_run = True
            self.at_reset_vector = False
            with kvm.hk.running(self.thread):
                self._load_guest_fpu(["kvm_arch_vcpu_ioctl_run", "kvm_load_guest_fpu"])
                self._running = True
                try:
                    yield g
                    g._leave()
                finally:
                    self._running = False
                    if g.in_guest:
                        g._vmexit()
                    if self.thread.fpstate is self.gfpu.fpstate:
                        self._put_guest_fpu(["kvm_arch_vcpu_ioctl_run", "kvm_put_guest_fpu"])
        finally:
            lock.release()


class Guest:
    """Instructions of a running guest. Intercepted ones (XSETBV, WRMSR to XSS/XFD/...) exit
    to KVM's handlers; the rest execute on the emulated core with the guest's XCR0, XSS, XFD
    and PKRU loaded. A guest-visible fault raises the core's Fault."""

    def __init__(self, vcpu: Vcpu):
        self.vcpu = vcpu
        self.in_guest = False
        self._host_pkru = 0

    @property
    def _hk(self) -> HostKernel:
        return self.vcpu.kvm.hk

    def _chain(self) -> list[str]:
        return ["kvm_arch_vcpu_ioctl_run", "vcpu_enter_guest"]

    def _enter(self) -> None:
        """vcpu_enter_guest up to VM entry."""
        if self.in_guest:
            return
        v = self.vcpu
        hk = self._hk
        v._fire("entry")
        if v.thread.need_fpu_load:
            hk.fpregs_restore_userregs(v.thread, self._chain())
        cpu = hk.cpu
        cpu.cpl = 0
        if v.gfpu.xfd_err:
            cpu.wrmsr(msr.IA32_XFD_ERR, v.gfpu.xfd_err)
        host_cfg = hk.cfg
        if v.sregs.cr4_osxsave:
            if v.xcr0 != host_cfg.xcr0:
                cpu.xsetbv(0, v.xcr0)
            if self._xsaves_enabled() and v.ia32_xss != host_cfg.xss:
                cpu.wrmsr(msr.IA32_XSS, v.ia32_xss)
        if self._pkru_switched():
            self._host_pkru = cpu.reg("pkru")
            if v.pkru != self._host_pkru:
                cpu.set_reg("pkru", v.pkru)
        cpu.cr4_osxsave = v.sregs.cr4_osxsave and host_cfg.has_xsave
        cpu.cr0_ts = v.sregs.cr0_ts
        cpu.cpl = v.sregs.cpl
        self.in_guest = True

    def _xsaves_enabled(self) -> bool:
        """guest_cpu_cap_has(XSAVES): VMX enables it with guest XSAVE + XSAVES in CPUID and
        KVM support; SVM cannot hide XSAVES, so it is enabled whenever the host uses XSAVES
        and the guest has XSAVE (svm_vcpu_after_set_cpuid)."""
        v = self.vcpu
        kvm = v.kvm
        if kvm.flavor == "svm":
            return kvm.hk.cfg.uses_xsaves and v._cpuid_has("xsave")
        return kvm.caps.xsaves and v._cpuid_has("xsave") and v._cpuid_has("xsaves")

    def _pkru_switched(self) -> bool:
        v = self.vcpu
        return (v.kvm.host.has("pku") and v.kvm.flavor != "pvm"
                and bool(v.xcr0 & xf.PKRU or v.sregs.cr4_pke))

    def _vmexit(self) -> None:
        """VM exit up to the exit handler (kvm_load_host_xsave_state, XFD sync, IRQ window)."""
        v = self.vcpu
        hk = self._hk
        cpu = hk.cpu
        cpu.cpl = 0
        cpu.cr0_ts = False
        cpu.cr4_osxsave = hk.cfg.has_xsave
        if self._pkru_switched():
            v.pkru = cpu.reg("pkru")
            if v.pkru != self._host_pkru:
                cpu.set_reg("pkru", self._host_pkru)
        host_cfg = hk.cfg
        if v.sregs.cr4_osxsave:
            if v.xcr0 != host_cfg.xcr0:
                cpu.xsetbv(0, host_cfg.xcr0)
            if self._xsaves_enabled() and v.ia32_xss != host_cfg.xss:
                cpu.wrmsr(msr.IA32_XSS, host_cfg.xss)
        if v.xfd_no_write_intercept and hk.dynamic:      # fpu_sync_guest_vmexit_xfd_state
            v.gfpu.fpstate.xfd = cpu.xfd
            hk.xfd_state = cpu.xfd
        if v.gfpu.xfd_err and hk.dynamic:
            cpu.wrmsr(msr.IA32_XFD_ERR, 0)
        self.in_guest = False
        v._fire("irq_window")

    def _leave(self) -> None:
        if self.in_guest:
            self._vmexit()

    def _native(self, fn: Callable[[], T]) -> T:
        self._enter()
        try:
            return fn()
        except DeviceNotAvailable as fault:
            v = self.vcpu
            hk = self._hk
            if hk.dynamic and v.gfpu.fpstate.xfd:
                v.gfpu.xfd_err = hk.cpu.xfd_err     # handle_nm_fault_irqoff (ec5be88ab29f)
            raise fault

    def _exit_to_kvm(self, handler: Callable[[], Fault | None]) -> None:
        """An intercepted instruction: VM exit, the handler, and re-entry (which is where a
        stale XSTATE_BV meets XFD in seed 003)."""
        self._enter()
        self._vmexit()
        fault = handler()
        self._enter()
        if fault is not None:
            raise fault

    def _gpa(self, gpa: int, size: int) -> int:
        vm = self.vcpu.vm
        if gpa < 0 or gpa + size > vm.memory_size:
            raise GeneralProtection("guest", f"guest physical address {gpa:#x} outside the "
                                             f"VM's {vm.memory_size:#x} bytes of memory")
        return int(vm.memory_base + gpa)

    # intercepted
    def xsetbv(self, ecx: int, value: int) -> None:
        """kvm_emulate_xsetbv: #GP(0) when CPL != 0 or __kvm_set_xcr fails."""
        v = self.vcpu
        if not v.sregs.cr4_osxsave:
            raise InvalidOpcode("XSETBV", "CR4.OSXSAVE=0 (#UD has priority over the intercept)")

        def handler() -> Fault | None:
            if v.sregs.cpl:
                return GeneralProtection("XSETBV", f"CPL={v.sregs.cpl} (kvm_emulate_xsetbv)")
            problem = v.xcr_problem(ecx & 0xFFFFFFFF, value)
            if problem:
                return GeneralProtection("XSETBV", f"__kvm_set_xcr: {problem}")
            v.xcr0 = value
            return None
        self._exit_to_kvm(handler)

    def wrmsr(self, index: int, value: int) -> None:
        v = self.vcpu
        if index == msr.IA32_XFD and v.xfd_no_write_intercept:
            self._native(lambda: self._hk.cpu.wrmsr(index, value))
            return

        def handler() -> Fault | None:
            if v.sregs.cpl:
                return GeneralProtection("WRMSR", f"CPL={v.sregs.cpl}")
            try:
                v._set_msr(index, value, host=False)
            except MsrFailure as failure:
                return GeneralProtection("WRMSR", f"kvm_set_msr_common: {failure.reason}")
            return None
        self._exit_to_kvm(handler)

    def rdmsr(self, index: int) -> int:
        v = self.vcpu
        result: list[int] = []

        def handler() -> Fault | None:
            try:
                result.append(v._get_msr(index, host=False))
            except MsrFailure as failure:
                return GeneralProtection("RDMSR", f"kvm_get_msr_common: {failure.reason}")
            return None
        self._exit_to_kvm(handler)
        return int(result[0])

    # native
    def xgetbv(self, ecx: int) -> int:
        return self._native(lambda: self._hk.cpu.xgetbv(ecx))

    def set_reg(self, name: str, value: int | bytes) -> None:
        """An instruction writing a register (e.g. VMOVDQU, LDTILECFG, WRPKRU)."""
        self._native(lambda: self._hk.cpu.set_reg(name, value))

    def reg(self, name: str) -> int:
        return self._native(lambda: self._hk.cpu.reg(name))

    def use(self, mask: int, mnemonic: str = "instruction") -> None:
        """An instruction using components ``mask`` (TILELOADD: XTILEDATA): #NM when armed."""
        self._native(lambda: self._hk.cpu.use(mask, mnemonic))

    def tilerelease(self) -> None:
        self._native(self._hk.cpu.tilerelease)

    def _mem_insn(self, name: str, gpa: int, rfbm: int, size: int) -> None:
        addr = self._gpa(gpa, size)
        self._native(lambda: getattr(self._hk.cpu, name)(addr, rfbm))

    def fxsave(self, gpa: int) -> None:
        addr = self._gpa(gpa, 512)
        self._native(lambda: self._hk.cpu.fxsave(addr))

    def xsave(self, gpa: int, rfbm: int) -> None:
        self._mem_insn("xsave", gpa, rfbm, self._area())

    def xsaveopt(self, gpa: int, rfbm: int) -> None:
        self._mem_insn("xsaveopt", gpa, rfbm, self._area())

    def xsavec(self, gpa: int, rfbm: int) -> None:
        self._mem_insn("xsavec", gpa, rfbm, self._area())

    def xrstor(self, gpa: int, rfbm: int) -> None:
        self._mem_insn("xrstor", gpa, rfbm, self._area())

    def xsaves(self, gpa: int, rfbm: int) -> None:
        self._require_xsaves("XSAVES")
        self._mem_insn("xsaves", gpa, rfbm, self._area())

    def xrstors(self, gpa: int, rfbm: int) -> None:
        self._require_xsaves("XRSTORS")
        self._mem_insn("xrstors", gpa, rfbm, self._area())

    def _require_xsaves(self, mnemonic: str) -> None:
        kvm = self.vcpu.kvm
        if kvm.flavor == "svm":
            # SVM cannot hide XSAVES: the hardware runs it whatever the guest CPUID says
            # (svm_vcpu_after_set_cpuid); the core raises #UD only without hardware XSAVES.
            return
        if not self._xsaves_enabled():
            raise InvalidOpcode(mnemonic, "XSAVES not enabled for the guest (VMX secondary "
                                          "control ENABLE_XSAVES clear)")

    def _area(self) -> int:
        return self._hk.layout.standard_size(self._hk.cfg.xcr0) + 4096
