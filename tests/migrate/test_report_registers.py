"""The migration report's register differences read by lane (kvmfpu.blob.regdiff), in the
report, its JSON and the CLI text: never two elided strings that look alike."""

from __future__ import annotations

import pytest

from kvmfpu.blob.compare import Difference
from kvmfpu.cli import main
from kvmfpu.migrate.check import INCOMPATIBLE, check


def test_lost_registers_by_lane_in_report_and_json() -> None:
    # Raw KVM_SET_XSAVE of a Zen 4 buffer on Skylake-SP: the bytes sit at AMD's offsets, so
    # the destination reads other registers (test_check.py: the raw VMM loses registers).
    r = check("zen4@6.6", "skylake-sp@6.6", "EPYC-Genoa", vmm="raw", advise=False)
    assert r.verdict == INCOMPATIBLE and r.lost
    assert all(isinstance(d, Difference) for d in r.lost)
    lost = {x["register"]: x for x in r.to_json()["lost"]}
    zmm16 = lost["zmm16"]
    assert set(zmm16) == {"register", "source", "destination", "parts", "more_parts"}
    assert len(zmm16["source"]) == len(f"{int(zmm16['source'], 16):#x}")  # full, not elided
    lanes = zmm16["parts"]
    assert lanes and all(p["part"].startswith("lane ") and p["bits"][1] - p["bits"][0] == 31 for p in lanes)
    assert all(int(p["source"], 16) != int(p["destination"], 16) for p in lanes)


def test_cli_text_is_bounded_and_names_every_register(capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(
        [
            "migrate",
            "--src",
            "zen4@6.6",
            "--dst",
            "skylake-sp@6.6",
            "--guest",
            "EPYC-Genoa",
            "--vmm",
            "raw",
            "--no-advice",
        ]
    )
    out = capsys.readouterr().out
    block = out.split("registers (source -> destination):\n")[1].split("\n\n")[0].splitlines()
    assert rc == 1 and 0 < len(block) <= 61 and "..." not in block[0]
    assert "  zmm16: lanes 0-15 differ (of 16)" in block
    assert not any("..." in line and "more register" not in line for line in block)
