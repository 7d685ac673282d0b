"""tools/bench_audit.py measures what it says: its generated snapshots come from the real
captures, have the distinct signatures asked for, and go through the whole engine."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

TOOL = Path(__file__).resolve().parents[2] / "tools" / "bench_audit.py"


def test_small_run() -> None:
    out = subprocess.run(
        [
            sys.executable,
            str(TOOL),
            "--snapshots",
            "2000",
            "--distinct",
            "12",
            "--classes",
            "3",
            "--jobs",
            "1",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    )
    doc = json.loads(out.stdout)
    (run,) = doc["runs"]
    assert run["distinct_source_runs"] == 12  # one per distinct (signature, source)
    assert run["verdicts"] == 12 * 3
    assert run["snapshots"] >= 2000


def test_file_reading_run(tmp_path: Path) -> None:
    # Every generated file is a real format kvmfpu reads (the tool asserts no read error),
    # each kind once; the QEMU-stream-based files share the real TCG stream's one vCPU
    # state, the VMM files the model vCPU's (tools/bench_audit.py base_files).
    out = subprocess.run(
        [
            sys.executable,
            str(TOOL),
            "--snapshots",
            "0",
            "--files",
            "11",
            "--file-mb",
            "0.2",
            "--jobs",
            "1",
            "--tmp",
            str(tmp_path),
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    )
    doc = json.loads(out.stdout)["file_read"]
    assert doc["files"] == 11 and len(doc["kinds"]) == 11
    assert doc["expanded_bytes"] > doc["bytes"]  # compressed files among them
    assert {"cat (cold)", "codecs alone, 1 process (warm)"} <= set(doc["phases"])
    assert 2 <= doc["signatures"] <= 4
    assert not list(tmp_path.iterdir())  # the generated files are removed
