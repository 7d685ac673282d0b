"""Seed 002: an FP/SSE-only xsave buffer into a vCPU whose CPUID has no XSAVE."""

import pytest

from kvmfpu.scenarios import fpsse_migration


@pytest.mark.parametrize("version", ["5.17", "5.18", "5.19", "5.19.11"])
def test_rejected_with_einval_before_the_fix(version: str) -> None:
    r = fpsse_migration.run(version)
    assert r.event("source: KVM_GET_XSAVE").values["xstate_bv"] == 0x3
    assert r.event("destination (").values["user_xfeatures"] == 0
    ev = r.event("destination: KVM_SET_XSAVE")
    assert ev.errno == "EINVAL" and ev.function == "validate_user_xstate_header"
    assert "ad856280ddea" in ev.detail
    assert r.bug


# 5.16.15 and 5.16.20: 5.16.y never took ad856280ddea (only its AUTOSEL posting,
# 20220301201344.18191-7-sashal@kernel.org, exists; it needs 5.17's c270ce393dfd).
@pytest.mark.parametrize("version", ["5.4", "5.10", "5.15", "5.16.14", "5.16.15", "5.16.20",
                                     "5.19.12", "6.0", "6.1", "6.6", "6.12", "6.18", "7.3"])
def test_accepted_with_every_register_intact_otherwise(version: str) -> None:
    r = fpsse_migration.run(version)
    assert r.event("destination: KVM_SET_XSAVE").ok
    got = r.event("destination: KVM_GET_XSAVE").values
    for name, value in fpsse_migration.STATE.items():
        assert got[name] == value, name
    assert r.event("destination guest reads xmm15").values["xmm15"] == fpsse_migration.STATE["xmm15"]
    assert not r.bug


def test_source_without_xsave_still_offers_kvm_cap_xsave() -> None:
    ev = fpsse_migration.run("5.17").event("source (")
    assert ev.values["cap_xsave"] == 1 and "no XSAVE" in ev.detail


def test_a_guest_cpuid_with_xsave_is_not_affected_on_517() -> None:
    # Near miss: from an XSAVE host the guest CPUID has leaf 0xD, user_xfeatures covers FP/SSE.
    r = fpsse_migration.run("5.17", src="sandybridge")
    assert r.event("destination (").values["user_xfeatures"] & 0x3 == 0x3
    assert r.event("destination: KVM_SET_XSAVE").ok and not r.bug
