"""Kernel profiles (kvmfpu.kvm.profiles): the facts issue 16 corrected, each against its
source, and the 5.4/5.10 LTS profiles."""

import pytest

from kvmfpu.kvm import Kvm
from kvmfpu.kvm.profiles import (
    BY_NAME,
    LTS_EXTRA,
    NAMED,
    erratum_1386_fixed_by_microcode,
    profile,
)


@pytest.mark.parametrize("version, has", [("5.18", False), ("5.18.19", False), ("5.19", True),
                                          ("6.0", True), ("6.1", True)])
def test_kernel_xsavec_is_519(version: str, has: bool) -> None:
    """8ad7e8f69695 (tip x86/fpu, 2022-04-04) was merged for 5.19: a regression report
    bisects between 5.18 and 5.19-rc1 to it. Before the fix the table said 6.1."""
    assert profile(version).has("kernel_xsavec") == has
    assert BY_NAME["kernel_xsavec"].since == (5, 19)


def test_kernel_without_xsaves_saves_with_xsavec_only_from_519() -> None:
    """Zen 2 after the erratum (b0563468eeac: 6.1.20, 5.15.103) has XSAVEC but the kernel
    no XSAVES: os_xsave's ALTERNATIVE picks XSAVEC with 8ad7e8f69695 (6.1 > 5.19), XSAVEOPT
    on 5.15."""
    assert Kvm("zen2", "6.1.20").hk.save_insn == "xsavec"
    assert Kvm("zen2", "5.15.103").hk.save_insn == "xsaveopt"


@pytest.mark.parametrize("version, bug", [("5.17", True), ("5.17.1", True), ("5.17.2", False),
                                          ("5.16.20", False), ("5.18", False)])
def test_perm_overwrite_fixed_in_5172_and_51620(version: str, bug: bool) -> None:
    """063452fd94d1: the Linux 5.16.20 release mail lists Yang Zhong's fix; 5.17.2 per the
    spec's Corrections."""
    assert profile(version).has("perm_overwrite_bug") == bug


@pytest.mark.parametrize("version, has", [("5.16.15", False), ("5.16.20", False),
                                          ("5.17", True), ("6.5.8", True), ("6.5.9", False)])
def test_no_516_backport_of_ad856280ddea(version: str, has: bool) -> None:
    """Only an AUTOSEL posting (20220301201344.18191-7-sashal@kernel.org) exists for 5.16."""
    assert profile(version).has("user_xfeatures_from_cpuid") == has
    assert BY_NAME["user_xfeatures_from_cpuid"].backports == ()


@pytest.mark.parametrize("version, forbidden, identical", [
    ("5.16", True, False), ("5.16.2", True, False), ("5.16.3", False, True),
    ("5.17", False, True), ("5.15.19", False, False)])
def test_c6617c61e8fe_in_5163_ends_the_forbidden_window(version: str, forbidden: bool,
                                                        identical: bool) -> None:
    p = profile(version)
    assert p.has("set_cpuid_after_run_forbidden") == forbidden
    assert p.has("set_cpuid_after_run_identical") == identical


def test_msr_zero_switch_is_64a5d7a1091f() -> None:
    assert BY_NAME["msr_host_zero_write_advertised"].commit == "64a5d7a1091f"
    assert profile("6.12").has("msr_host_zero_write_advertised")
    assert not profile("6.11").has("msr_host_zero_write_advertised")


@pytest.mark.parametrize("version, has", [("5.15.18", False), ("5.15.19", True),
                                          ("5.16.4", False), ("5.16.5", True)])
def test_be4f3b3f8227_stable_numbers(version: str, has: bool) -> None:
    assert profile(version).has("xss_keep_on_init") == has
    assert "confirmed" in BY_NAME["xss_keep_on_init"].note


