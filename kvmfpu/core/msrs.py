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

#: Other MSRs KVM lists in KVM_GET_MSR_INDEX_LIST / KVM_GET_MSR_FEATURE_INDEX_LIST (numbers
#: from arch/x86/include/asm/msr-index.h, include/asm-generic/hyperv-tlfs.h and
#: arch/x86/include/uapi/asm/kvm_para.h in Linux 6.12.117).
LISTED: Final[dict[str, int]] = {
    "IA32_SYSENTER_CS": 0x174, "IA32_SYSENTER_ESP": 0x175, "IA32_SYSENTER_EIP": 0x176,
    "STAR": 0xC000_0081, "CSTAR": 0xC000_0083, "KERNEL_GS_BASE": 0xC000_0102,
    "SYSCALL_MASK": 0xC000_0084, "LSTAR": 0xC000_0082, "IA32_TSC": 0x10, "IA32_CR_PAT": 0x277,
    "VM_HSAVE_PA": 0xC001_0117, "IA32_FEAT_CTL": 0x3A, "IA32_BNDCFGS": 0xD90,
    "TSC_AUX": 0xC000_0103, "IA32_SPEC_CTRL": 0x48, "IA32_TSX_CTRL": 0x122,
    "IA32_UMWAIT_CONTROL": 0xE1, "IA32_XFD": 0x1C4, "IA32_XFD_ERR": 0x1C5,
    "IA32_DEBUGCTLMSR": 0x1D9, "IA32_LASTBRANCHFROMIP": 0x1DB,
    "IA32_LASTBRANCHTOIP": 0x1DC, "IA32_LASTINTFROMIP": 0x1DD, "IA32_LASTINTTOIP": 0x1DE,
    "CORE_PERF_FIXED_CTR0": 0x309, "CORE_PERF_FIXED_CTR_CTRL": 0x38D,
    "CORE_PERF_GLOBAL_STATUS": 0x38E, "CORE_PERF_GLOBAL_CTRL": 0x38F,
    "CORE_PERF_GLOBAL_OVF_CTRL": 0x390, "IA32_PEBS_ENABLE": 0x3F1, "PEBS_DATA_CFG": 0x3F2,
    "IA32_DS_AREA": 0x600, "ARCH_PERFMON_PERFCTR0": 0xC1, "ARCH_PERFMON_EVENTSEL0": 0x186,
    "K7_EVNTSEL0": 0xC001_0000, "K7_PERFCTR0": 0xC001_0004, "F15H_PERF_CTL0": 0xC001_0200,
    "AMD64_PERF_CNTR_GLOBAL_STATUS": 0xC000_0300, "AMD64_PERF_CNTR_GLOBAL_CTL": 0xC000_0301,
    "AMD64_PERF_CNTR_GLOBAL_STATUS_CLR": 0xC000_0302,
    "AMD64_PERF_CNTR_GLOBAL_STATUS_SET": 0xC000_0303,
    "KVM_WALL_CLOCK": 0x11, "KVM_SYSTEM_TIME": 0x12, "KVM_WALL_CLOCK_NEW": 0x4B56_4D00,
    "KVM_SYSTEM_TIME_NEW": 0x4B56_4D01, "KVM_ASYNC_PF_EN": 0x4B56_4D02,
    "KVM_STEAL_TIME": 0x4B56_4D03, "KVM_PV_EOI_EN": 0x4B56_4D04, "KVM_POLL_CONTROL": 0x4B56_4D05,
    "KVM_ASYNC_PF_INT": 0x4B56_4D06, "KVM_ASYNC_PF_ACK": 0x4B56_4D07,
    "IA32_TSC_ADJUST": 0x3B, "IA32_TSC_DEADLINE": 0x6E0, "IA32_ARCH_CAPABILITIES": 0x10A,
    "IA32_PERF_CAPABILITIES": 0x345, "IA32_MISC_ENABLE": 0x1A0, "IA32_MCG_STATUS": 0x17A,
    "IA32_MCG_CTL": 0x17B, "IA32_MCG_EXT_CTL": 0x4D0, "IA32_SMBASE": 0x9E, "SMI_COUNT": 0x34,
    "PLATFORM_INFO": 0xCE, "MISC_FEATURES_ENABLES": 0x140, "AMD64_VIRT_SPEC_CTRL": 0xC001_011F,
    "AMD64_TSC_RATIO": 0xC000_0104, "IA32_POWER_CTL": 0x1FC, "IA32_UCODE_REV": 0x8B,
    "K7_HWCR": 0xC001_0015, "AMD64_DE_CFG": 0xC001_1029,
    "HV_GUEST_OS_ID": 0x4000_0000, "HV_HYPERCALL": 0x4000_0001, "HV_VP_INDEX": 0x4000_0002,
    "HV_RESET": 0x4000_0003, "HV_VP_RUNTIME": 0x4000_0010, "HV_TIME_REF_COUNT": 0x4000_0020,
    "HV_REFERENCE_TSC": 0x4000_0021, "HV_TSC_FREQUENCY": 0x4000_0022,
    "HV_APIC_FREQUENCY": 0x4000_0023, "HV_VP_ASSIST_PAGE": 0x4000_0073,
    "HV_SCONTROL": 0x4000_0080, "HV_STIMER0_CONFIG": 0x4000_00B0, "HV_CRASH_P0": 0x4000_0100,
    "HV_CRASH_P1": 0x4000_0101, "HV_CRASH_P2": 0x4000_0102, "HV_CRASH_P3": 0x4000_0103,
    "HV_CRASH_P4": 0x4000_0104,
    "HV_CRASH_CTL": 0x4000_0105, "HV_REENLIGHTENMENT_CONTROL": 0x4000_0106,
    "HV_TSC_EMULATION_CONTROL": 0x4000_0107, "HV_TSC_EMULATION_STATUS": 0x4000_0108,
    "HV_TSC_INVARIANT_CONTROL": 0x4000_0118, "HV_SYNDBG_CONTROL": 0x4000_00F1,
    "HV_SYNDBG_STATUS": 0x4000_00F2, "HV_SYNDBG_SEND_BUFFER": 0x4000_00F3,
    "HV_SYNDBG_RECV_BUFFER": 0x4000_00F4, "HV_SYNDBG_PENDING_BUFFER": 0x4000_00F5,
    "HV_SYNDBG_OPTIONS": 0x4000_00FF, "IA32_VMX_BASIC": 0x480,
}
#: IA32_VMX_BASIC .. IA32_VMX_VMFUNC (KVM_FIRST/LAST_EMULATED_VMX_MSR).
VMX_MSRS: Final = tuple(range(0x480, 0x492))
NAMES.update({v: k for k, v in LISTED.items() if v not in NAMES})

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
