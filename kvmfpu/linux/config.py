"""What the host kernel enables: fpu_kernel_cfg, fpu_user_cfg and the guest defaults.

Source: Linux arch/x86/kernel/fpu/init.c and xstate.c (fpu__init_system_xstate,
xsave_cpuid_features): the kernel enables each user component it knows and the CPU has
(PKRU only with PKU, AMX from 5.16 with AMX_TILE), supervisor components it supports
(CET_USER from 6.6 for user shadow stacks, CET_KERNEL as a guest-only feature from 6.18,
PASID with ENQCMD from 5.18), uses XSAVES (compacted buffers) when the CPU has it and no erratum
clears it, otherwise XSAVEOPT/XSAVE with standard-format buffers.
"""

from __future__ import annotations

from dataclasses import dataclass

from kvmfpu.arch import xfeatures as xf
from kvmfpu.cpus.model import HostModel
from kvmfpu.kvm.profiles import KernelProfile, erratum_1386_fixed_by_microcode

# What the kernel knows, by component.
_BASE_USER = xf.FP | xf.SSE | xf.YMM | xf.MPX | xf.AVX512


@dataclass(frozen=True)
class FpuConfig:
    has_xsave: bool
    uses_xsaves: bool            # X86_FEATURE_XSAVES after errata: compacted kernel buffers
    uses_xsaveopt: bool
    xcr0: int                    # host XCR0 = fpu_user_cfg.max_features
    xss: int                     # host IA32_XSS
    kernel_max: int              # fpu_kernel_cfg.max_features
    kernel_default: int          # fpu_kernel_cfg.default_features
    guest_default: int           # guest_default_cfg (6.18: + guest-only CET_KERNEL)
    user_max: int                # fpu_user_cfg.max_features
    user_default: int            # fpu_user_cfg.default_features
    mxcsr_mask: int              # init_fpstate's MXCSR_MASK (boot FXSAVE)
    mxcsr_feature_mask: int      # what MXCSR is validated against
    zen_erratum_applied: bool


def zen_xsaves_erratum_host(host: HostModel) -> bool:
    """AMD family 17h: erratum 1386 (XSAVES may not save state correctly)."""
    return host.vendor == "AuthenticAMD" and host.signature[0] == 0x17


def fpu_config(host: HostModel, kernel: KernelProfile) -> FpuConfig:
    has_xsave = host.has("xsave")
    mask = host.behaviour.mxcsr_mask
    if not has_xsave:
        return FpuConfig(False, False, False, 0, 0, 0, 0, 0, 0, 0, mask, mask or 0xFFBF, False)
    erratum = kernel.has("zen_xsaves_erratum") and zen_xsaves_erratum_host(host)
    if erratum and kernel.has("zen_erratum_microcode") and \
            erratum_1386_fixed_by_microcode(*host.signature, host.microcode):
        # 29ba89f18952 (6.10): XSAVES stays on a Zen 1/2 whose microcode fixes the erratum
        # (arch/x86/kernel/cpu/amd.c erratum_1386_microcode[]).
        erratum = False
    uses_xsaves = host.has("xsaves") and not erratum
    known = _BASE_USER
    if host.has("pku"):
        known |= xf.PKRU
    if kernel.at_least(5, 16) and host.has("amx_tile"):
        known |= xf.XTILE
    xcr0 = host.supported_xcr0 & known
    sup = 0
    if uses_xsaves:
        if host.has("shstk") and kernel.at_least(6, 6):
            sup |= xf.CET_U
        if host.has("shstk") and kernel.at_least(6, 18):
            sup |= xf.CET_S
        if host.has("enqcmd") and kernel.at_least(5, 18):
            sup |= xf.PASID        # ENQCMD force-disabled 5.13-5.17 (7c1ef59145f1 re-enables)
    xss = host.supported_xss & sup
    kernel_max = xcr0 | xss
    guest_only = xf.CET_S if kernel.at_least(6, 18) else 0
    kernel_default = kernel_max & ~xf.XTILEDATA & ~guest_only
    guest_default = kernel_max & ~xf.XTILEDATA
    return FpuConfig(
        has_xsave=True, uses_xsaves=uses_xsaves, uses_xsaveopt=host.has("xsaveopt"),
        xcr0=xcr0, xss=xss, kernel_max=kernel_max, kernel_default=kernel_default,
        guest_default=guest_default, user_max=xcr0, user_default=xcr0 & ~xf.XTILEDATA,
        mxcsr_mask=mask, mxcsr_feature_mask=mask or 0xFFBF, zen_erratum_applied=erratum)
