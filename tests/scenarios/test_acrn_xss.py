"""Seed 000: the ACRN XSAVES/XRSTORS sequence under different IA32_XSS, on the core."""

import pytest

from kvmfpu.arch import xfeatures as xf
from kvmfpu.scenarios import acrn_xss


def test_acrn_2_5_with_a_5_4_service_vm_raises_gp_naming_the_xss_bit() -> None:
    r = acrn_xss.run("acrn-2.5", guest_kernel="5.4")
    restore = r.event("3.")
    assert restore.outcome == "#GP" and restore.vector == 13
    assert "XRSTORS" in restore.detail
    assert "XCOMP_BV sets 0x100 (pt) not in XCR0|IA32_XSS" in restore.detail
    saved = r.event("2.").values
    assert saved["ia32_xss"] == xf.PT and saved["xcomp_bv"] & xf.PT
    assert restore.values["ia32_xss"] == 0
    assert r.bug


def test_acrn_2_6_initialises_the_guest_state_and_restores_without_fault() -> None:
    r = acrn_xss.run("acrn-2.6", guest_kernel="5.4")
    assert all(e.ok for e in r.events)
    assert not r.event("2.").values["xcomp_bv"] & xf.PT
    assert r.event("1.").values["ia32_xss"] == 0
    assert not r.bug


def test_a_5_10_service_vm_writes_xss_at_boot_and_hides_the_bug() -> None:
    r = acrn_xss.run("acrn-2.5", guest_kernel="5.10")
    assert r.event("1a.").values["ia32_xss"] == 0
    assert all(e.ok for e in r.events) and not r.bug


@pytest.mark.parametrize("host", ["sapphirerapids", "skylake-sp", "zen4"])
def test_any_host_with_supervisor_state_reproduces(host: str) -> None:
    # Hypervisor-agnostic and host-agnostic: CET on Sapphire Rapids, PT on Skylake-SP.
    assert acrn_xss.run("acrn-2.5", host=host).event("3.").outcome == "#GP"
    assert acrn_xss.run("acrn-2.6", host=host).event("3.").ok


def test_a_host_without_supervisor_state_cannot_show_it() -> None:
    # Zen 2 enumerates no IA32_XSS bits: XSAVES under the host's XSS writes nothing extra.
    r = acrn_xss.run("acrn-2.5", host="zen2")
    assert r.event("3.").ok and not r.bug


def test_bad_versions_are_refused() -> None:
    with pytest.raises(ValueError, match="not an ACRN release"):
        acrn_xss.run("6.1")
    with pytest.raises(ValueError, match="not a Linux version"):
        acrn_xss.run("acrn-2.5", guest_kernel="five")
