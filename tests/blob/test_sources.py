"""Reading captures: raw, hex dumps (plain, xxd, od, gdb), ELF cores, signal frames, QEMU
streams (real ones, made by QEMU when it is installed), and layout inference."""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
from pathlib import Path
from typing import Any

import pytest

from kvmfpu import cpus
from kvmfpu.blob import decode as dec
from kvmfpu.blob import infer, sources
from kvmfpu.blob.errors import AmbiguousLayout, InputError


def xxd_text(data: bytes) -> str:
    lines = []
    for off in range(0, len(data), 16):
        chunk = data[off:off + 16]
        groups = " ".join(chunk[i:i + 2].hex() for i in range(0, len(chunk), 2))
        text = "".join(chr(b) if 32 <= b < 127 else "." for b in chunk)
        lines.append(f"{off:08x}: {groups:<39}  {text}")
    return "\n".join(lines) + "\n"


def gdb_text(data: bytes, base: int = 0x7FFDDEADB000) -> str:
    lines = []
    for off in range(0, len(data), 8):
        chunk = data[off:off + 8]
        label = f"<buf+{off}>" if off else "<buf>"
        lines.append(f"{base + off:#x} {label}:\t" + "\t".join(f"{b:#04x}" for b in chunk))
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("kind", ["hex", "xxd", "od", "gdb"])
def test_hex_dialects_give_back_the_bytes(kind: str, guest_blob: Any, tmp_path: Path) -> None:
    blob = guest_blob("skylake-sp")
    if kind == "hex":
        text = "\n".join(blob[i:i + 32].hex() for i in range(0, len(blob), 32))
    elif kind == "xxd":
        text = xxd_text(blob)
    elif kind == "gdb":
        text = gdb_text(blob)
    else:
        if not shutil.which("od"):
            pytest.skip("no od")
        f = tmp_path / "blob.bin"
        f.write_bytes(blob)
        text = subprocess.run(["od", "-A", "x", "-t", "x1", str(f)], capture_output=True,
                              text=True, check=True).stdout
        assert "*" in text                           # od folds the repeated zero lines
    caps = sources.read(text.encode())
    assert [c.fmt for c in caps] == [kind] and caps[0].data == blob
    assert caps[0].xcr0_hint == 0x2FF


def test_signal_frame() -> None:
    area = bytearray(2700)
    struct.pack_into("<HxxxxxxxxxxxxxxxxxxxxxxI", area, 0, 0x37F, 0x1F80)
    struct.pack_into("<IIQI", area, 464, sources.FP_XSTATE_MAGIC1, 2696 + 4, 0x2E7, 2696)
    struct.pack_into("<Q", area, 512, 3)
    struct.pack_into("<I", area, 2696, sources.FP_XSTATE_MAGIC2)
    (cap,) = sources.read(bytes(area))
    assert cap.fmt == "sigframe" and len(cap.data) == 2696 and cap.xcr0_hint == 0x2E7
    d = dec.decode(cap.data, cpus.load("zen4").layout)
    assert "_fpx_sw_bytes" in dec.sw_reserved_text(d.field("sw_reserved").value)


def _note(name: bytes, ntype: int, desc: bytes) -> bytes:
    pad = lambda b: b + bytes(-len(b) % 4)  # noqa: E731
    return struct.pack("<III", len(name) + 1, len(desc), ntype) + pad(name + b"\0") + pad(desc)


def elf_core(notes: bytes) -> bytes:
    """A minimal x86-64 ET_CORE file with one PT_NOTE segment."""
    ehdr = struct.pack("<4sBBBBB7sHHIQQQIHHHHHH", b"\x7fELF", 2, 1, 1, 0, 0, bytes(7), 4, 62, 1,
                       0, 64, 0, 0, 64, 56, 1, 0, 0, 0)
    phdr = struct.pack("<IIQQQQQQ", 4, 0, 64 + 56, 0, 0, len(notes), 0, 4)
    return ehdr + phdr + notes


