"""The Proxmox VE 7.4 -> 8.0 PKRU case (proxmox/pve-kernel 1559d22, T. Lamprecht 2023-07-14;
bloomberg/chef-bcpc#2278): qemu64 guests from the Ubuntu-based 5.15 to 6.2."""

import pytest

from kvmfpu.arch import xfeatures as xf
from kvmfpu.scenarios import NotApplicable, pkru_leak, replay


@pytest.mark.parametrize("source", ["5.15.0-91-generic", "5.15.108-1-pve", "5.16"])
def test_leaky_source_fails_on_62(source: str) -> None:
    """The 5.16 guest-FPU path (mainline 5.16, Ubuntu jammy's backport) hands out the host's
    PKRU bit; 6.2 (ad856280ddea, a1020a25e697) limits user_xfeatures to the guest XCR0 |
    FP | SSE and validate_user_xstate_header returns -EINVAL."""
    r = pkru_leak.run(source)
    assert r.event("source: KVM_GET_XSAVE").values["xstate_bv"] & xf.PKRU
    ev = r.event("destination: KVM_SET_XSAVE")
    assert ev.errno == "EINVAL" and ev.function == "validate_user_xstate_header"
    assert "0x200 (pkru)" in ev.detail and r.bug


@pytest.mark.parametrize("source", ["5.15", "5.15.131", "5.10", "5.4"])
def test_mainline_fill_xsave_does_not_leak(source: str) -> None:
    """fill_xsave (x86.c before 5.16): XSTATE_BV &= guest_supported_xcr0 | FP | SSE."""
    r = pkru_leak.run(source)
    assert not r.event("source: KVM_GET_XSAVE").values["xstate_bv"] & xf.PKRU
    assert r.event("destination guest reads xmm5").values["xmm5"] == pkru_leak.XMM5
    assert not r.bug


@pytest.mark.parametrize("dst", ["6.2.16-5-pve", "6.2.16-20-pve", "6.6", "6.1.60"])
def test_fixed_destinations_take_the_leaky_buffer(dst: str) -> None:
    """Proxmox 6.2.16-5 masks PKRU in KVM_SET_XSAVE (1559d22); 8647c52e9504 (6.6; 6.1.60,
    Proxmox 6.2.16-19) no longer limits what KVM_SET_XSAVE takes."""
    r = pkru_leak.run("5.15.108-1-pve", dst_kernel=dst)
    assert r.event("destination: KVM_SET_XSAVE").ok and not r.bug
    assert "accepts it" in r.verdict


def test_proxmox_62_before_its_fix_still_fails() -> None:
    assert pkru_leak.run("5.15.108-1-pve", dst_kernel="6.2.16-3-pve").bug


def test_the_profile_notes_travel_with_the_replay() -> None:
    r = replay("pkru-leak")
    assert r.version == "5.15.0-91-generic" and r.bug
    assert any("UNVERIFIED" in n and "1559d22" in n for n in r.notes)


def test_a_host_without_pku_has_nothing_to_leak() -> None:
    with pytest.raises(NotApplicable, match="PKU"):
        pkru_leak.run("5.15.0-91-generic", host="zen1")
