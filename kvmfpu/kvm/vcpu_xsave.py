"""KVM_GET_XSAVE, KVM_GET_XSAVE2, KVM_SET_XSAVE and the checks alone (x86.c
kvm_vcpu_ioctl_x86_get/set_xsave; the fpu_copy_* helpers of arch/x86/kernel/fpu/xstate.c
through kvmfpu.linux.uabi)."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from kvmfpu.arch import legacy
from kvmfpu.arch import xfeatures as xf
from kvmfpu.kvm.cpuid import EMPTY
from kvmfpu.kvm.errors import closed_fd, einval
from kvmfpu.kvm.origins import cite
from kvmfpu.kvm.vcpu_base import ALL, KVM_XSAVE_SIZE, VcpuBase, serialised
from kvmfpu.linux import uabi
from kvmfpu.uapi import KVM_CAP_XSAVE2

if TYPE_CHECKING:
    from kvmfpu.kvm.caps import KvmCaps
    from kvmfpu.kvm.profiles import KernelProfile

_Q = struct.Struct("<Q")
FPSSE: Final = xf.FPSSE


@dataclass(frozen=True)
class XsavePath:
    """The KVM_GET/SET_XSAVE path of one Kvm, decided once: its kernel profile and KVM's
    caps do not change, so the switches are read at the first vCPU, not on every ioctl."""

    guest_fpu: bool              # fpu_guest: fpu_copy_* helpers (5.16+), else fill/load_xsave
    xsave2: bool                 # KVM_GET_XSAVE -EINVAL when uabi_size > 4096 (5.17+)
    masks_guest_xcr0: bool       # get_masks_guest_xcr0 (8647c52e9504)
    xfd_clears_xstate_bv: bool   # b45f72177594
    supported_xcr0: int
    #: user_xfeatures' origin (for the reason of a refusal) before and after KVM_SET_CPUID2.
    origin_default: tuple[str, str]
    origin_after_cpuid: tuple[str, str]

    @staticmethod
    def of(kernel: KernelProfile, caps: KvmCaps) -> XsavePath:
        default = ("the host's default user features", "uabi_header")
        after = default
        if kernel.has("user_xfeatures_from_cpuid"):
            extra = (" | FP | SSE (a1020a25e697)" if kernel.has("fpsse_always")
                     else " without FP/SSE (before a1020a25e697)")
            after = (f"set from guest CPUID.(0xD,0){extra}", "user_xfeatures_cpuid")
        return XsavePath(kernel.has("fpu_guest"), kernel.has("xsave2"),
                         kernel.has("get_masks_guest_xcr0"), kernel.has("xfd_clears_xstate_bv"),
                         caps.supported_xcr0, default, after)


class XsaveOps(VcpuBase):
    """The xsave ioctls of a vCPU."""

    __slots__ = ()

    def _user_xfeatures_origin(self) -> tuple[str, str]:
        """Where fpstate->user_xfeatures came from, and the origin key to cite."""
        xp = self._xsave_path
        return xp.origin_default if self.cpuid is EMPTY else xp.origin_after_cpuid

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
            xp = self._xsave_path
            gfpu = self.gfpu
            if not xp.guest_fpu:
                return bytes(uabi.fill_xsave_5_15(self.kvm.hk, gfpu, self.gsx, self.pkru))
            if xp.xsave2 and gfpu.uabi_size > KVM_XSAVE_SIZE:
                raise einval("kvm_vcpu_ioctl_x86_get_xsave",
                             f"guest_fpu.uabi_size {gfpu.uabi_size} > sizeof(struct "
                             "kvm_xsave) 4096 (dynamic features enabled): use KVM_GET_XSAVE2",
                             cite("get_xsave_uabi"))
            mask = self.gsx | FPSSE if xp.masks_guest_xcr0 else ALL
            return uabi.copy_guest_fpstate_to_uabi(self.kvm.hk, gfpu, KVM_XSAVE_SIZE, mask,
                                                   self.pkru)
        finally:
            lock.release()

    def get_xsave_into(self, out: bytearray) -> None:
        """KVM_GET_XSAVE into the caller's buffer (the raw ioctl with a bytearray of at
        least 4096 bytes): the same path as get_xsave, packed in place."""
        lock = self._lock
        lock.acquire()
        try:
            if self.closed or self._running:
                self._usable("KVM_GET_XSAVE")
            xp = self._xsave_path
            gfpu = self.gfpu
            if not xp.guest_fpu or (xp.xsave2 and gfpu.uabi_size > KVM_XSAVE_SIZE):
                out[:KVM_XSAVE_SIZE] = self.get_xsave()     # 5.15's fill_xsave, or EINVAL
                return
            mask = self.gsx | FPSSE if xp.masks_guest_xcr0 else ALL
            uabi.copy_guest_fpstate_to_uabi_into(self.kvm.hk, gfpu, mask, self.pkru, out)
        finally:
            lock.release()

    @serialised
    def get_xsave2(self) -> bytes:
        """KVM_GET_XSAVE2 into a buffer of KVM_CHECK_EXTENSION(KVM_CAP_XSAVE2) bytes, as
        VMMs size it: the kernel writes guest_fpu.uabi_size bytes, the rest stays zero."""
        self._usable("KVM_GET_XSAVE2")
        kvm = self.kvm
        if not self._xsave_path.xsave2:
            raise einval("kvm_arch_vcpu_ioctl", "KVM_GET_XSAVE2 does not exist before 5.17",
                         cite("get_xsave_uabi"))
        out = self._copy_out(self.gfpu.uabi_size)
        size = kvm.check_extension(KVM_CAP_XSAVE2)
        return out + bytes(size - len(out)) if size > len(out) else out

    def _copy_out(self, size: int) -> bytes:
        mask = self.gsx | FPSSE if self._xsave_path.masks_guest_xcr0 else ALL
        return bytes(uabi.copy_guest_fpstate_to_uabi(self.kvm.hk, self.gfpu, size, mask,
                                                     self.pkru))

    def _xsave_input(self, buf: bytes | bytearray | memoryview) -> uabi.Buffer:
        """What the kernel copies in (guest_fpu.uabi_size bytes), with XFD-armed bits
        cleared from XSTATE_BV where the kernel does that (b45f72177594)."""
        gfpu = self.gfpu
        need = gfpu.uabi_size
        cls = buf.__class__
        if ((cls is bytearray or cls is bytes) and len(buf) == need and need >= legacy.EXTENDED
                and not (gfpu.fpstate.xfd and self._xsave_path.xfd_clears_xstate_bv)):
            return buf          # exactly what the kernel reads, used as is (the hot path)
        view = memoryview(buf)
        if view.format != "B" or view.ndim != 1:
            view = view.cast("B")
        if len(view) < need:
            raise uabi.short_buffer(len(view), need, "kvm_vcpu_ioctl_x86_set_xsave (memdup_user)")
        data = view[:need] if len(view) > need else view
        xfd = gfpu.fpstate.xfd if self._xsave_path.xfd_clears_xstate_bv else 0
        short = need < legacy.EXTENDED
        if short or xfd:
            copy = bytearray(data)
            if short:
                # 5.17's short uabi_size (d187ba531230): the kernel read the header beyond
                # the copied bytes; the model reads zeros there.
                copy += bytes(legacy.EXTENDED - len(copy))
            if xfd:
                bv = _Q.unpack_from(copy, legacy.XSTATE_BV)[0]
                _Q.pack_into(copy, legacy.XSTATE_BV, bv & ~xfd)
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
            xp = self._xsave_path
            data = self._xsave_input(buf)
            hk = self.kvm.hk
            if not xp.guest_fpu:
                uabi.check_xsave_5_15(hk, data, xp.supported_xcr0)
            else:
                origin = xp.origin_default if self.cpuid is EMPTY else xp.origin_after_cpuid
                uabi.check_uabi_to_guest_fpstate(hk, self.gfpu, data, xp.supported_xcr0,
                                                 *origin)
        finally:
            lock.release()

    def set_xsave(self, buf: bytes | bytearray | memoryview) -> None:
        """KVM_SET_XSAVE: the kernel reads guest_fpu.uabi_size bytes (4096, more with AMX)."""
        lock = self._lock
        lock.acquire()
        try:
            if self.closed or self._running:
                self._usable("KVM_SET_XSAVE")
            xp = self._xsave_path
            gfpu = self.gfpu
            cls = buf.__class__
            if ((cls is bytearray or cls is bytes) and len(buf) == gfpu.uabi_size >= legacy.EXTENDED
                    and not (gfpu.fpstate.xfd and xp.xfd_clears_xstate_bv)):
                data: uabi.Buffer = buf       # _xsave_input's fast case, inline (hot path)
            else:
                data = self._xsave_input(buf)
            hk = self.kvm.hk
            if not xp.guest_fpu:
                pkru = uabi.load_xsave_5_15(hk, self.gfpu, data, xp.supported_xcr0)
            else:
                origin = xp.origin_default if self.cpuid is EMPTY else xp.origin_after_cpuid
                pkru = uabi.copy_uabi_to_guest_fpstate(hk, self.gfpu, data, xp.supported_xcr0,
                                                       *origin)
            if pkru is not None:
                self.pkru = pkru
        finally:
            lock.release()
