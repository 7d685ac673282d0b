"""`kvmfpu cpus`: host descriptions of every kind, `diff A B`, `--capture FILE`, bad input.

Samples: packaged libvirt cputestdata captures, Firecracker's fingerprint baselines
(tests/cpus/data/firecracker/PROVENANCE.md), a `cpuid -r` text made from a packaged dump,
and this machine (skipped where the CPU probe cannot be built).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from kvmfpu import cpus
from kvmfpu.cli import main
from kvmfpu.cpus import capture

FC = Path(__file__).parents[1] / "cpus" / "data" / "firecracker"
GENOA_61 = FC / "fingerprint_AMD_GENOA_6.1host.json"
GENOA_618 = FC / "fingerprint_AMD_GENOA_6.18host.json"
REASON = capture.capture_unavailable()
needs_probe = pytest.mark.skipif(REASON is not None, reason=f"CPU probe unavailable: {REASON}")


def _run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    rc = main(list(args))
    out, err = capsys.readouterr()
    return rc, out, err


def test_fingerprint_is_described_with_its_kernel(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = _run(capsys, "cpus", str(GENOA_61))
    assert rc == 0
    assert "read under kernel 6.1.172-216.329.amzn2023.x86_64, microcode 0xa101158" in out
    assert "CPUID: firecracker-guest" in out and "XCR0 supported 0x2e7" in out
    assert "MSRs: 33 recorded (the guest's values at boot): 0x11 0x12 0x34" in out  # msr_modifiers


def test_cpuid_r_text_is_described(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    m = cpus.load("icelake-sp")
    f = tmp_path / "box.txt"
    f.write_text(
        "".join(
            f"   {leaf:#010x} {sub:#04x}: eax={a:#010x} ebx={b:#010x} ecx={c:#010x} edx={d:#010x}\n"
            for (leaf, sub), (a, b, c, d) in sorted(m.table.items())
        )
    )
    rc, out, _ = _run(capsys, "cpus", str(f), "--json")
    assert rc == 0
    [doc] = json.loads(out)["hosts"]
    assert doc["name"] == "box" and doc["supported_xcr0"] == f"{m.supported_xcr0:#x}"
    assert doc["source"]["kind"] == "cpuid -r" and doc["kernel"] is None


def test_diff_summary_first(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = _run(capsys, "cpus", "diff", "skylake-sp", "zen4")
    assert rc == 0
    first, *rest = out.splitlines()
    assert first.startswith("skylake-sp vs zen4: vendor GenuineIntel/AuthenticAMD")
    assert "zen4 lacks" in first and "XCR0 0x2ff/0x2e7" in first
    assert any(line.split()[:2] == ["9", "pkru"] and "(offset)" in line for line in rest)


def test_diff_json_between_fingerprints(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = _run(capsys, "cpus", "diff", str(GENOA_61), str(GENOA_618), "--json")
    assert rc == 0
    doc = json.loads(out)
    assert doc["xss"] == {"a": "0x0", "b": "0x1800"} and "0xda0" in doc["msrs_only_in_b"]
    assert doc["identity"]["kernel"]["b"].startswith("6.18.")


@needs_probe
def test_this_and_dot(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = _run(capsys, "cpus", "this")
    assert rc == 0 and out.startswith("this: ") and f"read under kernel {os.uname().release}" in out
    rc, out, _ = _run(capsys, "cpus", "diff", ".", "this")
    assert rc == 0 and out.startswith("this vs this: the same")


@needs_probe
def test_host_this_where_a_host_is_taken(capsys: pytest.CaptureFixture[str]) -> None:
    """demo --dst: another command that takes a host, through kvmfpu.cpus.load."""
    rc, out, err = _run(capsys, "demo", "--dst", "this")
    assert rc == 0, err
    lines = out.splitlines()
    assert lines[3].split() == ["component", "devhost-zen5", "this"]
    ymm = next(line for line in lines if line.split()[:1] == ["ymm"])
    assert ymm.split()[-2] == f"{cpus.load('this').layout.standard_offset(2):#06x}"  # CPUID.(0DH,2):EBX


@needs_probe
def test_capture_writes_a_file_that_loads(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "here.json"
    rc, out, _ = _run(capsys, "cpus", "--capture", str(f))
    assert rc == 0 and out.startswith(f"wrote {f}: here: ")
    assert dict(cpus.load(f).table) == dict(cpus.load("this").table)
    rc, out, _ = _run(capsys, "cpus", "--capture", str(f), "--name", "box-1", "--json")
    assert rc == 0 and json.loads(out)["hosts"][0]["name"] == "box-1" and cpus.load(f).name == "box-1"


@needs_probe
def test_capture_writes_through_the_one_output_writer(tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """--capture uses kvmfpu.cli.common.write_output: a device is refused, and the user's own
    symlink is followed as a shell redirection would (another user's planted symlink is
    refused: tests/cli/test_atomic.py)."""
    rc, _, err = _run(capsys, "cpus", "--capture", "/dev/full")
    assert rc == 2 and "is a device" in err
    target = tmp_path / "target.json"
    target.write_text("old")
    (tmp_path / "out.json").symlink_to(target)
    rc, _, _ = _run(capsys, "cpus", "--capture", str(tmp_path / "out.json"))
    assert rc == 0 and (tmp_path / "out.json").is_symlink()
    assert '"format": "kvmfpu-host/1"' in target.read_text()


def _deep(tmp_path: Path) -> str:
    f = tmp_path / "deep.json"
    f.write_text("[" * 100_000 + "]" * 100_000)
    return str(f)


def _huge(tmp_path: Path) -> str:
    f = tmp_path / "huge.json"
    f.write_text('{"cpuid": [[1, 0, ' + "9" * 10_000 + ", 0, 0, 0]]}")
    return str(f)


def _missing(tmp_path: Path) -> str:
    data = json.loads(GENOA_61.read_text())
    del data["microcode_version"]
    f = tmp_path / "fp.json"
    f.write_text(json.dumps(data))
    return str(f)


def _notdump(tmp_path: Path) -> str:
    f = tmp_path / "notes.txt"
    f.write_text("hello\n")
    return str(f)


def _binary(tmp_path: Path) -> str:
    f = tmp_path / "blob.bin"
    f.write_bytes(b"\xff\xfe\x00" * 10)
    return str(f)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda t: "no-such-host", "unknown host 'no-such-host'"),
        (_notdump, "not `cpuid -r` output"),
        (_binary, "not a text CPUID dump"),
        (_deep, "JSON nested too deeply"),
        (_huge, "not a host description: a number longer than 4300 digits"),
        (_missing, "not a Firecracker fingerprint dump: missing microcode_version"),
        (lambda t: str(FC / "fingerprint_ARM_NEOVERSE_V1_6.1host.json"), "aarch64"),
    ],
)
def test_bad_hosts_are_one_line_exit_2(
    make: Callable[[Path], str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    host = make(tmp_path)
    for args in (["cpus", host], ["cpus", "diff", "zen4", host]):
        rc, _, err = _run(capsys, *args)
        assert rc == 2
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("kvmfpu: error: ") and message in lines[0]


@pytest.mark.parametrize(
    "args, message",
    [
        (["cpus", "diff", "zen4"], "usage: kvmfpu cpus diff A B"),
        (["cpus", "diff", "zen4", "zen3", "zen2"], "usage: kvmfpu cpus diff A B"),
        (["cpus", "zen4", "--name", "x"], "--name goes with --capture"),
        (["cpus", "zen4", "--capture", "x.json"], "takes no HOST"),
    ],
)
def test_bad_usage_is_one_line_exit_2(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    rc, _, err = _run(capsys, *args)
    assert rc == 2 and err.count("\n") == 1 and message in err


def test_no_traceback_from_a_real_process(kvmfpu_cmd, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    r = kvmfpu_cmd("cpus", "diff", _deep(tmp_path), "zen4")
    assert r.returncode == 2 and "Traceback" not in r.stderr and r.stderr.count("\n") == 1


def test_without_the_probe_this_is_one_line_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where the probe cannot be built (no compiler or cffi), `this` and --capture say why."""
    monkeypatch.setattr(capture, "capture_unavailable", lambda: "cannot build the probe: no cc")
    capture._this.cache_clear()
    try:
        for args in (["cpus", "this"], ["cpus", "--capture", str(tmp_path / "x.json")]):
            rc, _, err = _run(capsys, *args)
            assert rc == 2 and err == (
                "kvmfpu: error: cannot read this machine's CPUID: cannot build the probe: no cc\n"
            )
        assert not list(tmp_path.iterdir())
    finally:
        capture._this.cache_clear()
