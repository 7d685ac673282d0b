"""kvmfpu.blob.convert: re-laying standard-format buffers, and what it refuses."""

from __future__ import annotations

import struct
from typing import Any

import pytest

from kvmfpu import cpus
from kvmfpu.arch import legacy
from kvmfpu.blob.convert import ConversionError, convert
from kvmfpu.blob.errors import InputError


def test_zen_to_intel_and_back(guest_blob: Any) -> None:
    zen = guest_blob("zen4")
    intel, notes = convert(zen, "zen4", "skylake-sp")
    sky = cpus.load("skylake-sp").layout.components
    zl = cpus.load("zen4").layout.components
    for bit in (5, 6, 7, 9):
        assert intel[sky[bit].offset:sky[bit].offset + sky[bit].size] == \
            zen[zl[bit].offset:zl[bit].offset + zl[bit].size]
    assert any("opmask moved 0x340 -> 0x440" in n for n in notes)
    assert intel[:legacy.EXTENDED] == zen[:legacy.EXTENDED]
    back, _ = convert(intel, "skylake-sp", "zen4")
    assert back == zen


def test_same_layout_is_identity(guest_blob: Any) -> None:
    blob = guest_blob("skylake-sp")
    assert convert(blob, "skylake-sp", "cascadelake") == (blob, [])


def test_user_xfeatures_word_narrowed_to_the_target(guest_blob: Any) -> None:
    blob = bytearray(guest_blob("skylake-sp"))
    struct.pack_into("<Q", blob, legacy.XSTATE_BV, 0x7)        # only what haswell holds
    out, notes = convert(bytes(blob), "skylake-sp", "haswell")
    assert struct.unpack_from("<Q", out, 464)[0] == 0x7 and any("narrowed" in n for n in notes)


@pytest.mark.parametrize("mutate, src, dst, message", [
    (None, "skylake-sp", "haswell", r"haswell cannot hold 0x2e8 \(bndregs|opmask"),
    (lambda b: struct.pack_into("<Q", b, legacy.XCOMP_BV, 1 << 63 | 0x7), "skylake-sp", "zen4",
     "compacted"),
    (lambda b: struct.pack_into("<Q", b, legacy.XSTATE_BV, 1 << 17 | 3), "skylake-sp",
     "sapphirerapids", "which skylake-sp does not have"),
    (None, "nehalem", "skylake-sp", "no XSAVE"),
])
def test_refusals(guest_blob: Any, mutate: Any, src: str, dst: str, message: str) -> None:
    blob = bytearray(guest_blob("skylake-sp"))
    if mutate:
        mutate(blob)
    with pytest.raises(ConversionError, match=message):
        convert(bytes(blob), src, dst)


def test_truncated_buffers(guest_blob: Any) -> None:
    with pytest.raises(InputError, match="too short"):
        convert(bytes(100), "zen4", "skylake-sp")
    blob = guest_blob("zen4")
    with pytest.raises(ConversionError, match="ends before"):
        convert(blob[:0x600], "zen4", "skylake-sp")
