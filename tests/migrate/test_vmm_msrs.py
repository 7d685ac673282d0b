"""The whole MSR set of snapshot VMMs against the destination's KVM_GET_MSR_INDEX_LIST.

Sources: Firecracker src/vmm/src/arch/x86_64/msr.rs @81b38b9da (SERIALIZABLE_MSR_RANGES,
get_msrs_to_save) and vcpu.rs (VcpuSetMsrsIncomplete on a short KVM_SET_MSRS); Cloud
Hypervisor hypervisor/src/kvm/mod.rs set_state ("Detected faulty MSR", v49.0); Linux
arch/x86/kvm/x86.c kvm_probe_msr_to_save (MSR_IA32_SPEC_CTRL listed only with the CPU's
SPEC_CTRL: the Xeon Gold 6148 dump, taken before the Spectre microcode, lacks it).
"""

from __future__ import annotations

from kvmfpu.core import msrs as msr
from kvmfpu.kvm.system import Kvm
from kvmfpu.migrate.check import COMPATIBLE, INCOMPATIBLE, check
from kvmfpu.migrate.vmm import vmm_of
from kvmfpu.migrate.vmm_msrs import restore_finding, saved_msrs

SPEC_CTRL = msr.LISTED["IA32_SPEC_CTRL"]


def test_firecracker_fails_the_restore_on_an_msr_the_destination_does_not_list() -> None:
    assert SPEC_CTRL in Kvm("icelake-sp", "6.6").msr_index_list_all()
    assert SPEC_CTRL not in Kvm("skylake-sp", "6.6").msr_index_list_all()
    r = check("icelake-sp@6.6", "skylake-sp@6.6", "Skylake-Server-v1", vmm="firecracker", advise=False)
    assert r.verdict == INCOMPATIBLE
    f = next(f for f in r.findings if "KVM does not list" in f.text)
    assert f.level == "error" and "IA32_SPEC_CTRL (0x48)" in f.text
    assert "VcpuSetMsrsIncomplete" in f.text


def test_cloud_hypervisor_skips_the_faulty_msr() -> None:
    r = check("icelake-sp@6.6", "skylake-sp@6.6", "Skylake-Server-v1", vmm="cloud-hypervisor", advise=False)
    assert r.verdict == COMPATIBLE
    f = next(f for f in r.findings if "KVM does not list" in f.text)
    assert f.level == "info" and "Detected faulty MSR" in f.text and "values are lost" in f.text


def test_what_each_vmm_saves() -> None:
    kvm_list = Kvm("icelake-sp", "6.6").msr_index_list_all()
    fc = saved_msrs(vmm_of("firecracker@1.16.0"), kvm_list)
    ch = saved_msrs(vmm_of("cloud-hypervisor"), kvm_list)
    pmc0 = msr.LISTED["ARCH_PERFMON_PERFCTR0"]
    assert pmc0 in ch and pmc0 not in fc  # PMU counters are outside Firecracker's ranges
    assert SPEC_CTRL in fc and msr.LISTED["IA32_TSC_DEADLINE"] in fc
    assert msr.LISTED["IA32_MCG_CTL"] not in fc  # msr_should_serialize denies it
    assert saved_msrs(vmm_of("qemu"), kvm_list) == []


def test_firecracker_saves_ia32_xss_from_1_16_1() -> None:
    kvm_list = Kvm("sapphirerapids", "6.18").msr_index_list_all()
    assert msr.IA32_XSS in kvm_list
    assert msr.IA32_XSS not in saved_msrs(vmm_of("firecracker@1.16.0"), kvm_list)
    assert msr.IA32_XSS in saved_msrs(vmm_of("firecracker@1.16.1"), kvm_list)


def test_the_same_host_needs_nothing() -> None:
    kvm_list = Kvm("zen4", "6.6").msr_index_list_all()
    v = vmm_of("firecracker")
    assert restore_finding(v, saved_msrs(v, kvm_list), kvm_list, "zen4@6.6") is None
