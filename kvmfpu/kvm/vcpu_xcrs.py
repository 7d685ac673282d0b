"""KVM_GET_XCRS, KVM_SET_XCRS and __kvm_set_xcr's checks (arch/x86/kvm/x86.c)."""

from __future__ import annotations

from collections.abc import Sequence

from kvmfpu.arch import xfeatures as xf
from kvmfpu.arch.xfeatures import describe_mask
from kvmfpu.kvm.cpuid import EMPTY
from kvmfpu.kvm.errors import einval
from kvmfpu.kvm.origins import cite
from kvmfpu.kvm.vcpu_base import KVM_MAX_XCRS, VcpuBase, serialised


class XcrOps(VcpuBase):
    """The XCR ioctls of a vCPU."""

    __slots__ = ()

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

    @serialised
    def get_xcrs(self) -> list[tuple[int, int]]:
        """KVM_GET_XCRS: [(xcr index, value)] (empty on a host without XSAVE)."""
        self._usable("KVM_GET_XCRS")
        if not self.kvm.hk.cfg.has_xsave:
            return []
        return [(0, self.xcr0)]

    @serialised
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