def test_elf_core_threads_and_layout_note(guest_blob: Any) -> None:
    blob = guest_blob("zen4")
    prstatus = lambda pid: bytes(32) + struct.pack("<i", pid) + bytes(300)  # noqa: E731
    layout = b"".join(struct.pack("<IIII", b, c.size, c.offset, 0)
                      for b, c in cpus.load("zen4").layout.components.items() if not c.supervisor)
    core = elf_core(_note(b"CORE", 1, prstatus(101)) + _note(b"LINUX", 0x202, blob)
                    + _note(b"CORE", 1, prstatus(102)) + _note(b"LINUX", 0x202, blob[:2440])
                    + _note(b"LINUX", 0x205, layout))
    caps = sources.read(core)
    assert [c.origin for c in caps] == ["core thread 101", "core thread 102"]
    ch = infer.choose(caps[1])                  # without the note it would be ambiguous
    assert ch.how == "NT_X86_XSAVE_LAYOUT"
    d = dec.decode(caps[1].data, ch.layout)
    assert d.field("k1").value == 0xFF and d.field("pkru").value == 0xC


def test_gdb_core_on_amd_is_ambiguous_without_a_host(data_dir: Path) -> None:
    (cap,) = sources.read(data_dir / "gdb-gcore-zen5-nt_x86_xstate.bin")
    with pytest.raises(AmbiguousLayout, match="2 layouts fit") as info:
        infer.choose(cap)
    assert "opmask@0x340" in str(info.value) and "opmask@0x440" in str(info.value)
    ch = infer.choose(cap, "devhost-zen5")
    d = dec.decode(cap.data, ch.layout)
    assert not any("holds data" in a for a in d.anomalies)


def test_real_gdb_core(tmp_path: Path) -> None:
    if not shutil.which("gdb"):
        pytest.skip("no gdb")
    proc = subprocess.Popen(["sleep", "60"])
    try:
        out = subprocess.run(["gdb", "-q", "-batch", "-p", str(proc.pid), "-ex",
                              f"gcore {tmp_path / 'core'}"], capture_output=True, text=True,
                             timeout=120)
    finally:
        proc.kill()
    core = tmp_path / "core"
    if not core.exists():
        pytest.skip(f"gdb could not write a core here: {out.stderr.strip()[-200:]}")
    caps = sources.read(core)
    assert caps and all(c.fmt == "core" and c.origin.startswith("core thread") for c in caps)
    assert all(c.xcr0_hint is not None for c in caps)


def test_inference_when_one_layout_fits(guest_blob: Any) -> None:
    blob = bytearray(guest_blob("haswell"))          # XCR0 0x7: YMM sits at 576 everywhere
    (cap,) = sources.read(bytes(blob))
    ch = infer.choose(cap)
    assert "the only layout" in ch.how
    with pytest.raises(AmbiguousLayout):
        infer.choose(sources.read(guest_blob("zen4"))[0])


@pytest.mark.parametrize("data, message", [
    (b"", "empty"),
    (bytes(100), "too short"),
    (b"\x7fELF" + bytes(60), "ELF"),
    (b"QEVM\x00\x00\x00\x03" + bytes(20), "QEMU"),
    (b"zz zz zz\n", "hex"),
    (b"0000000: 7f03 0000\n0000020: 0000 0000\n", "offset"),
])
def test_bad_inputs_are_input_errors(data: bytes, message: str) -> None:
    with pytest.raises(InputError, match=message):
        for cap in sources.read(data):
            infer.choose(cap, "zen4")
            dec.decode(cap.data, cpus.load("zen4").layout)


def test_oversized_files_are_refused_without_reading(tmp_path: Path) -> None:
    big = tmp_path / "big"
    with open(big, "wb") as f:
        f.truncate(1 << 30)                           # sparse: nothing is written
    with pytest.raises(InputError, match="limit"):
        sources.read(big)


# -- QEMU streams, made by QEMU --------------------------------------------------------------

QEMU = shutil.which("qemu-system-x86_64")


