"""crosvm vCPU snapshot fragments (kvmfpu.blob.crosvm, kvmfpu.blob.cbor).

No crosvm binary runs here and google/crosvm publishes no snapshot, so fragments are
written as its serialisation code writes them (kvmfpu.testing.vmm_samples; sources in the
reader's docstring and data/crosvm/PROVENANCE.md), and the CBOR writer is checked against
cbor2, an independent encoder, where it is installed."""

from __future__ import annotations

from pathlib import Path

import pytest

from kvmfpu.blob import cbor, sources
from kvmfpu.blob.errors import InputError
from kvmfpu.blob.load import load
from kvmfpu.testing import vmm_samples as vs
from kvmfpu.testing.hostile_vmm import assert_refused

DATA = Path(__file__).parent / "data" / "crosvm"


def test_committed_fragment_registers() -> None:
    """vcpu/vcpu0 of a model Zen 4 vCPU. crosvm saves no CPUID, so the layout is the user's
    to give (--host) when packaged hosts disagree (AMD and Intel place AVX-512 and PKRU
    differently at this XCR0)."""
    data = (DATA / "vcpu0-zen4.cbor").read_bytes()
    with pytest.raises(InputError, match="2 layouts fit"):
        load(data)
    (item,) = load(data, "zen4")
    d = item.decoded
    assert item.capture.origin == "crosvm vCPU 0" and item.capture.fmt == "crosvm"
    assert d.field("fcw").value == 0x027F and d.field("xmm1").value == 0x1234
    assert d.field("k1").value == 0xFF and d.field("zmm20").value == 9 << 300 and d.field("pkru").value == 0xC
    assert item.capture.extra == {"xcr0": 0x2E7, "xss": 0}
    assert any("no CPUID" in n for n in item.capture.notes)


def test_regenerated_fragment_is_byte_identical() -> None:
    assert vs.crosvm_fragment(vs.model_vcpu("zen4")) == (DATA / "vcpu0-zen4.cbor").read_bytes()


def test_writer_matches_cbor2() -> None:
    """ciborium and cbor2 both write definite lengths and the shortest integer heads
    (RFC 8949 §4.2.1 preferred serialisation): our writer must agree byte for byte."""
    cbor2 = pytest.importorskip("cbor2", reason="cbor2 (an independent CBOR encoder) is not installed")
    snap = vs.crosvm_snapshot(vs.model_vcpu("skylake-sp"), vcpu_id=3)
    ours = vs.cbor_dumps(snap)
    assert ours == cbor2.dumps(snap)
    assert cbor.loads(ours) == cbor2.loads(ours) == snap


def test_json_era_and_vcpu_number() -> None:
    """serde_json fragments (before 72d733e7e, 2025-01-08): the same struct, map keys as text."""
    s = vs.model_vcpu("haswell")
    (item,) = load(vs.crosvm_fragment(s, 5, encoding="json"), "haswell")
    assert item.capture.origin == "crosvm vCPU 5"
    assert item.decoded.field("xmm1").value == 0x1234 and item.capture.extra["xcr0"] == s.xcr0
    assert sources.detect(vs.crosvm_fragment(s, encoding="json")) == "crosvm"


def test_xsave2_length_not_a_word_multiple() -> None:
    """Xsave::new(len) keeps len.div_ceil(4) words and the byte length: the buffer is cut to len."""
    s = vs.model_vcpu("sapphirerapids")
    s.xsave = s.xsave + bytes(6)
    (item,) = load(vs.crosvm_fragment(s), "sapphirerapids")
    assert len(item.capture.data) == len(s.xsave)


def _snap(**change: object) -> bytes:
    snap = vs.crosvm_snapshot(vs.model_vcpu("zen4"))
    snap.update(change)
    return vs.cbor_dumps(snap)


@pytest.mark.parametrize(
    ("name", "data", "match"),
    [
        ("truncated", vs.crosvm_fragment(vs.model_vcpu("zen4"))[:700], "remain|items at byte"),
        ("array counting past the file", b"\xa9\x67vcpu_id\x00\x65xsave\x9b" + b"\xff" * 8, "items at byte"),
        ("map counting past the file", b"\xa9\x67vcpu_id\x00\x65xsave\xbb" + b"\x7f" * 8, "pairs at byte"),
        ("byte string past the file", b"\xa9\x67vcpu_id\x00\x65xsave\x5b" + b"\x7f" * 8, "bytes where"),
        ("indefinite length", b"\xa9\x67vcpu_id\x00\x65xsave\x9f\x00\xff", "indefinite"),
        ("deep nesting", b"\xa1\x67vcpu_id" + b"\x81" * 100 + b"\x00", "nested more than"),
        ("len past the words", _snap(xsave={"data": [0] * 1024, "len": 8192}), "does not match"),
        ("xsave as bytes (2023 era)", _snap(xsave=list(range(200))), "before 2023-04-10"),
        ("negative xcr0", _snap(xcrs={0: -1}), "not a u64"),
        ("trailing bytes", vs.crosvm_fragment(vs.model_vcpu("zen4")) + b"\x00", "after the CBOR item"),
    ],
    ids=lambda v: v if isinstance(v, str) and len(v) < 40 else "",
)
def test_hostile_fragments(
    name: str, data: bytes, match: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert_refused(data, match, tmp_path, capsys)
