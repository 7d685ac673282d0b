"""``kvmfpu replay`` and ``kvmfpu kernels``."""

import json

import pytest

from kvmfpu.cli import main
from kvmfpu.kvm.profiles import LTS_EXTRA, NAMED


def test_list_json_names_seed_fix_and_releases(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["replay", "--list", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)["scenarios"]}
    assert set(rows) == {"acrn-xss", "zen-xsaves", "fpsse-migration", "xfd-xstate-bv",
                         "init-xstate", "pkru-leak"}
    p = rows["pkru-leak"]
    assert (p["last_affected"], p["first_fixed"]) == ("5.15.0-91-generic", "5.15")
    f = rows["fpsse-migration"]
    assert f["seed"] == "002_5b4bf5985fb131d8.txt" and f["fixed_by"] == "a1020a25e697"
    assert (f["last_affected"], f["first_fixed"]) == ("5.19", "6.0")
    x = rows["xfd-xstate-bv"]
    assert x["fixed_by"] == "b45f72177594" and x["first_fixed"] == "6.19"
    assert "6.18.7" in x["stable_fixes"]
    assert rows["zen-xsaves"]["fixed_by"] is None and rows["zen-xsaves"]["introduced_by"]
    assert rows["init-xstate"]["last_affected"] == "6.18-rc5"


@pytest.mark.parametrize("args, status", [
    (["fpsse-migration"], 1), (["fpsse-migration", "--kernel", "6.0"], 0),
    (["fpsse-migration", "--kernel", "6.6"], 0),
    (["xfd-xstate-bv", "--kernel", "6.18"], 1), (["xfd-xstate-bv", "--kernel", "6.18.7"], 0),
    (["init-xstate"], 1), (["init-xstate", "--kernel", "6.18"], 0),
    (["acrn-xss"], 1), (["acrn-xss", "--kernel", "acrn-2.6"], 0),
    (["acrn-xss", "--guest-kernel", "5.10"], 0),
    (["zen-xsaves", "--kernel", "6.2"], 0), (["zen-xsaves"], 1),
    (["zen-xsaves", "--host", "zen3"], 0),
    # pkru-leak: the Ubuntu jammy source leaks PKRU into a qemu64 guest's state and 6.2
    # refuses it (proxmox/pve-kernel 1559d22); mainline 5.15's fill_xsave does not leak.
    (["pkru-leak"], 1), (["pkru-leak", "--kernel", "5.15"], 0),
    (["pkru-leak", "--kernel", "5.15.108-1-pve", "--dst-kernel", "6.2.16-5-pve"], 0),
    (["pkru-leak", "--kernel", "5.15.108-1-pve", "--dst-kernel", "6.2.16-3-pve"], 1),
])
def test_exit_status_says_whether_the_bug_showed(args: list[str], status: int,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["replay", *args]) == status
    out = capsys.readouterr().out
    assert ("BUG" in out.splitlines()[0]) == bool(status)


def test_replay_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["replay", "xfd-xstate-bv", "--kernel", "6.18", "--json"]) == 1
    data = json.loads(capsys.readouterr().out)
    assert data["bug"] and data["version"] == "6.18" and data["host"] == "sapphirerapids"
    oops = [e for e in data["events"] if e["outcome"] == "host-oops"]
    assert [e["vector"] for e in oops] == [7, 7]


@pytest.mark.parametrize("args, message", [
    (["replay"], "needs a scenario name"),
    (["replay", "nope"], "unknown scenario 'nope'"),
    (["replay", "fpsse-migration", "--kernel", "4.19"], "5.4 and later"),
    (["replay", "fpsse-migration", "--kernel", "4.18.0-513.el8"], "a RHEL 8 kernel"),
    (["replay", "zen-xsaves", "--dst-kernel", "6.2"], "--dst-kernel applies to pkru-leak only"),
    (["kernels", "5.14.0-427.el9"], "refuses rather than guess"),
    (["kernels", "4.15.0-213-generic"], "built on 4.15; kvmfpu models Linux 5.4 and later"),
    (["replay", "fpsse-migration", "--kernel", "banana"], "not a kernel version"),
    (["replay", "acrn-xss", "--kernel", "6.1"], "not an ACRN release"),
    (["replay", "zen-xsaves", "--src", "zen1"], "--src applies to fpsse-migration only"),
    (["replay", "zen-xsaves", "--host", "no-such-cpu"], "unknown host"),
    (["replay", "--list", "zen-xsaves"], "--list takes no scenario name"),
    (["kernels", "9.1"], "newer than the newest"),
    (["kernels", "6.18-rc0"], "-rc1 to -rc10"),
    (["replay", "init-xstate", "--host", "nehalem"], "nehalem has no XSAVE"),
    (["replay", "acrn-xss", "--host", "haswell"], "haswell has no XSAVES"),
])
def test_bad_input_one_line_exit_2(kvmfpu_cmd, args: list[str], message: str) -> None:  # type: ignore[no-untyped-def]
    r = kvmfpu_cmd(*args)
    assert r.returncode == 2, r.stdout + r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in r.stderr


