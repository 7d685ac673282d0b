"""The vCPU's state and what every ioctl family shares: the fd, the vcpu->mutex lock, the
guest FPU load/put (fpu_swap_kvm_fpstate) and the guest CPUID lookup.

The ioctl families live beside it the way arch/x86/kvm splits them: vcpu_xsave.py
(KVM_GET/SET_XSAVE{2}), vcpu_xcrs.py, vcpu_cpuid.py (KVM_SET/GET_CPUID2), vcpu_msrs.py,
vcpu_events.py (MP state, INIT/RESET, sregs) and vcpu_run.py (KVM_RUN, the guest);
kvmfpu.kvm.vcpu.Vcpu puts them together.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import wraps
from typing import TYPE_CHECKING, Concatenate, Final, ParamSpec, TypeVar, cast

from kvmfpu import uapi
from kvmfpu.arch import xfeatures as xf
from kvmfpu.core import msrs as msr
from kvmfpu.kvm import ioctl as _ioctl
from kvmfpu.kvm.cpuid import EMPTY, GuestCpuid
from kvmfpu.kvm.errors import closed_fd
from kvmfpu.linux.fpstate import FpuGuest, Thread

if TYPE_CHECKING:
    from kvmfpu.kvm.system import Kvm
    from kvmfpu.kvm.vcpu import Vcpu
    from kvmfpu.kvm.vcpu_xsave import XsavePath
    from kvmfpu.kvm.vm import Vm

T = TypeVar("T")
P = ParamSpec("P")
V = TypeVar("V", bound="VcpuBase")
ALL: Final = (1 << 64) - 1
KVM_MAX_XCRS: Final = uapi.KVM_MAX_XCRS
MAX_IO_MSRS: Final = uapi.MAX_IO_MSRS
KVM_XSAVE_SIZE: Final = uapi.KVM_XSAVE_SIZE
KVM_GET_XSAVE: Final = uapi.KVM_GET_XSAVE
KVM_SET_XSAVE: Final = uapi.KVM_SET_XSAVE

# MP states (include/uapi/linux/kvm.h, through kvmfpu.uapi).
MP_RUNNABLE: Final = uapi.KVM_MP_STATE_RUNNABLE
MP_UNINITIALIZED: Final = uapi.KVM_MP_STATE_UNINITIALIZED
MP_INIT_RECEIVED: Final = uapi.KVM_MP_STATE_INIT_RECEIVED
MP_HALTED: Final = uapi.KVM_MP_STATE_HALTED
MP_SIPI_RECEIVED: Final = uapi.KVM_MP_STATE_SIPI_RECEIVED
MP_AP_RESET_HOLD: Final = uapi.KVM_MP_STATE_AP_RESET_HOLD
MP_NAMES: Final = {0: "RUNNABLE", 1: "UNINITIALIZED", 2: "INIT_RECEIVED", 3: "HALTED",
                   4: "SIPI_RECEIVED", 5: "STOPPED", 6: "CHECK_STOP", 7: "OPERATING",
                   8: "LOAD", 9: "AP_RESET_HOLD", 10: "SUSPENDED"}
X86_MP_STATES: Final = frozenset({MP_RUNNABLE, MP_UNINITIALIZED, MP_INIT_RECEIVED, MP_HALTED,
                                  MP_SIPI_RECEIVED, MP_AP_RESET_HOLD})

CET_MSRS: Final = (msr.IA32_U_CET, msr.IA32_S_CET, msr.IA32_PL0_SSP, msr.IA32_PL1_SSP,
                   msr.IA32_PL2_SSP, msr.IA32_PL3_SSP, msr.IA32_INT_SSP_TAB)


def serialised(method: Callable[Concatenate[V, P], T]) -> Callable[Concatenate[V, P], T]:
    """A vCPU ioctl: under the emulated core's lock (Kvm.lock: vcpu->mutex, taken by
    kvm_vcpu_ioctl with mutex_lock_killable, and the one core the model runs vCPUs on)."""
    @wraps(method)
    def locked(self: V, /, *args: P.args, **kwargs: P.kwargs) -> T:
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


class VcpuBase:
    """A vCPU's state (the slots of kvmfpu.kvm.vcpu.Vcpu) and the shared helpers."""

    __slots__ = (
        "__weakref__",
        "_hooks",
        "_kvmfpu_fd",
        "_lock",
        "_running",
        "_xsave_path",
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
        self._xsave_path: XsavePath = kvm.xsave_path
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
            _ioctl.forget(self)

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
        return _ioctl.fileno(self)

    def ioctl(self, request: int, arg: object = 0, mutate_flag: bool = True) -> object:
        """The vCPU fd's ioctls with the uapi layouts (fills a writable buffer in place)."""
        if arg.__class__ is bytearray and mutate_flag and request.__class__ is int:
            # dispatch's hot case inline: a buffer filled in place, an int request; and
            # vcpu_ioctl's KVM_SET/GET_XSAVE cases (the methods make its closed-fd check).
            request &= 0xFFFF_FFFF
            if request == KVM_SET_XSAVE:
                cast("Vcpu", self).set_xsave(arg)
                return 0
            if request == KVM_GET_XSAVE and len(arg) >= KVM_XSAVE_SIZE:
                cast("Vcpu", self).get_xsave_into(arg)
                return 0
            return _ioctl.vcpu_ioctl(cast("Vcpu", self), request, arg)
        return _ioctl.dispatch(_ioctl.vcpu_ioctl, self, request, arg, mutate_flag)

    def _serve(self, request: int, arg: object) -> int:
        """The vCPU fd's handler (kvm_vcpu_ioctl), for ioctl(fd, ...) on its number."""
        return _ioctl.vcpu_ioctl(cast("Vcpu", self), request, arg)

    # -- helpers ---------------------------------------------------------------------------
    def _usable(self, what: str) -> None:
        """An ioctl may run: the fd is open and the vCPU is not in KVM_RUN."""
        if self.closed:
            raise closed_fd("vCPU")
        if self._running:
            raise RuntimeError(f"{what}: the vCPU is in KVM_RUN (leave the guest() block first)")

    def _cpuid_has(self, feature: str) -> bool:
        if self.cpuid is EMPTY:
            return False
        if feature in ("shstk", "ibt"):
            # guest_cpu_cap_has: guest CPUID & what KVM supports (a CPUID claiming CET on a
            # host KVM offers none gives no CET MSRs).
            return self.cpuid.has[feature] and bool(getattr(self.kvm.caps, feature))
        return self.cpuid.has[feature]

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

