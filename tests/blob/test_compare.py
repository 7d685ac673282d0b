"""kvmfpu.blob.compare: differences by register, across layouts."""

from __future__ import annotations

import struct
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from kvmfpu import cpus
from kvmfpu.arch import legacy
from kvmfpu.blob import decode as dec
from kvmfpu.blob.compare import register_diff, registers
from kvmfpu.blob.convert import convert
from kvmfpu.testing import strategies as ks


def decoded(data: bytes, host: str) -> dec.Decoded:
    return dec.decode(data, cpus.load(host).layout, host=host)


def test_one_register_changed(guest_blob: Any) -> None:
    a = guest_blob("skylake-sp")
    b = bytearray(a)
    k1 = cpus.load("skylake-sp").layout.components[5].offset + 8
    b[k1] ^= 0x01
    assert register_diff(decoded(a, "skylake-sp"), decoded(bytes(b), "skylake-sp")) == [
        ("k1", "0xff", "0xfe")]
    assert register_diff(decoded(a, "skylake-sp"), decoded(a, "skylake-sp")) == []


def test_vectors_are_whole_registers(guest_blob: Any) -> None:
    a = guest_blob("skylake-sp")
    b = bytearray(a)
    b[legacy.XMM_SPACE + 3 * 16] ^= 0xFF            # low byte of xmm3 = zmm3
    (diff,) = register_diff(decoded(a, "skylake-sp"), decoded(bytes(b), "skylake-sp"))
    assert diff[0] == "zmm3" and int(diff[1], 16) == (7 << 500) | 5
    assert registers(decoded(a, "haswell"))["ymm3"] == (5, 32)


def test_clear_bv_bit_means_initial_state(guest_blob: Any) -> None:
    a = guest_blob("skylake-sp")
    b = bytearray(a)
    bv = struct.unpack_from("<Q", b, legacy.XSTATE_BV)[0]
    struct.pack_into("<Q", b, legacy.XSTATE_BV, bv & ~(1 << 5 | 1))      # opmask, x87 -> init
    diffs = {n: (va, vb) for n, va, vb in register_diff(decoded(a, "skylake-sp"),
                                                         decoded(bytes(b), "skylake-sp"))}
    assert diffs["k1"] == ("0xff", "0x0") and diffs["fcw"] == ("0x27f", "0x37f")
    assert "XSTATE_BV" in diffs and "mxcsr" not in diffs       # MXCSR loads regardless


@settings(max_examples=150, deadline=None)
@given(st.sampled_from([("zen4", "skylake-sp"), ("skylake-sp", "sapphirerapids"),
                        ("devhost-zen5", "icelake-sp"), ("haswell", "zen2")]), st.data())
def test_converted_buffers_hold_the_same_registers(pair: tuple[str, str], data: st.DataObject) -> None:
    src, dst = pair
    features = cpus.load(src).supported_xcr0 & cpus.load(dst).supported_xcr0
    buf = bytes(data.draw(ks.valid_xsave(src, features=features)))
    moved, _ = convert(buf, src, dst)
    assert register_diff(decoded(buf, src), decoded(moved, dst)) == []
    # ... whereas the raw bytes read at the other host's offsets differ whenever a moved
    # component holds data.
    a, b = cpus.load(src).layout.components, cpus.load(dst).layout.components
    bv = struct.unpack_from("<Q", buf, legacy.XSTATE_BV)[0]
    moved_with_data = [bit for bit in a if bit in b and a[bit].offset != b[bit].offset
                       and bv >> bit & 1 and any(buf[a[bit].offset:a[bit].offset + a[bit].size])]
    raw = register_diff(decoded(buf, src), decoded(buf, dst))
    if moved_with_data:
        assert raw
