"""The command line: listings, the demo, and one-line errors with exit 2."""

from __future__ import annotations

import json

import pytest

from kvmfpu.cli import main


def test_cpus_lists_every_model(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["cpus", "--json"]) == 0
    models = json.loads(capsys.readouterr().out)
    names = [m["name"] for m in models]
    assert names == sorted(names) and "sapphirerapids" in names and "zen2" in names
    spr = next(m for m in models if m["name"] == "sapphirerapids")
    assert spr["components"]["18"] == {"size": 8192, "offset": 2816, "supervisor": False,
                                       "align64": True, "xfd": True}


def test_cpus_describes_a_dump_file(tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    f = tmp_path / "host.txt"
    f.write_text("CPU:\n   0x00000000 0x00: eax=0x0000000d ebx=0x756e6547 ecx=0x6c65746e edx=0x49656e69\n"
                 "   0x00000001 0x00: eax=0x000206a7 ebx=0x0 ecx=0x1c000000 edx=0x0\n"
                 "   0x0000000d 0x00: eax=0x00000007 ebx=0x00000340 ecx=0x00000340 edx=0x0\n"
                 "   0x0000000d 0x02: eax=0x00000100 ebx=0x00000240 ecx=0x00000000 edx=0x0\n")
    assert main(["cpus", str(f)]) == 0
    out = capsys.readouterr().out
    assert "XCR0 supported 0x7 (x87|sse|ymm)" in out and "0x240" in out


def test_demo_runs(kvmfpu_cmd) -> None:  # type: ignore[no-untyped-def]
    r = kvmfpu_cmd("demo")
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "kvmfpu: error: 2 layouts fit 0xe7" in out                 # refuses to guess
    assert "k1           00000000_0000f0f0" in out                     # decoded at Zen offsets
    assert "skylake-sp / Linux 6.6               accepted, but 4 registers arrive wrong" in out
    assert out.count("registers differ") == 2 and "0 registers differ" in out
    assert "haswell / Linux 6.6                  rejected -EINVAL" in out
    assert "guest zen2        rejected -EINVAL: validate_user_xstate_header" in out
    assert "st6=3.14159265358979323851, st7=1" in out and "probably written under TCG" in out
    assert "#GP(0): XCOMP_BV sets 0x100 (pt)" in out
    replays = [line.split() for line in r.stdout.splitlines() if line.startswith("   ") and
               ("BUG" in line or "no bug" in line)]
    # six seeds (the pkru-leak scenario joined the five), each last affected and first fixed
    assert len(replays) == 12 and sum(row[2] == "BUG" for row in replays) == 6


@pytest.mark.parametrize("args, message", [
    (["cpus", "no-such-host"], "unknown host 'no-such-host'"),
    (["frobnicate"], "invalid choice"),
    (["cpus", "--bogus"], "unrecognized arguments"),
    (["demo", "--src", "/"], "is a directory"),
    ([], "required"),
])
def test_bad_input_one_line_exit_2(kvmfpu_cmd, args: list[str], message: str) -> None:  # type: ignore[no-untyped-def]
    r = kvmfpu_cmd(*args)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in r.stderr
