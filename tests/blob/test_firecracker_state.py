"""Firecracker vmstate files, bincode era v1.7-v1.14 (kvmfpu.blob.firecracker_state).

No Firecracker binary runs here and firecracker-microvm/firecracker publishes no vmstate
file, so files are written as its serialisation code writes them for each SNAPSHOT_VERSION
(kvmfpu.testing.vmm_samples.firecracker_vmstate; sources in the reader's docstring and
data/firecracker/PROVENANCE.md). The CRC64 is checked against the crc64 crate's published
check value, and the reader's layout walk against its layout search."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from kvmfpu import cpus
from kvmfpu.blob import firecracker_state as fc
from kvmfpu.blob import sources
from kvmfpu.blob.load import load
from kvmfpu.testing import vmm_samples as vs
from kvmfpu.testing.hostile_vmm import assert_refused

DATA = Path(__file__).parent / "data" / "firecracker"
VERSIONS = list(fc.FORMATS)


def test_crc64_is_the_crates() -> None:
    """crc64 crate (badboy/crc64-rs) docs: crc64(0, "123456789") == 16845390139448941002."""
    assert fc.crc64(b"123456789") == vs.crc64_jones(b"123456789") == 16845390139448941002


@pytest.mark.parametrize("name", ["vmstate-1.0.0-zen4.bin", "vmstate-8.0.0-zen4.bin"])
def test_committed_samples(name: str) -> None:
    """One Zen 4 vCPU in v1.7's format, two (salt 0 and 1) in v1.13/v1.14's."""
    items = load(DATA / name)
    assert [i.decoded.field("xmm1").value for i in items] == [0x1234, 0x1235][: len(items)]
    for it in items:
        d = it.decoded
        assert d.field("fcw").value == 0x027F and d.field("k1").value == 0xFF and d.field("pkru").value == 0xC
        assert it.choice.how == "CPUID leaf 0xD in the Firecracker vmstate"
        assert it.choice.layout.standard_offset(9) == 0x980
        assert it.capture.extra["xcr0"] == 0x2E7


def test_regenerated_samples_are_byte_identical() -> None:
    s0, s1 = vs.model_vcpu("zen4"), vs.model_vcpu("zen4", salt=1)
    assert vs.firecracker_vmstate([s0], "1.0.0") == (DATA / "vmstate-1.0.0-zen4.bin").read_bytes()
    assert vs.firecracker_vmstate([s0, s1], "8.0.0") == (DATA / "vmstate-8.0.0-zen4.bin").read_bytes()


@pytest.mark.parametrize("version", VERSIONS)
def test_every_format_version(version: str) -> None:
    s0, s1 = vs.model_vcpu("skylake-sp"), vs.model_vcpu("skylake-sp", salt=1)
    data = vs.firecracker_vmstate([s0, s1], version)
    items = load(data)
    assert [i.capture.origin for i in items] == ["Firecracker vCPU 0", "Firecracker vCPU 1"]
    assert [i.capture.data for i in items] == [s0.xsave, s1.xsave]
    assert items[0].choice.layout.standard_offset(5) == cpus.load("skylake-sp").layout.standard_offset(5)
    assert f"format {version} ({fc.FORMATS[version]})" in items[0].capture.notes[0]


@pytest.mark.parametrize("version", VERSIONS[:-1])
def test_layout_search_finds_what_the_walk_finds(version: str) -> None:
    """For 1.0.0-6.0.0 the VM state is walked field by field; 8.0.0's is searched for by the
    first VcpuState's layout: both must land on the same byte."""
    data = vs.firecracker_vmstate([vs.model_vcpu("zen4")], version)[:-8]
    _, pos = fc.header(data)
    walk = fc._Bincode(data, pos)
    fc._vm_info(walk)
    after_info = walk.pos
    fc._to_vcpus(walk, version)
    assert fc._find_vcpus(data, after_info) == walk.pos


@pytest.mark.parametrize("release", ["v1.13", "v1.14"])
def test_8_0_0_of_either_release(release: str) -> None:
    """v1.13 and v1.14 both write 8.0.0 with different VM-state layouts before the vCPUs."""
    s = vs.model_vcpu("zen4")
    (item,) = load(vs.firecracker_vmstate([s], "8.0.0", release=release))
    assert item.capture.data == s.xsave


def test_xsave2_extra_words_from_6_0_0() -> None:
    """kvm-bindings' Xsave (v1.12 on): kvm_xsave2 {len, xsave} then ``len`` u32 words."""
    s = vs.model_vcpu("sapphirerapids")
    s.xsave = s.xsave + bytes(range(256)) * 4
    (item,) = load(vs.firecracker_vmstate([s], "6.0.0"), "sapphirerapids")
    assert item.capture.data == s.xsave and len(item.capture.data) == 5120


