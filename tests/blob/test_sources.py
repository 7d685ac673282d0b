"""Reading captures: raw, hex dumps (plain, xxd, od, gdb), ELF cores, signal frames,
compressed files; limits and refusals."""

from __future__ import annotations

import shutil
import struct
import subprocess
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvmfpu import cpus
from kvmfpu.blob import decode as dec
from kvmfpu.blob import describe, infer, sources
from kvmfpu.blob.errors import InputError


@pytest.mark.parametrize("kind", ["hex", "xxd", "od", "gdb"])
def test_hex_dialects_give_back_the_bytes(kind: str, guest_blob: Any, tmp_path: Path,
                                          containers: Any) -> None:
    blob = guest_blob("skylake-sp")
    if kind in ("hex", "xxd", "gdb"):
        text = getattr(containers, kind)(blob)
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
    assert "_fpx_sw_bytes" in describe.sw_reserved_text(d.field("sw_reserved").value)


def test_elf_core_threads_and_layout_note(guest_blob: Any, containers: Any) -> None:
    blob = guest_blob("zen4")
    c, prstatus = containers, containers.prstatus
    layout = b"".join(struct.pack("<IIII", b, c.size, c.offset, 0)
                      for b, c in cpus.load("zen4").layout.components.items() if not c.supervisor)
    core = c.elf_core(c.note(b"CORE", 1, prstatus(101)) + c.note(b"LINUX", 0x202, blob)
                      + c.note(b"CORE", 1, prstatus(102)) + c.note(b"LINUX", 0x202, blob[:2440])
                      + c.note(b"LINUX", 0x205, layout))
    caps = sources.read(core)
    assert [c.origin for c in caps] == ["core thread 101", "core thread 102"]
    ch = infer.choose(caps[1])                  # without the note it would be ambiguous
    assert ch.how == "NT_X86_XSAVE_LAYOUT"
    d = dec.decode(caps[1].data, ch.layout)
    assert d.field("k1").value == 0xFF and d.field("pkru").value == 0xC


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


@pytest.mark.parametrize("compress", ["gzip", "xz", "bz2"])
def test_compressed_inputs(compress: str, guest_blob: Any, containers: Any) -> None:
    import bz2
    import gzip
    import lzma
    pack = {"gzip": gzip.compress, "xz": lzma.compress, "bz2": bz2.compress}[compress]
    blob = guest_blob("skylake-sp")
    for inner, kind in ((blob, "raw"), (containers.xxd(blob).encode(), "xxd"),
                        (containers.core_of(blob), "core")):
        (cap,) = sources.read(pack(inner))
        assert cap.data == blob and cap.fmt == kind and "compressed" in cap.notes[0]
    with pytest.raises(InputError, match="expands past"):
        sources.read(pack(bytes(2 << 20)), max_size=1 << 20)    # a bomb stops at the limit
    with pytest.raises(InputError, match="does not expand"):
        sources.read(pack(blob)[:40])


@settings(max_examples=120, deadline=None)
@given(host=st.sampled_from(["skylake-sp", "zen4", "sapphirerapids"]),
       container=st.sampled_from(["raw", "hex", "xxd", "gdb", "core", "sigframe", "xz"]),
       data=st.data())
def test_every_container_decodes_and_encodes_byte_identically(
        host: str, container: str, containers: Any, data: st.DataObject) -> None:
    import lzma

    from kvmfpu.blob.load import load
    from kvmfpu.testing import strategies as ks
    size = data.draw(st.sampled_from([4096, cpus.load(host).layout.standard_size(
        cpus.load(host).supported_xcr0 & ~(3 << 17))]))
    buf = bytearray(data.draw(ks.valid_xsave(host, size=size)))
    buf[416:464] = data.draw(st.binary(min_size=48, max_size=48))     # reserved garbage
    buf[528:576] = data.draw(st.binary(min_size=48, max_size=48))
    blob = bytes(buf)
    wrapped = {"raw": lambda b: b, "hex": lambda b: containers.hex(b).encode(),
               "xxd": lambda b: containers.xxd(b).encode(),
               "gdb": lambda b: containers.gdb(b).encode(), "core": containers.core_of,
               "sigframe": lambda b: containers.sigframe(b, cpus.load(host).supported_xcr0),
               "xz": lzma.compress}[container](blob)
    (item,) = load(wrapped, host)
    if container == "sigframe":            # the frame's _fpx_sw_bytes replace bytes 464-511
        assert item.capture.data[:464] == blob[:464] and item.capture.data[512:] == blob[512:]
    else:
        assert item.capture.data == blob
    assert dec.encode(item.decoded) == item.capture.data


@pytest.mark.parametrize("program", ["zstd", "lzop"])
def test_program_compressions(program: str, guest_blob: Any, tmp_path: Path) -> None:
    """zstd and lzop are expanded by their programs (what libvirt compresses with)."""
    if not shutil.which(program):
        pytest.skip(f"no {program}")
    blob = guest_blob("skylake-sp")
    packed = subprocess.run([program, "-c"], input=blob, capture_output=True,
                            check=True).stdout
    (cap,) = sources.read(packed)
    assert cap.data == blob and cap.notes[0] == f"{program}-compressed input"
    with pytest.raises(InputError, match=f"{program}-compressed input does not expand"):
        sources.read(packed[:len(packed) // 2])


def test_a_missing_program_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    from kvmfpu.blob import compression
    monkeypatch.setattr(compression.shutil, "which", lambda _name: None)
    with pytest.raises(InputError, match="the zstd program is needed"):
        sources.read(b"\x28\xb5\x2f\xfd" + bytes(20))


def test_detection_table_and_streams(guest_blob: Any) -> None:
    """Detection reads the first bytes only; a non-seekable stream is read like a file."""
    import io
    blob = guest_blob("zen4")
    assert [name for name, _ in sources.DETECT] == ["core", "qemu", "libvirt-save"]
    assert set(sources.STREAMED) == {"qemu", "libvirt-save"}
    (cap,) = sources.read(io.BufferedReader(io.BytesIO(blob)))
    assert cap.data == blob and cap.fmt == "raw"
