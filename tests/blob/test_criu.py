"""CRIU core images (kvmfpu.blob.criu): Debian's crit is the oracle — images crit encodes
decode to crit's own field values, our writer's bytes decode with crit to the JSON they were
made from, a real ``criu dump`` is tried, and hostile images are refused in one line."""

from __future__ import annotations

import json
import shutil
import signal
import struct
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from kvmfpu import cpus
from kvmfpu.arch import legacy
from kvmfpu.blob import sources
from kvmfpu.blob.load import load
from kvmfpu.testing import vmm_samples as vs
from kvmfpu.testing.hostile_vmm import assert_refused as refused

DATA = Path(__file__).parent / "data" / "criu"
CRIT = shutil.which("crit")
needs_crit = pytest.mark.skipif(CRIT is None, reason="Debian's criu package (crit) is not installed")


def fpregs_of(host: str) -> dict[str, Any]:
    s = vs.model_vcpu(host)
    return vs.criu_fields(s.xsave, cpus.load(host).layout, s.xcr0)


def crit(*args: str, stdin: bytes | None = None) -> bytes:
    assert CRIT is not None
    return subprocess.run([CRIT, *args], input=stdin, capture_output=True, check=True, timeout=60).stdout


def regenerate() -> None:
    """Rewrite the committed sample (run by hand: it needs crit)."""
    doc = vs.criu_json(fpregs_of("zen4"), comm="fpu-zen4")
    (DATA / "core-zen4.json").write_text(json.dumps(doc, indent=1) + "\n")
    (DATA / "core-zen4.img").write_bytes(crit("encode", stdin=json.dumps(doc).encode()))


def test_committed_sample_registers() -> None:
    """core-zen4.img (crit-encoded, PROVENANCE.md): the model vCPU's registers come back."""
    (item,) = load(DATA / "core-zen4.img")
    d = item.decoded
    assert item.capture.fmt == "criu" and item.capture.origin == "CRIU thread 0 (fpu-zen4)"
    # tests/blob/conftest.py guest_blob's registers, as vs.model_vcpu sets them.
    assert d.field("fcw").value == 0x027F and d.field("xmm1").value == 0x1234
    assert d.field("k1").value == 0xFF and d.field("zmm20").value == 9 << 300
    assert d.field("xmm3").value == 5 and d.field("zmm3_hi256").value == 7 << (500 - 256)
    assert d.field("pkru").value == 0xC
    # Laid out for the smallest packaged host holding zen4's components; --host re-lays.
    (on_zen4,) = load(DATA / "core-zen4.img", "zen4")
    assert on_zen4.choice.host == "zen4" and on_zen4.decoded.field("pkru").value == 0xC
    lay = cpus.load("zen4").layout
    assert on_zen4.capture.data[lay.standard_offset(9) : lay.standard_offset(9) + 4] == b"\x0c\0\0\0"


@needs_crit
@pytest.mark.parametrize("host", ["zen4", "skylake-sp", "haswell", "sapphirerapids"])
def test_crit_encoded_images_decode_to_crits_fields(host: str, tmp_path: Path) -> None:
    """crit encode -> our reader, field by field against crit decode of the same image."""
    img = crit("encode", stdin=json.dumps(vs.criu_json(fpregs_of(host))).encode())
    theirs = json.loads(crit("decode", stdin=img))["entries"][0]["thread_info"]["fpregs"]
    (item,) = load(img, host)
    buf = item.capture.data
    words = struct.unpack_from("<96I", buf, legacy.ST_SPACE)
    assert list(words[:32]) == theirs["st_space"] and list(words[32:]) == theirs["xmm_space"]
    cwd, swd, twd, fop, rip, rdp, mxcsr, mask = struct.unpack_from("<HHHHQQII", buf)
    assert [cwd, swd, twd, fop, rip, rdp, mxcsr, mask] == [
        theirs[k] for k in ("cwd", "swd", "twd", "fop", "rip", "rdp", "mxcsr", "mxcsr_mask")
    ]
    lay = cpus.load(host).layout
    assert int.from_bytes(buf[512:520], "little") == theirs["xsave"]["xstate_bv"]
    seen = 0
    for name, (_num, bit, width) in vs.CRIU_XSAVE.items():
        if name not in theirs["xsave"]:
            assert bit not in item.capture.extra and not item.capture.xcr0_hint >> bit & 1
            continue
        off = lay.standard_offset(bit)
        got = [
            int.from_bytes(buf[off + i : off + i + width], "little") for i in range(0, lay.size(bit), width)
        ]
        assert got == theirs["xsave"][name], name
        seen += 1
    assert seen == bin(item.capture.xcr0_hint & 0x2FC).count("1")


