"""libvirt save images: real ones written by Debian's libvirt 9.0 and QEMU 7.2 here
(``virsh save`` in every save_image_format libvirt 9.0 takes, ``virsh managedsave``), made
by a private virtlogd/libvirtd (kvmfpu.testing.libvirt, in a mount namespace of its own),
and broken ones. The guest is tools/samples/tcg_guest.S under TCG: FLD1; FLDPI (TOP=6),
MXCSR 9FC0h, XMM1, YMM3, PKRU 55555554h."""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from kvmfpu.blob import decode as dec
from kvmfpu.blob import describe, infer, libvirt_save, sources
from kvmfpu.blob.errors import InputError
from kvmfpu.cli import main

ROOT = Path(__file__).resolve().parents[2]
NEEDED = ("libvirtd", "virtlogd", "virsh", "unshare", "qemu-system-x86_64", "as", "ld")


@pytest.fixture(scope="session")
def libvirt_images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The images and manifest kvmfpu.testing.libvirt leaves: it starts virtlogd and
    libvirtd (``-d``) in a private mount namespace, saves the domains and stops both by
    their pid files before it exits (the namespace, and its mounts, go with it)."""
    if os.geteuid() != 0:
        pytest.skip("libvirt's system daemons need root")
    missing = [p for p in NEEDED if shutil.which(p) is None]
    if missing:
        pytest.skip(f"not installed: {', '.join(missing)}")
    out = tmp_path_factory.mktemp("libvirt")
    subprocess.run(["as", "--32", "-o", out / "g.o", ROOT / "tools/samples/tcg_guest.S"], check=True)
    subprocess.run(
        ["ld", "-m", "elf_i386", "-Ttext=0x100000", "-e", "_start", "-o", out / "g.elf", out / "g.o"],
        check=True,
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT), "KVMFPU_PARENT_MNTNS": os.readlink("/proc/self/ns/mnt")}
    run = subprocess.run(
        [
            "unshare",
            "-m",
            "--propagation",
            "private",
            sys.executable,
            "-m",
            "kvmfpu.testing.libvirt",
            str(out),
            str(out / "g.elf"),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        check=False,
    )
    manifest = out / "manifest.json"
    if not manifest.exists():
        pytest.skip(f"libvirt could not run here: {run.stderr.strip()[-300:]}")
    made: dict[str, Any] = json.loads(manifest.read_text())
    if "setup" in made["failures"] or not made["images"]:
        pytest.skip(f"libvirt could not run here: {made['failures']}")
    return made


def image(made: dict[str, Any], name: str) -> Path:
    if name not in made["images"]:
        pytest.fail(f"libvirt did not write {name}: {made['failures']}")
    return Path(made["images"][name])


def assert_guest_registers(cap: sources.Capture) -> None:
    """The registers tcg_guest.S leaves (tests/blob/test_qemu.py's shipped sample holds the
    same), and what QEMU under TCG does to XSTATE_BV (0: x86_cpu_reset, never updated)."""
    d = dec.decode(cap.data, infer.choose(cap).layout)
    assert cap.extra["xcr0"] == 0x207 and d.xstate_bv == 0
    rows = {r: v for r, v, _, _ in describe.st_rows(d)}
    assert rows["st6"] == "3.14159265358979323851" and rows["st7"] == "1"
    assert d.field("mxcsr").value == 0x9FC0
    assert d.field("xmm1").value == 0x3333333344444444_1111111122222222
    assert d.field("ymm3_hi").value == 0x4010000000000000_4008000000000000
    assert d.field("pkru").value == 0x55555554
    assert cap.restores_init == 0x207  # x87|SSE|AVX|PKRU hold data, XSTATE_BV 0


# libvirt 9.0's qemuSaveImageGetCompressionProgram: raw, gzip, bzip2, xz, lzop.
@pytest.mark.parametrize("fmt", ["raw", "gzip", "bzip2", "xz", "lzop"])
def test_virsh_save_in_each_format(libvirt_images: dict[str, Any], fmt: str) -> None:
    path = image(libvirt_images, f"save-{fmt}")
    (cap,) = sources.read(path)
    assert cap.fmt == "qemu" and cap.origin == "QEMU cpu 0"
    info = cap.container["libvirt_save"]
    assert info["format"] == fmt and info["version"] == 2 and info["was_running"] is True
    assert info["domain"] == f"kvmfpu-save-{fmt}" and info["domain_type"] == "qemu"
    assert info["cpu"]["mode"] == "maximum"  # the <cpu> the domain was defined with
    assert cap.domain_xml is not None and "<domain type='qemu'" in cap.domain_xml
    # Compressed images are read through a pipe, raw ones by seeking (RAM skipped).
    assert cap.container["qemu_stream"]["read_as"] == ("file" if fmt == "raw" else "pipe")
    assert cap.container["qemu_stream"]["ram_bytes_skipped"] > 0
    assert_guest_registers(cap)


def test_managedsave(libvirt_images: dict[str, Any]) -> None:
    (cap,) = sources.read(image(libvirt_images, "managedsave-raw"), "libvirt-save")
    assert cap.container["libvirt_save"]["domain"] == "kvmfpu-managed"
    assert_guest_registers(cap)


def test_libvirt_9_refuses_zstd_so_a_zstd_image_is_made_from_a_real_one(
    libvirt_images: dict[str, Any], tmp_path: Path
) -> None:
    """libvirt 9.0 here answers "Invalid save image format" for save_image_format "zstd"
    (the real machine; zstd came in a later libvirt). The zstd image is the raw image's
    header with format 5 and its QEMU stream compressed by the zstd program, as libvirt's
    compressor would pipe it."""
    assert "Invalid save image format" in libvirt_images["failures"].get("zstd", ""), libvirt_images[
        "failures"
    ]
    if not shutil.which("zstd"):
        pytest.skip("no zstd program")
    raw = image(libvirt_images, "save-raw").read_bytes()
    start = struct.unpack_from("<I", raw, 20)[0] + libvirt_save.HEADER_SIZE
    head = bytearray(raw[:start])
    struct.pack_into("<I", head, 28, 5)
    packed = subprocess.run(["zstd", "-q", "-c"], input=raw[start:], capture_output=True, check=True).stdout
    (tmp_path / "z.img").write_bytes(bytes(head) + packed)
    (cap,) = sources.read(tmp_path / "z.img")
    assert cap.container["libvirt_save"]["format"] == "zstd"
    assert_guest_registers(cap)


def test_big_endian_header_is_swapped(libvirt_images: dict[str, Any], tmp_path: Path) -> None:
    """qemuSaveImageReadHeader: a version above 2 is the other byte order's header."""
    raw = bytearray(image(libvirt_images, "save-raw").read_bytes())
    words = struct.unpack_from("<5I", raw, 16)
    struct.pack_into(">5I", raw, 16, *words)
    (tmp_path / "be.img").write_bytes(bytes(raw))
    (cap,) = sources.read(tmp_path / "be.img")
    assert cap.container["libvirt_save"]["byte_order"] == "big"


