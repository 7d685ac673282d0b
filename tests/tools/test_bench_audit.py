"""tools/bench_audit.py measures what it says: its generated snapshots come from the real
captures, have the distinct signatures asked for, and go through the whole engine."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

TOOL = Path(__file__).resolve().parents[2] / "tools" / "bench_audit.py"


def test_small_run() -> None:
    out = subprocess.run([sys.executable, str(TOOL), "--snapshots", "2000", "--distinct", "12",
                          "--classes", "3", "--jobs", "1", "--json"],
                         capture_output=True, text=True, timeout=600, check=True)
    doc = json.loads(out.stdout)
    (run,) = doc["runs"]
    assert run["distinct_source_runs"] == 12          # one per distinct (signature, source)
    assert run["verdicts"] == 12 * 3
    assert run["snapshots"] >= 2000