@needs_crit
def test_our_writer_matches_crit(tmp_path: Path) -> None:
    """vs.criu_core_image's bytes decode with crit to the JSON they were written from (the
    writer the fuzzers and hostile tests use is checked against the oracle)."""
    fp = fpregs_of("skylake-sp")
    ours = vs.criu_core_image(fp, comm="w")
    theirs = json.loads(crit("decode", stdin=ours))
    assert theirs["entries"][0]["thread_info"]["fpregs"] == fp
    assert (
        load(ours, "skylake-sp")[0].capture.data
        == load(crit("encode", stdin=json.dumps(theirs).encode()), "skylake-sp")[0].capture.data
    )


def test_detected_and_named() -> None:
    img = (DATA / "core-zen4.img").read_bytes()
    assert sources.detect(img) == "criu"
    assert "criu" in sources.FORMATS
    (cap,) = sources.read(img, "criu")
    assert any("restore_fpu" in n for n in cap.notes)


@needs_crit
def test_real_criu_dump(tmp_path: Path) -> None:
    """A real dump of a sleeping process; skipped where criu cannot dump here (this sandbox:
    criu 3.17.1's kerndat fails on Linux 6.18's vDSO)."""
    proc = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        time.sleep(0.2)
        out = tmp_path / "dump"
        out.mkdir()
        r = subprocess.run(
            [
                "criu",
                "dump",
                "-t",
                str(proc.pid),
                "-D",
                str(out),
                "--shell-job",
                "--leave-running",
                "-o",
                "dump.log",
            ],
            capture_output=True,
            timeout=60,
        )
        if r.returncode != 0:
            log = (out / "dump.log").read_text(errors="replace").strip().splitlines()
            errors = [line for line in log if "Error" in line] or log[-1:]
            pytest.skip(f"criu dump does not run here: {errors[0][:160] if errors else r.returncode}")
        (core,) = out.glob(f"core-{proc.pid}.img")
        (item,) = load(core)
        assert item.decoded.field("mxcsr").value & 0xFFFF == 0x1F80  # glibc's default MXCSR
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()


def _with_fpregs(change: dict[str, Any]) -> bytes:
    fp = fpregs_of("zen4")
    fp.update(change)
    return vs.criu_core_image(fp)


@pytest.mark.parametrize(
    ("name", "data", "match"),
    [
        ("truncated", vs.criu_core_image(fpregs_of("zen4"))[:500], "declares|truncated"),
        (
            "huge entry size",
            struct.pack("<IIi", 0x54564319, 0x55053847, 0x7FFF_FFFF) + bytes(64),
            "declares 2147483647 bytes",
        ),
        (
            "huge field length",
            struct.pack("<IIi", 0x54564319, 0x55053847, 12) + b"\x12\xff\xff\xff\xff\x0f" + bytes(6),
            "declares",
        ),
        ("not a core image", struct.pack("<II", 0x54564319, 0x55053847 ^ 1) + bytes(8), "is not CORE"),
        ("aarch64", struct.pack("<IIi", 0x54564319, 0x55053847, 2) + b"\x08\x03", "mtype 3"),
        ("short st_space", _with_fpregs({"st_space": [0] * 31}), "valid_xsave_frame"),
        (
            "wrong ymmh count",
            _with_fpregs({"xsave": {"xstate_bv": 7, "ymmh_space": [1] * 63}}),
            "restore_fpu refuses",
        ),
        ("group wire type", struct.pack("<IIi", 0x54564319, 0x55053847, 2) + b"\x0b\x0c", "groups"),
        (
            "endless varint",
            struct.pack("<IIi", 0x54564319, 0x55053847, 12) + b"\x08" + b"\xff" * 11,
            "varint",
        ),
    ],
    ids=lambda v: v if isinstance(v, str) and len(v) < 40 else "",
)
def test_hostile_images(
    name: str, data: bytes, match: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The wrong-magic image is no CRIU image to detection: the user names the format.
    refused(data, match, tmp_path, capsys, "criu" if name == "not a core image" else None)