def test_decode_cli_several_images(
    libvirt_images: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    files = [str(image(libvirt_images, n)) for n in ("save-raw", "save-xz")]
    bad = tmp_path / "bad.img"
    bad.write_bytes(b"LibvirtQemudPart" + bytes(76))
    rc = main(["decode", *files, str(bad), "--json"])
    out, err = capsys.readouterr()
    doc = json.loads(out)
    assert rc == 2 and err.count("\n") == 1 and "incomplete" in err and str(bad) in err
    assert [f["file"] for f in doc["files"]] == [*files, str(bad)]
    assert [f["captures"] for f in doc["files"]] == [[0], [1], []]
    assert doc["files"][1]["container"]["libvirt_save"]["cpu"]["mode"] == "maximum"
    assert doc["files"][2]["error"].startswith(f"{bad}: ") or "incomplete" in doc["files"][2]["error"]
    rc = main(["validate", files[1], "--host", "zen4", "--kernel", "6.6"])
    out, _ = capsys.readouterr()
    assert rc == 0 and "accepted" in out and "will restore their initial state" in out


# -- broken images (built from the layout of virQEMUSaveHeader) ---------------------------


def header(
    version: int = 2, data_len: int = 16, fmt: int = 0, cookie: int = 0, magic: bytes = b"LibvirtQemudSave"
) -> bytes:
    return magic + struct.pack("<5I", version, data_len, 1, fmt, cookie) + bytes(56)


XML = b"<domain type='qemu'><name>x</name></domain>\0"


@pytest.mark.parametrize(
    "data, message",
    [
        (header()[:50], "truncated libvirt save header"),
        (header(magic=b"LibvirtQemudPart"), "incomplete"),
        (header(version=0), "version 0"),
        (header(data_len=0), "0 bytes of domain XML"),
        (header(data_len=1 << 31), "limit"),
        (header(fmt=9, data_len=len(XML)) + XML, "unknown image format 9"),
        (header(data_len=len(XML), cookie=len(XML) + 5) + XML, "cookie offset"),
        (header(data_len=len(XML)) + XML + b"QEVX", "no QEMU stream"),
        (header(data_len=len(XML), fmt=3) + XML + b"QEVM\0\0\0\3", "says xz"),
        (header(data_len=len(XML), fmt=1) + XML + b"\x1f\x8b\x08\0\0\0", "gzip"),
        (header(data_len=12) + b"<domain><!DOCTYPE", "unreadable|DOCTYPE"),
        (header(data_len=len(XML) - 1) + XML[:-1], "truncated|QEMU stream"),
    ],
)
def test_broken_images_are_one_line_refusals(data: bytes, message: str) -> None:
    with pytest.raises(InputError, match=message) as info:
        sources.read(data)
    assert "\n" not in str(info.value)


def sparse_image(base_xml: bytes = XML) -> bytes:
    """A libvirt "sparse" image (format 6, libvirt 11.1+: libvirt 9.0 cannot write one):
    libvirt's header and XML, then the shipped real 7.2 stream rewritten to QEMU's
    mapped-ram layout with its offsets counted in the file (kvmfpu.testing.streams)."""
    import lzma

    from kvmfpu.blob import sample_data
    from kvmfpu.testing import streams

    stream = lzma.decompress(sample_data.path(sample_data.QEMU_TCG).read_bytes())
    head = header(fmt=6, data_len=len(base_xml)) + base_xml
    return head + streams.mapped_ram(stream, base=len(head))


def test_sparse_image_from_its_documented_layout(tmp_path: Path) -> None:
    (tmp_path / "sparse.img").write_bytes(sparse_image())
    (cap,) = sources.read(tmp_path / "sparse.img")
    info = cap.container["libvirt_save"]
    assert info["format"] == "sparse" and info["cpu"] is None
    assert cap.container["qemu_stream"]["capabilities"] == ["mapped-ram"]
    d = dec.decode(cap.data, infer.choose(cap).layout)
    assert d.field("pkru").value == 0x55555554 and d.field("mxcsr").value == 0x9FC0
    # The offsets are the file's: read as a stream of its own from byte 0 they miss.
    with pytest.raises(InputError, match="mapped-ram"):
        sources.read(sparse_image()[libvirt_save.HEADER_SIZE + len(XML) :])
