"""KVM_GET_XSAVE, KVM_GET_XSAVE2, KVM_SET_XSAVE and the checks alone (x86.c
kvm_vcpu_ioctl_x86_get/set_xsave; the fpu_copy_* helpers of arch/x86/kernel/fpu/xstate.c
through kvmfpu.linux.uabi)."""

from __future__ import annotations

import struct

from kvmfpu.arch import legacy
from kvmfpu.arch import xfeatures as xf
from kvmfpu.kvm.cpuid import EMPTY
from kvmfpu.kvm.errors import closed_fd, einval
from kvmfpu.kvm.origins import cite
from kvmfpu.kvm.vcpu_base import ALL, KVM_XSAVE_SIZE, VcpuBase, serialised
from kvmfpu.linux import uabi
from kvmfpu.uapi import KVM_CAP_XSAVE2


class XsaveOps(VcpuBase):
    """The xsave ioctls of a vCPU."""

    __slots__ = ()

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
        # The lock inline, not through @serialised: KVM_GET/SET_XSAVE and the checks of
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

    @serialised
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

