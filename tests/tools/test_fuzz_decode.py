"""tools/fuzz_decode.py: the atheris harness runs (a short campaign) and its corpus builds."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

TOOL = Path(__file__).resolve().parents[2] / "tools" / "fuzz_decode.py"


@pytest.mark.skipif(importlib.util.find_spec("atheris") is None,
                    reason="atheris not installed (pip install '.[fuzz]')")
def test_short_campaign(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    subprocess.run([sys.executable, str(TOOL), "--make-corpus", str(corpus)], check=True,
                   timeout=120)
    # the seeds tools/fuzz_decode.py writes: raw, hex, gzip, QEMU stream, libvirt save, qcow2
    assert {p.name for p in corpus.iterdir()} == {
        "kvm", "kvm-head", "hex", "gzip", "qemu", "libvirt-save", "qcow2"}
    r = subprocess.run([sys.executable, str(TOOL), str(corpus), "-runs=5000", "-max_len=4200",
                        f"-artifact_prefix={tmp_path}/"], capture_output=True, text=True,
                       timeout=600, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "Done 5000 runs" in r.stderr and not list(tmp_path.glob("crash-*"))
