"""Seed 001: XSAVES and the Zen 1/2 erratum (b0563468eeac) through KVM."""

import pytest

from kvmfpu.arch import xfeatures as xf
from kvmfpu.kvm.caps import D1_XSAVEC, D1_XSAVES
from kvmfpu.scenarios import zen_xsaves


@pytest.mark.parametrize("host, version, offered", [
    ("zen2", "6.2", True), ("zen2", "6.2.6", True), ("zen2", "6.2.7", False),
    ("zen2", "6.3", False), ("zen2", "7.3", False),
    ("zen2", "6.1.19", True), ("zen2", "6.1.20", False),
    ("zen2", "5.15.102", True), ("zen2", "5.15.103", False),
    ("zen1", "6.1", True), ("zen1", "6.6", False),
    ("zen3", "7.3", True), ("zen4", "6.6", True),       # family 19h: no erratum
])
def test_supported_cpuid_offers_xsaves_only_before_the_erratum(host: str, version: str,
                                                               offered: bool) -> None:
    r = zen_xsaves.run(version, host=host)
    ev = r.event("KVM_GET_SUPPORTED_CPUID")
    assert ev.values["hw_d1_eax"] & D1_XSAVES            # the silicon has it throughout
    assert bool(ev.values["kvm_d1_eax"] & D1_XSAVES) == offered
    assert ev.values["kvm_d1_eax"] & D1_XSAVEC             # XSAVEC stays
    assert r.bug == (not offered)


def test_on_an_affected_host_a_guest_given_xsaves_runs_it_natively() -> None:
    r = zen_xsaves.run("6.3", host="zen2")
    assert r.event("KVM_SET_CPUID2").ok                   # KVM does not filter guest CPUID
    assert r.event("KVM_GET_CPUID2").values["guest_d1_eax"] & D1_XSAVES
    save = r.event("guest XSAVES")
    assert save.ok and "does not switch IA32_XSS" in save.detail
    assert save.values["xcomp_bv"] == (1 << 63) | xf.FP | xf.SSE | xf.YMM
    assert save.values["saved_xmm3"] == 0x5A5A_0000_1386
    assert r.event("guest WRMSR IA32_XSS <- 0").ok
    bad = r.event("guest WRMSR IA32_XSS <- 0x800")
    assert bad.outcome == "#GP" and bad.vector == 13 and "supported_xss" in bad.detail
    assert r.event("KVM_GET_MSRS IA32_XSS").values["ia32_xss"] == 0
    assert any("Windows Server 2016" in n for n in r.notes)


def test_before_the_erratum_kvm_switches_xss_for_the_guest() -> None:
    r = zen_xsaves.run("6.2", host="zen2")
    save = r.event("guest XSAVES")
    assert save.ok and "does not switch" not in save.detail
    assert not r.notes


def test_the_68_notice_is_mentioned_only_from_68() -> None:
    assert any("d52734d00b8e" in n for n in zen_xsaves.run("6.8", host="zen2").notes)
    assert not any("d52734d00b8e" in n for n in zen_xsaves.run("6.7", host="zen2").notes)


@pytest.mark.parametrize("host, reason", [
    ("zen4", "family 0x19; erratum 1386 (and b0563468eeac) is family 17h's"),
    ("zen3", "family 0x19"), ("skylake-sp", "not an AMD part (GenuineIntel)"),
])
def test_not_applied_names_the_real_reason(host: str, reason: str) -> None:
    """init_amd_zen1/init_amd_zen2 clear XSAVES on family 17h only (b0563468eeac,
    arch/x86/kernel/cpu/amd.c): on other parts the verdict names the family or vendor, not
    the kernel release (issue 16)."""
    r = zen_xsaves.run("7.3", host=host)
    assert not r.bug and reason in r.verdict
    assert "does not apply the erratum on this release" not in r.verdict


def test_family_17h_before_the_erratum_names_the_release() -> None:
    r = zen_xsaves.run("6.2", host="zen2")
    assert "6.2 predates b0563468eeac" in r.verdict


def test_from_610_the_replay_says_the_microcode_matters() -> None:
    """29ba89f18952 (x86/cpu pull for v6.10) keeps XSAVES when the microcode has the fix."""
    r = zen_xsaves.run("6.12", host="zen2")
    assert any("29ba89f18952" in n and "erratum_1386_microcode" in n for n in r.notes)
    assert not any("29ba89f18952" in n for n in zen_xsaves.run("6.6", host="zen2").notes)