def qemu_stream(tmp_path: Path, accel: str, cpu: str, gdb_regs: bool) -> Path:
    """Start QEMU stopped (-S), optionally set registers through its gdb stub, migrate to a
    file through QMP, quit."""
    import json
    import socket
    import time

    sock, out = tmp_path / "qmp.sock", tmp_path / f"{accel}.mig"
    args = [QEMU or "qemu-system-x86_64", "-accel", accel, "-cpu", cpu, "-m", "16", "-S",
            "-nodefaults", "-display", "none", "-machine", "pc",
            "-qmp", f"unix:{sock},server=on,wait=off"]
    port = 20000 + os.getpid() % 20000
    if gdb_regs:
        args += ["-gdb", f"tcp:127.0.0.1:{port}"]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        for _ in range(200):
            if sock.exists():
                break
            time.sleep(0.05)
        s = socket.socket(socket.AF_UNIX)
        try:
            s.connect(str(sock))
        except OSError:
            proc.kill()
            pytest.skip(f"QEMU ({accel}, {cpu}) did not start: {proc.communicate()[1][-300:]!r}")
        f = s.makefile("rw")

        def cmd(name: str, **arguments: Any) -> Any:
            f.write(json.dumps({"execute": name, "arguments": arguments}) + "\n")
            f.flush()
            while True:
                reply = json.loads(f.readline())
                if "return" in reply or "error" in reply:
                    return reply
        json.loads(f.readline())
        cmd("qmp_capabilities")
        if gdb_regs:
            subprocess.run(["gdb", "-q", "-batch", "-ex", "set architecture i386:x86-64",
                            "-ex", f"target remote 127.0.0.1:{port}",
                            "-ex", "set $xmm0.v4_int32 = {0x11111111, 0x22222222, 0x33333333, 0x44444444}",
                            "-ex", "set $xmm15.v2_int64 = {0x0123456789abcdef, 0x7}",
                            "-ex", "set $mxcsr = 0x1fa0", "-ex", "set $fctrl = 0x27f",
                            "-ex", "detach"], capture_output=True, timeout=120, check=False)
        cmd("migrate", uri=f"exec:cat > {out}")
        for _ in range(400):
            if cmd("query-migrate")["return"].get("status") in ("completed", "failed"):
                break
            time.sleep(0.05)
        cmd("quit")
    finally:
        proc.wait(timeout=30)
    return out


@pytest.mark.skipif(QEMU is None, reason="qemu-system-x86_64 not installed")
def test_real_tcg_stream_with_registers(tmp_path: Path) -> None:
    if not shutil.which("gdb"):
        pytest.skip("no gdb to set registers through QEMU's gdb stub")
    stream = qemu_stream(tmp_path, "tcg", "qemu64", gdb_regs=True)
    (cap,) = sources.read(stream)
    assert cap.fmt == "qemu" and cap.origin == "QEMU cpu 0"
    d = dec.decode(cap.data, infer.choose(cap).layout)
    assert d.field("xmm0").value == 0x44444444_33333333_22222222_11111111
    assert d.field("xmm15").value == 0x7 << 64 | 0x0123456789ABCDEF
    assert d.field("mxcsr").value == 0x1FA0 and d.field("fcw").value == 0x27F
    # Re-laid for another destination: same registers, the destination's offsets.
    cap2 = sources.read(stream)[0]
    ch = infer.choose(cap2, "zen4")
    assert "QEMU" in ch.how and dec.decode(cap2.data, ch.layout).field("xmm0").value == \
        d.field("xmm0").value


@pytest.mark.skipif(QEMU is None, reason="qemu-system-x86_64 not installed")
def test_real_kvm_stream(tmp_path: Path) -> None:
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        pytest.skip("no usable /dev/kvm")
    stream = qemu_stream(tmp_path, "kvm", "host,-arch-capabilities", gdb_regs=False)
    caps = sources.read(stream)
    assert caps and caps[0].extra["xcr0"] & 1
    d = dec.decode(caps[0].data, infer.choose(caps[0]).layout)
    assert d.field("fcw").value == 0x37F and d.field("mxcsr").value == 0x1F80
