"""The scenario registry: every seed reproduced before its fix and not after."""

import pathlib

import pytest

from kvmfpu import scenarios
from kvmfpu.kvm.profiles import parse_version

SEEDS = pathlib.Path(__file__).resolve().parents[3] / "shared" / "seeds"


@pytest.mark.parametrize("s", scenarios.SCENARIOS, ids=lambda s: s.name)
def test_bug_on_last_affected_not_after(s: scenarios.Scenario) -> None:
    assert scenarios.replay(s.name).bug                      # default: last affected
    clean = s.first_fixed or s.last_unaffected
    assert clean is not None
    assert not scenarios.replay(s.name, clean).bug


@pytest.mark.parametrize("s", [s for s in scenarios.SCENARIOS if s.versions == "linux"],
                         ids=lambda s: s.name)
def test_linux_versions_are_ordered(s: scenarios.Scenario) -> None:
    assert s.first_affected is not None
    assert parse_version(s.first_affected) <= parse_version(s.last_affected)
    if s.first_fixed:
        assert parse_version(s.last_affected) < parse_version(s.first_fixed)
        for stable in s.stable_fixes:
            assert scenarios.replay(s.name, stable).bug is False


def test_every_seed_file_has_a_scenario() -> None:
    names = {s.seed for s in scenarios.SCENARIOS if s.seed.endswith(".txt")}
    assert len(names) == 5 and len(scenarios.SCENARIOS) == 6
    if SEEDS.is_dir():
        assert names == {p.name for p in SEEDS.iterdir()}
    # The one scenario without a seed file names its public source instead.
    assert scenarios.get("pkru-leak").seed == "proxmox/pve-kernel 1559d22"


def test_unknown_scenario() -> None:
    with pytest.raises(scenarios.UnknownScenario, match="one of acrn-xss"):
        scenarios.get("nope")


def test_json_round_trip() -> None:
    import json
    r = scenarios.replay("fpsse-migration")
    data = json.loads(json.dumps(r.to_json()))
    assert data["bug"] is True and data["events"][3]["errno"] == "EINVAL"


@pytest.mark.parametrize("s", scenarios.SCENARIOS, ids=lambda s: s.name)
def test_runs_or_declines_on_every_host(s: scenarios.Scenario) -> None:
    """Every packaged host either replays or says why it cannot (NotApplicable); nothing
    else escapes."""
    from kvmfpu import cpus
    versions = ["acrn-2.5", "acrn-2.6"] if s.versions == "acrn" else ["5.15", "6.1", "6.18", "7.3"]
    ran = 0
    for host in cpus.names():
        for version in versions:
            try:
                r = s.run(version, host=host)
            except scenarios.NotApplicable as exc:
                assert host in str(exc)
                continue
            assert isinstance(r.bug, bool) and r.verdict
            ran += 1
    assert ran