def test_detected() -> None:
    data = (DATA / "vmstate-1.0.0-zen4.bin").read_bytes()
    assert sources.detect(data) == "firecracker" and "firecracker" in sources.FORMATS


def _good(version: str = "1.0.0") -> bytes:
    return vs.firecracker_vmstate([vs.model_vcpu("zen4")], version)


def _recrc(body: bytes) -> bytes:
    return body + struct.pack("<Q", vs.crc64_jones(body))


def _version(v: bytes) -> bytes:
    good = _good()[:-8]
    return _recrc(good[:8] + struct.pack("<Q", len(v)) + v + good[21:])


@pytest.mark.parametrize(
    ("name", "data", "match"),
    [
        ("bitcode era", _version(b"9.0.0"), "SnapshotHdr.version '9.0.0'.*bitcode"),
        ("unreleased 7.0.0", _version(b"7.0.0"), "SnapshotHdr.version '7.0.0' is not one"),
        ("versionize", struct.pack("<Q", fc.MAGIC_X86_64 | 1) + _good()[8:], "versionize format 1"),
        ("aarch64", struct.pack("<Q", fc.MAGIC_AARCH64) + _good()[8:], "aarch64"),
        ("stale CRC", _good()[:-8] + b"\0" * 8, "CRC64"),
        ("truncated", _recrc(_good()[:-8][:5000]), "wants|counts"),
        (
            "huge vCPU count",
            _recrc(
                _good()[:-8].replace(
                    b"\x01\x00\x00\x00\x00\x00\x00\x00\x08\x00",
                    b"\xff\xff\xff\xff\xff\x00\x00\x00\x08\x00",
                    1,
                )
            ),
            "counts|vCPUs",
        ),
        ("33 vCPUs", vs.firecracker_vmstate([vs.model_vcpu("zen4")] * 33, "6.0.0"), "33 vCPUs"),
        ("past Firecracker's 10 MiB", _good() + bytes(10 << 20), "VM_STATE_DESERIALIZE_LIMIT"),
        ("no vCPU found (8.0.0)", _recrc(_good("8.0.0")[:-8][:2000]), "no vcpu_states found"),
    ],
    ids=lambda v: v if isinstance(v, str) and len(v) < 40 else "",
)
def test_hostile_files(
    name: str, data: bytes, match: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert_refused(data, match, tmp_path, capsys)


# --- v1.15 on: snapshot-editor info-vmstate vcpu-states text (kvmfpu.blob.firecracker_text) --


def test_snapshot_editor_text() -> None:
    """info.rs prints "vcpu {i}:" and VcpuState's {:#?}; written here by Rust's pretty-Debug
    rules (vs.firecracker_info_text: no real output was available)."""
    s0, s1 = vs.model_vcpu("zen4"), vs.model_vcpu("zen4", salt=1)
    text = vs.firecracker_info_text([s0, s1])
    assert sources.detect(text) == "firecracker-info"
    items = load(text)
    assert [i.capture.data for i in items] == [s0.xsave, s1.xsave]
    assert [i.decoded.field("xmm1").value for i in items] == [0x1234, 0x1235]
    assert items[0].choice.layout.standard_offset(9) == 0x980 and items[0].capture.extra["xcr0"] == 0x2E7


def test_snapshot_editor_text_xsave2_words() -> None:
    s = vs.model_vcpu("sapphirerapids")
    s.xsave = s.xsave + bytes(range(256)) * 2
    (item,) = load(vs.firecracker_info_text([s]), "sapphirerapids")
    assert item.capture.data == s.xsave


def _text(change: str = "", into: str = "") -> bytes:
    return vs.firecracker_info_text([vs.model_vcpu("zen4")]).replace(change.encode(), into.encode(), 1)


@pytest.mark.parametrize(
    ("name", "data", "match", "fmt"),
    [
        ("region of 1025 words", _text("region: [\n", "region: [\n1,\n"), "has 1025 words", None),
        ("word past u32", _text("region: [\n", "region: [\n99999999999,\n"), "larger than 32 bits", None),
        ("no xsave field", _text("\n    xsave: ", "\n    xsavx: "), "no top-level xsave", None),
        ("extra words missing", _text("len: 0,", "len: 7,"), "7 extra words", None),
        ("not VcpuState", b"vcpu 0:\nkvm_mp_state: 0x0\nmpidr: 0x80000000\n", "aarch64", "firecracker-info"),
        (
            "33 vCPUs",
            b"vcpu 0:\nVcpuState {\n" + b"".join(b"vcpu %d:\n" % i for i in range(1, 33)),
            "33 vCPUs",
            None,
        ),
    ],
    ids=lambda v: v if isinstance(v, str) and len(v) < 40 else "",
)
def test_hostile_snapshot_editor_text(
    name: str, data: bytes, match: str, fmt: str | None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert_refused(data, match, tmp_path, capsys, fmt)
