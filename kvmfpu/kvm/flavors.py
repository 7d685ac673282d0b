"""Vendor flavours as data: what kvm_intel (vmx), kvm_amd (svm) and kvm_pvm (pvm) decide
differently for the xstate ABI, one frozen record per module (the ``kvm_x86_ops`` idea:
the common code asks the record instead of comparing the flavour's name).

Sources: arch/x86/kvm/vmx/vmx.c and svm/svm.c (hardware_setup, vcpu_after_set_cpuid,
has_emulated_msr, the MSR intercepts), arch/x86/kvm/x86.c (kvm_init_msr_lists), read in
Debian linux-source 6.1.192 and 6.12.117; kvm_pvm as measured on the development machine
(Linux 6.18.44 kvm_pvm, AMD Zen 5; its source for this build is not public), see pvm.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

from kvmfpu.cpus.model import HostModel

AMD_VENDORS: Final = frozenset({"AuthenticAMD", "HygonGenuine"})


@dataclass(frozen=True)
class Flavor:
    """One vendor module's xstate-relevant choices."""

    name: str
    #: The hosts its module loads on: "intel" (not AMD/Hygon), "amd", or "any".
    vendors: Literal["intel", "amd", "any"]
    #: KVM can offer MPX (svm_hardware_setup clears it; vmx only with VMX MPX controls).
    mpx: bool
    #: KVM can offer XSAVES (pvm clears it, pvm_set_cpu_caps).
    xsaves: bool
    #: CET state (IA32_XSS CET bits, the CET MSRs) can be offered (pvm: supported_xss = 0).
    cet: bool
    #: IBT can be offered (6.18's SVM CET is shadow stacks only, 8db428fd5229).
    ibt: bool
    #: PKU can be offered and PKRU is switched at VM entry/exit (pvm: neither).
    pku: bool
    #: The guest's XSAVES is enabled only when its CPUID has XSAVES (VMX's ENABLE_XSAVES
    #: secondary control); SVM cannot hide XSAVES (svm_vcpu_after_set_cpuid).
    hides_xsaves: bool
    #: __kvm_is_valid_cr4 takes cr4_guest_rsvd_bits from the guest CPUID (pvm accepts
    #: CR4.OSXSAVE regardless, measured).
    cr4_from_guest_cpuid: bool
    #: KVM_SET_CPUID2 rewrites leaf 1 and 0xD.0 from the processor (kvmfpu.kvm.pvm).
    rewrites_cpuid: bool
    #: The first non-zero guest IA32_XFD write stops the intercept (b5274b1b7ba8, VMX).
    xfd_write_passthrough: bool
    #: EPT/NPT in use (pvm runs guests on shadow page tables).
    tdp: bool
    #: SGX can be offered (kvm_intel's enable_sgx).
    sgx: bool
    #: Leaf 0xA reports an architectural PMU (kvm_pmu_cap: Intel's).
    arch_pmu_leaf: bool
    #: KVM_GET_SUPPORTED_CPUID is the mainline one plus the filter measured on kvm_pvm.
    measured_cpuid_filter: bool
    #: The emulated-MSR conditions its has_emulated_msr accepts (kvm_init_msr_lists).
    emulated_msrs: frozenset[str]
    #: KVM_GET_MSR_FEATURE_INDEX_LIST's vendor part: VMX capability MSRs, AMD's DE_CFG, or
    #: kvm_pvm's measured list.
    feature_msrs: Literal["vmx", "svm", "pvm"]

    def runs_on(self, host: HostModel) -> bool:
        """Its module loads on ``host``'s vendor."""
        amd = host.vendor in AMD_VENDORS
        return self.vendors == "any" or (self.vendors == "amd") == amd

    def __str__(self) -> str:
        return self.name


VMX: Final = Flavor(
    "vmx",
    "intel",
    mpx=True,
    xsaves=True,
    cet=True,
    ibt=True,
    pku=True,
    hides_xsaves=True,
    cr4_from_guest_cpuid=True,
    rewrites_cpuid=False,
    xfd_write_passthrough=True,
    tdp=True,
    sgx=True,
    arch_pmu_leaf=True,
    measured_cpuid_filter=False,
    emulated_msrs=frozenset({"hyperv", "smm", "vmx"}),
    feature_msrs="vmx",
)
SVM: Final = Flavor(
    "svm",
    "amd",
    mpx=False,
    xsaves=True,
    cet=True,
    ibt=False,
    pku=True,
    hides_xsaves=False,
    cr4_from_guest_cpuid=True,
    rewrites_cpuid=False,
    xfd_write_passthrough=False,
    tdp=True,
    sgx=False,
    arch_pmu_leaf=False,
    measured_cpuid_filter=False,
    emulated_msrs=frozenset({"hyperv", "smm", "not_vmx", "svm"}),
    feature_msrs="svm",
)
PVM: Final = Flavor(
    "pvm",
    "any",
    mpx=True,
    xsaves=False,
    cet=False,
    ibt=False,
    pku=False,
    hides_xsaves=True,
    cr4_from_guest_cpuid=False,
    rewrites_cpuid=True,
    xfd_write_passthrough=False,
    tdp=False,
    sgx=False,
    arch_pmu_leaf=False,
    measured_cpuid_filter=True,
    # kvm_pvm's has_emulated_msr refuses the Hyper-V MSRs, SMBASE, MCG_EXT_CTL, TSC_RATIO
    # and the VMX MSRs (measured on the 6.18 machine).
    emulated_msrs=frozenset({"not_vmx"}),
    feature_msrs="pvm",
)

BY_NAME: Final[dict[str, Flavor]] = {f.name: f for f in (VMX, SVM, PVM)}
FLAVORS: Final = tuple(BY_NAME)


def flavor(name: str) -> Flavor:
    """The flavour called ``name``; ValueError names the known ones."""
    try:
        return BY_NAME[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown flavour {name!r} (one of {', '.join(FLAVORS)})") from None


def default_flavor(host: HostModel) -> str:
    """The vendor module a host loads: kvm_amd on AMD and Hygon, kvm_intel otherwise."""
    return SVM.name if host.vendor in AMD_VENDORS else VMX.name
