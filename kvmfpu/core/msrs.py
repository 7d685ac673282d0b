"""MSRs the core models: IA32_XSS, IA32_XFD, IA32_XFD_ERR and the CET MSRs.

Sources: Intel SDM Vol. 4 (MSR numbers and reserved bits); SDM Vol. 1 §13.3 (IA32_XSS
bits must be supported per CPUID.(0DH,1):EDX:ECX) and §13.14 (IA32_XFD, IA32_XFD_ERR
bits must be XFD-capable per CPUID.(0DH,i):ECX[2]). CET value checks as KVM applies them
to WRMSR (``kvm_is_valid_u_s_cet`` and the PLx_SSP checks in ``__kvm_set_msr``,
arch/x86/kvm/x86.c, first released in v6.18).
"""

from __future__ import annotations

from typing import Final

IA32_XFD: Final = 0x1C4
IA32_XFD_ERR: Final = 0x1C5
IA32_U_CET: Final = 0x6A0
IA32_S_CET: Final = 0x6A2
IA32_PL0_SSP: Final = 0x6A4
IA32_PL1_SSP: Final = 0x6A5
IA32_PL2_SSP: Final = 0x6A6
IA32_PL3_SSP: Final = 0x6A7
IA32_INT_SSP_TAB: Final = 0x6A8
IA32_XSS: Final = 0xDA0

NAMES: Final = {
    IA32_XFD: "IA32_XFD",
    IA32_XFD_ERR: "IA32_XFD_ERR",
    IA32_U_CET: "IA32_U_CET",
    IA32_S_CET: "IA32_S_CET",
    IA32_PL0_SSP: "IA32_PL0_SSP",
    IA32_PL1_SSP: "IA32_PL1_SSP",
    IA32_PL2_SSP: "IA32_PL2_SSP",
    IA32_PL3_SSP: "IA32_PL3_SSP",
    IA32_INT_SSP_TAB: "IA32_INTERRUPT_SSP_TABLE_ADDR",
    IA32_XSS: "IA32_XSS",
}

CET_US_RESERVED: Final = 0x3C0            # bits 9:6
CET_US_SHSTK_BITS: Final = 0x3            # SH_STK_EN, WR_SHSTK_EN
CET_US_IBT_BITS: Final = 0x3C | (~0x3FF & (2**64 - 1))  # bits 5:2 and 63:10
CET_SUPPRESS: Final = 1 << 10
CET_WAIT_ENDBR: Final = 1 << 11


def name(msr: int) -> str:
    return NAMES.get(msr, f"MSR {msr:#x}")


def canonical(value: int, la57: bool) -> bool:
    """Whether a linear address is canonical for 4- or 5-level paging."""
    width = 57 if la57 else 48
    top = value >> (width - 1)
    return top == 0 or top == (1 << (65 - width)) - 1


def u_s_cet_problem(value: int, shstk: bool, ibt: bool) -> str | None:
    """Why ``value`` cannot go into IA32_U_CET/IA32_S_CET, or None."""
    if value & CET_US_RESERVED:
        return "bits 9:6 are reserved"
    if not shstk and value & CET_US_SHSTK_BITS:
        return "shadow-stack bits 1:0 set without CET_SS"
    if not ibt and value & CET_US_IBT_BITS:
        return "IBT bits 5:2/63:10 set without CET_IBT"
    if (value >> 12) & 3:
        return "EB_LEG_BITMAP_BASE is not 16 KiB aligned (bits 13:12 set)"
    if value & CET_SUPPRESS and value & CET_WAIT_ENDBR:
        return "SUPPRESS and WAIT_FOR_ENDBRANCH are both set"
    return None


def ssp_problem(value: int, la57: bool) -> str | None:
    """Why ``value`` cannot go into IA32_PLx_SSP, or None."""
    if not canonical(value, la57):
        return f"{value:#x} is not canonical"
    if value & 3:
        return f"{value:#x} is not 4-byte aligned"
    return None
