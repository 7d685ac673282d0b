"""Decode and encode: named fields, byte-exact round trip, human text, anomalies."""

from __future__ import annotations

import struct
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvmfpu import cpus
from kvmfpu.blob import decode as dec
from kvmfpu.blob.errors import InputError

HOSTS = ("skylake-sp", "sapphirerapids", "zen4", "haswell", "zen2")


@pytest.mark.parametrize("host", ["skylake-sp", "zen4", "sapphirerapids"])
def test_registers_the_guest_wrote(host: str, guest_blob: Any) -> None:
    blob = guest_blob(host)
    d = dec.decode(blob, cpus.load(host).layout, host=host)
    assert d.field("fcw").value == 0x027F
    assert d.field("xmm1").value == 0x1234
    assert d.field("k1").value == 0xFF
    assert d.field("xmm3").value == 5 and d.field("zmm3_hi256").value == 7 << (500 - 256)
    assert d.field("zmm20").value == 9 << 300
    assert d.field("pkru").value == 0xC
    assert not d.anomalies


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(HOSTS), st.integers(576, 12000).flatmap(
    lambda n: st.binary(min_size=n, max_size=n)))
def test_encode_of_decode_is_byte_identical(host: str, data: bytes) -> None:
    layout = cpus.load(host).layout
    try:
        d = dec.decode(data, layout, host=host)
    except InputError:
        return                    # compacted XCOMP_BV naming components the host lacks
    assert dec.encode(d) == data


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(HOSTS), st.data())
def test_round_trip_of_valid_buffers_including_reserved_garbage(host: str, data: st.DataObject) -> None:
    from kvmfpu.testing import strategies as ks
    buf = data.draw(ks.valid_xsave(host))
    buf[416:512] = data.draw(st.binary(min_size=96, max_size=96))      # reserved, software
    buf[528:576] = data.draw(st.binary(min_size=48, max_size=48))      # header reserved
    d = dec.decode(bytes(buf), cpus.load(host).layout)
    assert dec.encode(d) == bytes(buf)


def test_compacted_buffers_decode_at_compacted_offsets() -> None:
    from kvmfpu.testing import compacted_area
    area = compacted_area("skylake-sp", 0x2E7, 0x2E7)
    d = dec.decode(bytes(area), cpus.load("skylake-sp").layout)
    assert d.compacted and d.component(9).offset == cpus.load("skylake-sp").layout.compacted(0x2E7)[0][9]
    assert dec.encode(d) == bytes(area)


def _anomalies(guest_blob: Any, mutate: Any, host: str = "skylake-sp") -> list[str]:
    buf = bytearray(guest_blob(host))
    mutate(buf)
    return dec.decode(bytes(buf), cpus.load(host).layout).anomalies


def test_anomalies(guest_blob: Any) -> None:
    def has(text: str, mutate: Any) -> bool:
        return any(text in a for a in _anomalies(guest_blob, mutate))
    assert has("header reserved", lambda b: b.__setitem__(560, 1))
    assert has("outside the host's XCR0", lambda b: struct.pack_into("<Q", b, 512, 1 << 17 | 3))
    assert has("bndcsr holds data", lambda b: b.__setitem__(0x400, 1))    # BV[4] clear
    assert has("MXCSR", lambda b: struct.pack_into("<I", b, 24, 1 << 20))
    assert not _anomalies(guest_blob, lambda b: None)
    cut = dec.decode(guest_blob("skylake-sp")[:3000], cpus.load("skylake-sp").layout,
                     host="skylake-sp")
    assert any(a.startswith("3000 bytes is none of the lengths skylake-sp's images come in: "
                            "2696 (every user component") for a in cut.anomalies)
    spr = bytearray(guest_blob("sapphirerapids"))
    struct.pack_into("<Q", spr, 512, struct.unpack_from("<Q", spr, 512)[0] | 1 << 18)
    d = dec.decode(bytes(spr), cpus.load("sapphirerapids").layout, xfd=1 << 18)
    assert any("IA32_XFD" in a and "#NM" in a for a in d.anomalies)
    short = bytearray(guest_blob("sapphirerapids"))[:2816]
    struct.pack_into("<Q", short, 512, 1 << 18 | 3)
    d = dec.decode(bytes(short), cpus.load("sapphirerapids").layout)
    assert any("buffer ends" in a for a in d.anomalies)


def test_too_short() -> None:
    with pytest.raises(InputError, match="too short"):
        dec.decode(bytes(100), cpus.load("zen4").layout)


def test_fields_built_on_demand_are_the_image(guest_blob: Any) -> None:
    """A field changed is what encode writes, whichever access built it first; in_bv is
    what XSTATE_BV said at decode time (as when components were built eagerly)."""
    blob = guest_blob("skylake-sp")
    d = dec.decode(blob, cpus.load("skylake-sp").layout)
    d.xstate_bv &= ~(1 << 5)
    opmask = d.component(5)
    assert opmask is not None and opmask.in_bv
    d.field("k1").value = 0x55
    assert d.value("k1") == 0x55 and opmask.registers_hex()["k1"] == f"{0x55:#018x}"
    out = dec.encode(d)
    off = d.field("k1").offset
    assert out[off:off + 8] == (0x55).to_bytes(8, "little")
    assert struct.unpack_from("<Q", out, 512)[0] == d.xstate_bv
    untouched = dec.decode(blob, cpus.load("skylake-sp").layout)
    assert dec.encode(untouched) == blob and untouched.value("k1") == 0xFF
