"""A real multi-GB QEMU migration stream, and the peak memory of decoding it (used by
tests/blob/test_stream_big.py and tools/bench.py).

``make(dir, gib)``: QEMU 7.2 under TCG runs tools/samples/tcg_guest.S on ``gib`` GiB of RAM
that is a memory-backend-file pre-filled with random bytes (no page is a zero page, so QEMU
sends every page), stops it and migrates it to ``dir/big.mig``. ``peak_rss(file)``: decodes
the file (or, with ``pipe``, ``cat FILE |`` on standard input) with ``kvmfpu decode --json``
in a child of a fresh interpreter, and returns the child's peak RSS (getrusage
RUSAGE_CHILDREN, so no other child of the caller counts) and its JSON document.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from kvmfpu.testing.qemu import Qemu, QemuUnavailable

ROOT = Path(__file__).resolve().parents[2]
GUEST = ROOT / "tools" / "samples" / "tcg_guest.S"

_MEASURE = """
import resource, subprocess, sys
cmd = [sys.executable, "-m", "kvmfpu", "decode", sys.argv[1], "--json"]
if sys.argv[1] == "-":
    cat = subprocess.Popen(["cat", sys.argv[2]], stdout=subprocess.PIPE)
    out = subprocess.run(cmd, stdin=cat.stdout, capture_output=True)
    cat.stdout.close()
    cat.wait()
else:
    out = subprocess.run(cmd, capture_output=True)
sys.stderr.buffer.write(out.stderr)
sys.stdout.write(str(out.returncode) + " " + str(resource.getrusage(
    resource.RUSAGE_CHILDREN).ru_maxrss * 1024) + "\\n")
sys.stdout.buffer.write(out.stdout)
"""


def missing_tools() -> list[str]:
    return [p for p in ("qemu-system-x86_64", "as", "ld", "cat") if shutil.which(p) is None]


def _fill(path: Path, size: int) -> None:
    """``size`` bytes: one 16 MiB random block written over and over."""
    block = os.urandom(16 << 20)
    with open(path, "wb") as f:
        for _ in range(size // len(block)):
            f.write(block)


def make(out: Path, gib: int) -> Path:
    """The stream (QemuUnavailable when QEMU does not run)."""
    subprocess.run(["as", "--32", "-o", out / "g.o", GUEST], check=True)
    subprocess.run(
        ["ld", "-m", "elf_i386", "-Ttext=0x100000", "-e", "_start", "-o", out / "g.elf", out / "g.o"],
        check=True,
    )
    ram = out / "ram"
    _fill(ram, gib << 30)
    args = [
        "-accel",
        "tcg",
        "-cpu",
        "max",
        "-m",
        f"{gib}G",
        "-kernel",
        str(out / "g.elf"),
        "-object",
        f"memory-backend-file,id=ram0,size={gib}G,mem-path={ram},share=on",
        "-machine",
        "memory-backend=ram0",
    ]
    stream = out / "big.mig"
    try:
        with Qemu(args) as vm:
            for _ in range(400):  # until the guest sits in its HLT loop
                if "HLT=1" in vm.hmp("info registers"):
                    break
                time.sleep(0.05)
            else:
                raise QemuUnavailable("the guest did not reach its HLT")
            vm.cmd("stop")
            # QEMU 7.2's default max-bandwidth (128 MiB/s) would make this minutes.
            vm.cmd("migrate-set-parameters", **{"max-bandwidth": 8 << 30})
            vm.migrate_to(stream, timeout=900)
    finally:
        ram.unlink()
    return stream


def peak_rss(stream: Path, pipe: bool = False) -> tuple[int, dict[str, Any]]:
    """(peak RSS in bytes, the kvmfpu-decode document) of decoding ``stream``."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    argv = ["-", str(stream)] if pipe else [str(stream)]
    out = subprocess.run(
        [sys.executable, "-c", _MEASURE, *argv],
        capture_output=True,
        text=True,
        env=env,
        timeout=1800,
        check=True,
    )
    first, _, doc = out.stdout.partition("\n")
    rc, rss = (int(x) for x in first.split())
    if rc != 0:
        raise RuntimeError(f"kvmfpu decode exited {rc}: {out.stderr.strip()[-300:]}")
    return rss, json.loads(doc)
