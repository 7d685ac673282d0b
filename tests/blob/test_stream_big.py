"""A multi-GB QEMU stream, decoded in bounded memory: a TCG guest (tools/samples/tcg_guest.S)
whose RAM is a memory-backend-file pre-filled with random bytes (no page is a zero page, so
every page is in the stream) is migrated to a file by QEMU 7.2 itself; kvmfpu decodes it in a
child process, from the file (RAM skipped by seeking) and from a pipe (RAM read and
dropped), and the child's peak RSS (getrusage RUSAGE_CHILDREN, measured by a fresh parent
so no other child counts) stays under 200 MB.

The size is KVMFPU_BIG_STREAM_GIB (default 3); the test skips without QEMU, GNU as/ld, or
twice the size in free disk space. On this machine (2 vCPUs, shared) the 3 GiB run takes
about a minute, most of it QEMU writing the stream.
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

import pytest

from kvmfpu.blob import decode as dec
from kvmfpu.blob import infer, sources

ROOT = Path(__file__).resolve().parents[2]
GIB = int(os.environ.get("KVMFPU_BIG_STREAM_GIB", "3"))
#: The issue's bound on the decoder's peak resident memory.
RSS_LIMIT = 200 << 20

#: Run in a fresh interpreter: decode ARGV[1] (a path, or "-" fed by cat ARGV[2]) in a child
#: and print the child's peak RSS in bytes (ru_maxrss is in KiB on Linux).
MEASURE = """
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


def fill(path: Path, size: int) -> None:
    """``size`` bytes of random data: one 16 MiB random block written over and over (no
    4 KiB page of it is zero, so QEMU sends every page)."""
    block = os.urandom(16 << 20)
    with open(path, "wb") as f:
        for _ in range(size // len(block)):
            f.write(block)


@pytest.fixture(scope="module")
def big_stream(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from kvmfpu.testing.qemu import Qemu, QemuUnavailable
    if not all(shutil.which(p) for p in ("qemu-system-x86_64", "as", "ld")):
        pytest.skip("needs qemu-system-x86_64 and GNU as/ld")
    out = tmp_path_factory.mktemp("big")
    if shutil.disk_usage(out).free < (2 * GIB + 1) << 30:
        pytest.skip(f"needs {2 * GIB + 1} GiB free in {out}")
    subprocess.run(["as", "--32", "-o", out / "g.o", ROOT / "tools/samples/tcg_guest.S"],
                   check=True)
    subprocess.run(["ld", "-m", "elf_i386", "-Ttext=0x100000", "-e", "_start", "-o",
                    out / "g.elf", out / "g.o"], check=True)
    ram = out / "ram"
    fill(ram, GIB << 30)
    args = ["-accel", "tcg", "-cpu", "max", "-m", f"{GIB}G", "-kernel", str(out / "g.elf"),
            "-object", f"memory-backend-file,id=ram0,size={GIB}G,mem-path={ram},share=on",
            "-machine", "memory-backend=ram0"]
    stream = out / "big.mig"
    try:
        with Qemu(args) as vm:
            for _ in range(400):                 # until the guest sits in its HLT loop
                if "HLT=1" in vm.hmp("info registers"):
                    break
                time.sleep(0.05)
            vm.cmd("stop")
            # 7.2's default max-bandwidth (128 MiB/s) would make this minutes.
            vm.cmd("migrate-set-parameters", **{"max-bandwidth": 8 << 30})
            vm.migrate_to(stream, timeout=900)
    except QemuUnavailable as exc:
        pytest.skip(f"QEMU: {exc}")
    finally:
        ram.unlink()
    assert stream.stat().st_size > GIB << 30       # every page is in the stream
    return stream


def measured(*argv: str) -> tuple[int, int, dict[str, Any]]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", MEASURE, *argv], capture_output=True,
                         text=True, env=env, timeout=1800, check=True)
    first, _, doc = out.stdout.partition("\n")
    rc, rss = (int(x) for x in first.split())
    assert rc == 0, out.stderr
    return rc, rss, json.loads(doc)


def test_decode_from_the_file_seeks_past_ram(big_stream: Path) -> None:
    _, rss, doc = measured(str(big_stream))
    print(f"file: peak RSS {rss / 2**20:.1f} MiB")
    assert rss < RSS_LIMIT, f"peak RSS {rss >> 20} MiB"
    (entry,) = doc["files"]
    q = entry["container"]["qemu_stream"]
    assert q["read_as"] == "file" and q["ram_bytes_skipped"] >= (GIB << 30) * 99 // 100


def test_decode_from_a_pipe_drops_ram(big_stream: Path) -> None:
    _, rss, doc = measured("-", str(big_stream))
    print(f"pipe: peak RSS {rss / 2**20:.1f} MiB")
    assert rss < RSS_LIMIT, f"peak RSS {rss >> 20} MiB"
    (entry,) = doc["files"]
    q = entry["container"]["qemu_stream"]
    assert q["read_as"] == "pipe" and q["ram_bytes_skipped"] >= (GIB << 30) * 99 // 100


def test_the_registers_survive_the_size(big_stream: Path) -> None:
    """The guest's registers, and --max-size limiting what is decoded, not the file."""
    (cap,) = sources.read(big_stream, max_size=1 << 20)
    d = dec.decode(cap.data, infer.choose(cap).layout)
    assert d.field("mxcsr").value == 0x9FC0 and d.field("pkru").value == 0x55555554
    assert d.field("xmm1").value == 0x3333333344444444_1111111122222222
