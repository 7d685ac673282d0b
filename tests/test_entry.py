"""What ``kvmfpu --help`` loads (issue 14: start-up without cffi's C declarations parsed
unless the real device is used). Checked on the import graph, not on a timing."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

_PROBE = """
import runpy, sys
sys.argv = ["kvmfpu", "--help"]
try:
    runpy.run_module("kvmfpu", run_name="__main__")
except SystemExit:
    pass
sys.stdout.flush()
print(" ".join(sorted(sys.modules)), file=sys.stderr)
"""


def test_help_does_not_load_cffi() -> None:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    r = subprocess.run(
        [sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True, check=True, timeout=120
    )
    loaded = set(r.stderr.split())
    assert "usage: kvmfpu" in r.stdout
    assert "kvmfpu.cli" in loaded  # the probe did run the command line
    assert not {"cffi", "kvmfpu.real", "kvmfpu.native"} & loaded