def test_unconfirmed_windows_stay_marked() -> None:
    assert "UNVERIFIED" in BY_NAME["get_xsave2_amx_oops_bug"].note
    assert "a401f45e3875" in BY_NAME["get_xsave2_amx_oops_bug"].note
    assert "UNVERIFIED" in BY_NAME["perm_overwrite_bug"].note


@pytest.mark.parametrize("family, model, stepping, microcode, fixed", [
    (0x17, 0x31, 0x0, 0x08301052, True), (0x17, 0x31, 0x0, 0x08301051, False),
    (0x17, 0x01, 0x2, 0x0800126E, True), (0x17, 0x01, 0x2, 0x0800126D, False),
    (0x17, 0x71, 0x0, 0x08701030, False),       # Matisse: not in the table, always cleared
    (0x17, 0x31, 0x0, None, False),             # unknown revision: not fixed
    (0x17, 0x31, 0x0, "0x8301055", True),       # as /proc/cpuinfo prints it
    (0x17, 0x31, 0x0, "garbage", False),
])
def test_erratum_1386_microcode_table(family: int, model: int, stepping: int,
                                      microcode: int | str | None, fixed: bool) -> None:
    """erratum_1386_microcode[] of 29ba89f18952 (6.10; proxmox/pve-kernel f2f95ef's copy)
    with x86_cpu_has_min_microcode_rev's exact family/model/stepping match."""
    assert BY_NAME["zen_erratum_microcode"].since == (6, 10)
    assert erratum_1386_fixed_by_microcode(family, model, stepping, microcode) == fixed


@pytest.mark.parametrize("version", LTS_EXTRA)
def test_lts_profiles_take_the_pre_fpu_guest_path(version: str) -> None:
    """5.4/5.10's kvm_vcpu_ioctl_x86_set_xsave checks XSTATE_BV against the supported XCR0
    and MXCSR against mxcsr_feature_mask, and fill_xsave masks XSTATE_BV with
    guest_supported_xcr0 | FP | SSE (the 5.14 rework 20210611163111.931697147@linutronix.de
    quotes the older loop): the 5.15 paths."""
    p = profile(version)
    assert not p.has("fpu_guest") and not p.has("xsave2") and not p.has("amx")
    assert any("before 5.15" in n for n in p.notes)
    assert version not in NAMED
    kvm = Kvm("skylake-sp", version)
    vcpu = kvm.create_vm().create_vcpu()
    vcpu.set_cpuid2(kvm.get_supported_cpuid())
    blob = vcpu.get_xsave()
    assert len(blob) == 4096
    bad = bytearray(blob)
    bad[24:28] = (0xFFFF_FFFF).to_bytes(4, "little")          # MXCSR reserved bits
    from kvmfpu.kvm import KvmError
    with pytest.raises(KvmError) as info:
        vcpu.set_xsave(bytes(bad))
    assert info.value.function == "kvm_vcpu_ioctl_x86_set_xsave"
    vcpu.set_xsave(blob)


def test_distro_profile_describes_itself() -> None:
    d = profile("6.1.0-18-amd64").describe()
    assert (d["name"], d["upstream"], d["distro"]) == ("6.1.0-18-amd64", "6.1.76", "debian")
    assert d["notes"] and d["switches"]["get_masks_guest_xcr0"] is True


def test_lts_round_trip_on_every_packaged_host() -> None:
    """KVM_GET_XSAVE -> KVM_SET_XSAVE -> KVM_GET_XSAVE gives the same 4096 bytes on 5.4 and
    5.10 (load_xsave writes back what fill_xsave produced) on every packaged host."""
    from kvmfpu import cpus
    for host in cpus.names():
        for version in LTS_EXTRA:
            kvm = Kvm(host, version)
            vcpu = kvm.create_vm().create_vcpu()
            vcpu.set_cpuid2(kvm.get_supported_cpuid())
            blob = vcpu.get_xsave()
            vcpu.set_xsave(blob)
            assert vcpu.get_xsave() == blob, (host, version)
