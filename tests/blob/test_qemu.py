"""QEMU migration streams: real ones made by QEMU 7.2 here (KVM and TCG), the shipped
sample, and broken ones."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from kvmfpu.blob import decode as dec
from kvmfpu.blob import describe, infer, sources
from kvmfpu.blob.errors import InputError

# -- QEMU streams, made by QEMU --------------------------------------------------------------

QEMU = shutil.which("qemu-system-x86_64")


def qemu_stream(tmp_path: Path, accel: str, cpu: str, gdb_regs: bool) -> Path:
    """Start QEMU stopped (-S), optionally set registers through its gdb stub, migrate to a
    file, quit."""
    from kvmfpu.testing.qemu import Qemu, QemuUnavailable, free_port
    port = free_port()
    args = ["-accel", accel, "-cpu", cpu, "-S"] + (["-gdb", f"tcp:127.0.0.1:{port}"]
                                                    if gdb_regs else [])
    try:
        with Qemu(args) as vm:
            if gdb_regs:
                subprocess.run(["gdb", "-q", "-batch", "-ex", "set architecture i386:x86-64",
                                "-ex", f"target remote 127.0.0.1:{port}",
                                "-ex", "set $xmm0.v4_int32 = {0x11111111, 0x22222222, "
                                       "0x33333333, 0x44444444}",
                                "-ex", "set $xmm15.v2_int64 = {0x0123456789abcdef, 0x7}",
                                "-ex", "set $mxcsr = 0x1fa0", "-ex", "set $fctrl = 0x27f",
                                "-ex", "detach"], capture_output=True, timeout=120, check=False)
            return vm.migrate_to(tmp_path / f"{accel}.mig")
    except QemuUnavailable as exc:
        pytest.skip(f"QEMU ({accel}, {cpu}): {exc}")


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


def sample_stream() -> bytes:
    import lzma

    from kvmfpu.blob import sample_data
    return lzma.decompress(sample_data.path(sample_data.QEMU_TCG).read_bytes())


def test_shipped_tcg_sample() -> None:
    """tools/samples/tcg_guest.S: FLD1; FLDPI (TOP=6), MXCSR 9FC0h, YMM3, XMM1, PKRU
    55555554h, run under TCG, where QEMU keeps XSTATE_BV at 0."""
    from kvmfpu.blob.load import load
    (item,) = load(sample_stream())
    d, cap = item.decoded, item.capture
    assert item.choice.host == "sierraforest"        # fewest components holding XCR0 0x207
    assert cap.extra["xcr0"] == 0x207 and d.xstate_bv == 0
    rows = {r: (v, raw) for r, v, _, raw in describe.st_rows(d)}
    assert rows["st6"][0] == "3.14159265358979323851" and rows["st7"][0] == "1"
    assert describe.st_rows(d)[0][2] == "zero"           # ST0's tag is R6's; slot 0 is empty
    assert d.field("mxcsr").value == 0x9FC0 and d.field("xmm1").value == \
        0x3333333344444444_1111111122222222
    assert d.field("ymm3_hi").value == 0x4010000000000000_4008000000000000
    assert d.field("pkru").value == 0x55555554
    assert any("probably written under TCG" in n and "TOP=6" in n for n in cap.notes)
    assert sum("XSTATE_BV[" in a for a in d.anomalies) == 4      # x87, XMM, ymm, pkru


def test_stream_relaid_for_each_destination() -> None:
    from kvmfpu import cpus
    from kvmfpu.blob.load import load
    for host in ("skylake-sp", "zen4", "sapphirerapids"):
        (item,) = load(sample_stream(), host)
        pkru = cpus.load(host).layout.components[9].offset
        assert item.capture.data[pkru:pkru + 4] == (0x55555554).to_bytes(4, "little")
        assert len(item.capture.data) == 4096     # kvm_init_xsave: XCR0 0x207 fits in 4 KiB
    with pytest.raises(InputError, match="no XSAVE"):
        load(sample_stream(), "nehalem")


@pytest.mark.parametrize("cut, message", [
    (lambda s: s[:7], "not a QEMU migration stream"),
    (lambda s: s[:4] + b"\0\0\0\x02" + s[8:], "version 2"),
    (lambda s: s[:len(s) // 2], "without its JSON VM description"),
    (lambda s: s[:20] + bytes(1000) + s[1020:], "QEMU stream"),
    (lambda s: s[:-5] + b"\xff\xff\xff\xff\xff", "JSON|description"),
])
def test_broken_streams(cut: Any, message: str) -> None:
    with pytest.raises(InputError, match=message):
        sources.read(cut(sample_stream()), "qemu")


@pytest.mark.skipif(QEMU is None, reason="qemu-system-x86_64 not installed")
def test_one_capture_per_vcpu(tmp_path: Path) -> None:
    from kvmfpu.testing.qemu import Qemu, QemuUnavailable
    try:
        with Qemu(["-accel", "tcg", "-cpu", "max", "-smp", "3", "-S"]) as vm:
            stream = vm.migrate_to(tmp_path / "smp.mig")
    except QemuUnavailable as exc:
        pytest.skip(str(exc))
    caps = sources.read(stream)
    assert [c.origin for c in caps] == ["QEMU cpu 0", "QEMU cpu 1", "QEMU cpu 2"]


# -- streamed reading: RAM skipped, pipes, sizes, RAM variants ----------------------------

def test_file_and_pipe_give_the_same_vcpu(tmp_path: Path) -> None:
    """A file is read by seeking (the description from its end); a gzip stream through a
    pipe (RAM dropped, the device sections kept until the description): same buffer."""
    import gzip
    import io
    data = sample_stream()
    (tmp_path / "s.mig").write_bytes(data)
    (by_file,) = sources.read(tmp_path / "s.mig")
    (by_pipe,) = sources.read(gzip.compress(data, 1))
    (by_stdin,) = sources.read(io.BufferedReader(io.BytesIO(data)))   # not seekable here
    assert by_file.data == by_pipe.data == by_stdin.data
    assert by_file.container["qemu_stream"]["read_as"] == "file"
    assert by_pipe.container["qemu_stream"]["read_as"] == "pipe"
    # The sample's RAM (its 16 MiB guest, non-zero pages only): skipped, never decoded.
    assert by_file.container["qemu_stream"]["ram_bytes_skipped"] == 475136


def test_max_size_limits_what_is_decoded_not_the_stream(tmp_path: Path) -> None:
    data = sample_stream()                          # 625 KB: 464 KB of RAM pages
    (tmp_path / "s.mig").write_bytes(data)
    assert len(sources.read(tmp_path / "s.mig", max_size=200_000)) == 1
    with pytest.raises(InputError, match="limit"):  # its VM description alone is 99 KB
        sources.read(tmp_path / "s.mig", max_size=50_000)
    with pytest.raises(InputError, match="limit"):
        import gzip
        sources.read(gzip.compress(data, 1), max_size=50_000)


def test_mapped_ram_stream() -> None:
    """QEMU 9.0+'s mapped-ram layout (kvmfpu.testing.streams rewrites the real 7.2 sample
    to it: QEMU 7.2 cannot write one): each block's pages at their file offset, skipped by
    seeking on a file and read forward on a pipe."""
    import gzip

    from kvmfpu.testing import streams
    mapped = streams.mapped_ram(sample_stream())
    (orig,) = sources.read(sample_stream())
    for data in (mapped, gzip.compress(mapped, 1)):
        (cap,) = sources.read(data)
        assert cap.data == orig.data
        assert cap.container["qemu_stream"]["capabilities"] == ["mapped-ram"]
        assert cap.container["qemu_stream"]["ram_bytes_skipped"] > 16 << 20


def test_mapped_ram_refusals() -> None:
    import struct as st

    from kvmfpu.testing import streams
    mapped = bytearray(streams.mapped_ram(sample_stream()))
    at = mapped.index(b"\x06pc.ram") + 7 + 8           # its MappedRamHeader
    import gzip
    cut = bytes(mapped[:at + 28 + 4096])
    with pytest.raises(InputError, match="without its JSON VM description"):
        sources.read(cut)                               # a file: its end is looked at first
    with pytest.raises(InputError, match="truncated mapped-ram pages"):
        sources.read(gzip.compress(cut, 1))             # a pipe: the pages run out
    bad = bytearray(mapped)
    st.pack_into(">I", bad, at, 2)
    with pytest.raises(InputError, match="mapped-ram header version 2"):
        sources.read(bytes(bad))
    bad = bytearray(mapped)
    st.pack_into(">Q", bad, at + 20, 0)                # pages before the header
    with pytest.raises(InputError, match="pages at 0, not after byte"):
        sources.read(bytes(bad))


@pytest.mark.parametrize("record, message", [
    (0x200, "multifd"),                      # RAM_SAVE_FLAG_MULTIFD_FLUSH
    (0x100, "compressed pages"),             # RAM_SAVE_FLAG_COMPRESS_PAGE
    (0x40, "XBZRLE"),                        # RAM_SAVE_FLAG_XBZRLE
    (0x80, "RDMA"),                          # RAM_SAVE_FLAG_HOOK
    (0x400, "unknown RAM page flags 0x400"),
])
def test_ram_flags_kvmfpu_does_not_read(record: int, message: str) -> None:
    """migration/ram.c RAM_SAVE_FLAG_*: pages elsewhere or encoded are refused in a line."""
    from kvmfpu.testing import streams
    with pytest.raises(InputError, match=message) as info:
        sources.read(streams.with_ram_record(sample_stream(), record))
    assert "\n" not in str(info.value)


@pytest.mark.skipif(QEMU is None, reason="qemu-system-x86_64 not installed")
def test_real_x_ignore_shared_stream(tmp_path: Path) -> None:
    """QEMU 7.2 with x-ignore-shared and a shared memory-backend-file: the configuration
    section's capabilities subsection names it, each RAM block carries its address, and the
    shared RAM's pages are not in the stream (what this machine's QEMU wrote)."""
    from kvmfpu.testing.qemu import Qemu, QemuUnavailable
    backing = tmp_path / "ram"
    args = ["-accel", "tcg", "-cpu", "max", "-S", "-object",
            f"memory-backend-file,id=m0,size=16M,mem-path={backing},share=on",
            "-machine", "memory-backend=m0"]
    try:
        with Qemu(args) as vm:
            vm.cmd("migrate-set-capabilities",
                   capabilities=[{"capability": "x-ignore-shared", "state": True}])
            stream = vm.migrate_to(tmp_path / "ignore.mig")
    except QemuUnavailable as exc:
        pytest.skip(str(exc))
    assert b"configuration/capabilities" in stream.read_bytes()[:200]
    (cap,) = sources.read(stream)
    q = cap.container["qemu_stream"]
    assert q["capabilities"] == ["x-ignore-shared"] and q["ram_blocks"] >= 2
    assert q["ram_bytes_skipped"] < 16 << 20      # the 16 MiB of m0 are not in it
    d = dec.decode(cap.data, infer.choose(cap).layout)
    assert d.field("fcw").value == 0x37F          # x86_cpu_reset's FCW