def test_kernels_json_lists_profiles_and_switch_sources(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["kernels", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [p["name"] for p in data["profiles"]] == [*LTS_EXTRA, *NAMED]
    sw = {s["name"]: s for s in data["switches"]}
    assert sw["fpsse_always"]["commit"] == "a1020a25e697" and sw["fpsse_always"]["since"] == "6.0"
    assert sw["fpsse_always"]["backports"] == ["5.19.12"]
    p517 = next(p for p in data["profiles"] if p["name"] == "5.17")
    assert "user_xfeatures_from_cpuid" in p517["switches"]
    assert "fpsse_always" not in p517["switches"]


def test_kernels_accepts_stable_and_rc_versions(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["kernels", "6.18-rc5", "6.18.7", "--json"]) == 0
    rc5, stable = json.loads(capsys.readouterr().out)["profiles"]
    assert "init_fpu_put_imbalance_bug" in rc5["switches"]
    assert "xfd_clears_xstate_bv" in stable["switches"]
    assert "xfd_clears_xstate_bv" not in rc5["switches"]


def test_kernels_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["kernels"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split()[1:] == [*LTS_EXTRA, *NAMED]
    assert "b45f72177594" in out and "CVE-2022-49557" in out
    # Unconfirmed stable numbers stay marked (issue 16).
    assert "5.17.2 from the spec, UNVERIFIED" in out
    assert "6.6.122 UNVERIFIED" in out and "6.1.60 confirmed" in out


def test_kernels_takes_distro_strings_with_their_notes(capsys: pytest.CaptureFixture[str]) -> None:
    """Ubuntu ABI 91 is upstream 5.15.131 (proxmox/pve-kernel 5979e3a), Debian ABI 18 is
    6.1.76 (Debian changelog: 'Bump ABI to 18' in 6.1.76-1)."""
    assert main(["kernels", "5.15.0-91-generic", "6.1.0-18-amd64", "--json"]) == 0
    ubuntu, debian = json.loads(capsys.readouterr().out)["profiles"]
    assert (ubuntu["name"], ubuntu["upstream"], ubuntu["distro"]) == (
        "5.15.0-91-generic", "5.15.131", "ubuntu")
    assert "fpu_guest" in ubuntu["switches"] and any("UNVERIFIED" in n for n in ubuntu["notes"])
    assert (debian["upstream"], debian["distro"]) == ("6.1.76", "debian")
    assert main(["kernels", "5.15.0-91-generic"]) == 0
    out = capsys.readouterr().out
    assert "5.15.0-91-generic (upstream 5.15.131, ubuntu):" in out


def test_kernels_takes_this_machines_uname(capsys: pytest.CaptureFixture[str]) -> None:
    """``--kernel $(uname -r)`` on this machine (6.18.44-fc-v857): upstream 6.18.44 with a
    note that the vendor's backports are unknown."""
    import platform
    release = platform.release()
    assert main(["kernels", release, "--json"]) == 0
    (p,) = json.loads(capsys.readouterr().out)["profiles"]
    assert p["name"] == release
    assert bool(p["notes"]) == (p["distro"] is not None)


def test_replay_takes_this_machines_uname(capsys: pytest.CaptureFixture[str]) -> None:
    """``replay --kernel $(uname -r)``: fpsse-migration is fixed from 6.0 (a1020a25e697), so
    a 6.x machine kernel shows no bug; the header names the release as given."""
    import platform
    release = platform.release()
    status = main(["replay", "fpsse-migration", "--kernel", release])
    head = capsys.readouterr().out.splitlines()[0]
    assert release in head and status in (0, 1)
