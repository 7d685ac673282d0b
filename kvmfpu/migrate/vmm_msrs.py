"""The whole MSR set a snapshot VMM saves and restores, against the destination's KVM.

The model's vCPU carries the xstate MSRs (check.STATE_MSRS); the other MSRs a VMM saves are
judged by KVM_GET_MSR_INDEX_LIST (Kvm.msr_index_list_all: msrs_to_save and emulated_msrs
after kvm_probe_msr_to_save, per host, kernel and flavour). An MSR the source's KVM listed
and the destination's does not is one kvm_probe_msr_to_save dropped because that CPU lacks
the feature behind it; KVM_SET_MSRS stops at it (kvm_set_msr_common / the vendor's set_msr
return 1), and the VMM decides what happens next:

- Firecracker saves the listed MSRs inside its SERIALIZABLE_MSR_RANGES (get_msrs_to_save,
  src/vmm/src/arch/x86_64/msr.rs @81b38b9da; IA32_MCG_CTL denied by msr_should_serialize)
  and fails the restore on a short count (KvmVcpuError::VcpuSetMsrsIncomplete, vcpu.rs);
- Cloud Hypervisor saves every listed MSR and, from v49.0, skips a faulty one with
  "Detected faulty MSR" and sets the rest (set_state, hypervisor/src/kvm/mod.rs);
- QEMU puts only MSRs the destination has (kvm_put_msrs checks has_msr_* from the
  destination's own list), so values the destination cannot hold are dropped silently.

What is not modelled: the value written (KVM accepts some host writes of MSRs it does not
list, e.g. 0 to an advertised MSR from 64a5d7a1091f, 6.12), and MSRs QEMU saves outside
KVM's list.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Final

from kvmfpu.core import msrs as msr
from kvmfpu.migrate.report import Finding
from kvmfpu.migrate.vmm import Vmm

#: Firecracker's SERIALIZABLE_MSR_RANGES (first index, count), less IA32_XSS, which its
#: versions add from 1.16.1 (Vmm.allow_list). msr.rs @81b38b9da.
FIRECRACKER_RANGES: Final[tuple[tuple[int, int], ...]] = (
    (0x0, 2),  # IA32_P5_MC_ADDR, IA32_P5_MC_TYPE
    (0x10, 1),  # IA32_TSC
    (0x17, 1),  # IA32_PLATFORM_ID
    (0x1B, 1),  # IA32_APICBASE
    (0x2A, 1),
    (0x2C, 1),
    (0x34, 1),  # EBL_CR_POWERON, EBC_FREQUENCY_ID, SMI_COUNT
    (0x3A, 2),  # IA32_FEAT_CTL, IA32_TSC_ADJUST
    (0x48, 2),  # IA32_SPEC_CTRL, IA32_PRED_CMD
    (0x79, 1),
    (0x8B, 1),
    (0x9E, 1),  # UCODE_WRITE, UCODE_REV, SMBASE
    (0xCD, 2),  # FSB_FREQ, PLATFORM_INFO
    (0xE2, 1),
    (0xE7, 2),
    (0xFE, 1),  # PKG_CST_CONFIG_CONTROL, MPERF, APERF, MTRRcap
    (0x11E, 1),  # IA32_BBL_CR_CTL3
    (0x174, 3),  # SYSENTER_CS/ESP/EIP
    (0x179, 2),  # MCG_CAP, MCG_STATUS (MCG_CTL 0x17B denied)
    (0x198, 1),
    (0x1A0, 1),
    (0x1A4, 1),
    (0x1AA, 1),
    (0x1AD, 2),
    (0x1D9, 1),
    (0x1DB, 4),  # DEBUGCTL, LBR from/to, LASTINT from/to
    (0x1FC, 1),  # IA32_POWER_CTL
    (0x200, 0x100),  # MTRR PHYSBASE/PHYSMASK and the fixed ranges
    (0x3FC, 3),  # CORE_C3/C6/C7_RESIDENCY
    (0x400, 0x80),  # MCi_CTL/STATUS/ADDR/MISC
    (0x606, 1),
    (0x60A, 3),
    (0x610, 2),
    (0x613, 2),
    (0x618, 2),
    (0x61B, 2),
    (0x648, 5),  # CONFIG_TDP_*, TURBO_ACTIVATION_RATIO
    (0x6E0, 1),  # IA32_TSC_DEADLINE
    (0x800, 0x400),  # x2APIC
    (0xC000_0080, 5),  # EFER, STAR, LSTAR, CSTAR, SYSCALL_MASK
    (0xC000_0100, 4),  # FS_BASE, GS_BASE, KERNEL_GS_BASE, TSC_AUX
    (0x140, 1),  # MISC_FEATURES_ENABLES
    (0xC001_0015, 1),  # K7_HWCR
    (0x122, 1),  # IA32_TSX_CTRL
    (0x4B56_4D00, 0x100),  # KVM's paravirtual MSRs
)


def _in_ranges(index: int, ranges: Iterable[tuple[int, int]]) -> bool:
    return any(start <= index < start + n for start, n in ranges)


def saved_msrs(vmm: Vmm, kvm_list: Sequence[int]) -> list[int]:
    """The MSRs of KVM_GET_MSR_INDEX_LIST a snapshot VMM saves (empty for QEMU, whose own
    list is gated by the destination: see the module docstring)."""
    if vmm.by_field:
        return []
    if vmm.msrs == "allow-list":
        return [i for i in kvm_list if _in_ranges(i, FIRECRACKER_RANGES) or i in vmm.allow_list]
    return list(kvm_list)


def _label(index: int) -> str:
    name = msr.name(index)
    return name if name.startswith("MSR ") else f"{name} ({index:#x})"


def restore_finding(
    vmm: Vmm, saved: Sequence[int], dst_list: Sequence[int], dst_label: str
) -> Finding | None:
    """What the destination's KVM_SET_MSRS does with the saved MSRs it does not list."""
    have = set(dst_list)
    missing = [i for i in saved if i not in have]
    if not missing:
        return None
    names = ", ".join(_label(i) for i in missing[:8]) + (
        f" and {len(missing) - 8} more" if len(missing) > 8 else ""
    )
    why = (
        f"{dst_label}'s KVM does not list {len(missing)} MSR(s) the source saved: {names} "
        "(kvm_probe_msr_to_save drops an MSR whose CPU feature the host lacks, and "
        "KVM_SET_MSRS stops at it)"
    )
    if vmm.msr_short_count == "skip":
        return Finding(
            "info",
            "destination",
            f'{why}; {vmm.label} skips each one ("Detected '
            'faulty MSR") and sets the rest: their values are lost',
        )
    return Finding(
        "error",
        "destination",
        f"{why}; {vmm.label} fails the restore (VcpuSetMsrsIncomplete)"
        if vmm.name == "firecracker"
        else f"{why}; {vmm.label} fails the restore on the short count",
    )
