"""kvmfpu.blob.regdiff: register differences shown by lane, byte and field."""

from __future__ import annotations

import struct
from typing import Any

from kvmfpu import cpus
from kvmfpu.arch import legacy
from kvmfpu.blob import decode as dec
from kvmfpu.blob import regdiff
from kvmfpu.blob.compare import Difference, register_diff
from kvmfpu.testing import standard_area


def decoded(data: bytes, host: str) -> dec.Decoded:
    return dec.decode(data, cpus.load(host).layout, host=host)


def test_a_difference_in_the_middle_of_a_zmm_is_shown_by_lane(guest_blob: Any) -> None:
    # The old display elided the middle of long values: two zmm registers differing in
    # lane 5 printed as the same "0x7000...0005" on both sides.
    a = guest_blob("skylake-sp")
    b = bytearray(a)
    hi256 = cpus.load("skylake-sp").layout.components[6].offset
    struct.pack_into("<I", b, legacy.XMM_SPACE + 3 * 16 + 4, 0x3F800000)  # lane 1
    (d,) = register_diff(decoded(a, "skylake-sp"), decoded(bytes(b), "skylake-sp"))
    assert d.register == "zmm3" and d.size == 64
    assert regdiff.describe(d) == [
        "zmm3 lane 1 (bits 32..63): 0x00000000 -> 0x3f800000",
    ]
    c = bytearray(a)
    struct.pack_into("<I", c, legacy.XMM_SPACE + 3 * 16 + 4, 0x3F800000)
    struct.pack_into("<I", c, hi256 + 3 * 32 + 8, 0xAB)  # zmm3 bits 320..351: lane 10
    (d,) = register_diff(decoded(a, "skylake-sp"), decoded(bytes(c), "skylake-sp"))
    lanes = regdiff.describe(d)
    assert lanes[0] == "zmm3 lane 1 (bits 32..63): 0x00000000 -> 0x3f800000"
    assert lanes[1].startswith("zmm3 lane 10 (bits 320..351): 0x") and lanes[1].endswith(" -> 0x000000ab")
    doc = regdiff.to_json(d)
    assert [p["part"] for p in doc["parts"]] == ["lane 1", "lane 10"]
    assert doc["parts"][0] == {"part": "lane 1", "bits": [32, 63], "a": "0x00000000", "b": "0x3f800000"}
    # JSON carries the full values, not elided ones: zmm3 is (7 << 500) | 5 (conftest).
    assert doc["a"] == f"{(7 << 500) | 5:#x}" and int(doc["b"], 16) == (7 << 500) | 5 | (0x3F800000 << 32) | (
        0xAB << 320
    )


def test_a_register_one_layout_lacks_reads_absent(guest_blob: Any) -> None:
    a = guest_blob("skylake-sp")  # zmm20 = 9 << 300 (conftest)
    sky, has = decoded(a, "skylake-sp"), decoded(guest_blob("haswell"), "haswell")
    zmm20 = next(d for d in register_diff(sky, has) if d.register == "zmm20")
    assert zmm20.b == "not in this layout" and zmm20.value_b is None
    assert regdiff.describe(zmm20) == ["zmm20 lane 9 (bits 288..319): 0x00009000 -> absent"]


def test_tiles_by_byte_map_and_tilecfg_by_field() -> None:
    host = "sapphirerapids"
    lay = cpus.load(host).layout
    a = standard_area(host, 0x602E7, size=11008)
    b = bytearray(a)
    tiles, cfg = lay.components[18].offset, lay.components[17].offset
    for i in (0, 1, 63):
        b[tiles + 1024 * 5 + 64 * 15 + i] ^= 1  # tmm5 row 15: bytes 0, 1, 63
    b[cfg + 48 + 2] = 8  # tile 2 rows 16 -> 8
    diffs = register_diff(decoded(bytes(a), host), decoded(bytes(b), host))
    assert [d.register for d in diffs] == ["tilecfg", "tmm5"]
    assert regdiff.describe(diffs[0]) == ["tilecfg tile 2 rows (bits 400..407): 0x10 -> 0x8"]
    assert regdiff.describe(diffs[1]) == [
        "tmm5: 3 of 1024 bytes differ (rows of 64 bytes; '#' differs)",
        "  tmm5 row 15: ##" + "." * 61 + "#",
    ]
    (row,) = regdiff.to_json(diffs[1])["parts"]
    assert row["part"] == "row 15" and row["bits"] == [7680, 8191] and row["map"].count("#") == 3
    assert regdiff.summary(diffs[1]) == "tmm5: 3 of 1024 bytes differ, in rows 15"


def test_flags_and_masks_by_name() -> None:
    a = standard_area("zen4", 0x2E7)
    b = bytearray(a)
    struct.pack_into("<I", b, legacy.MXCSR, 0x1F80 | 0x8000)  # FZ
    pkru = cpus.load("zen4").layout.components[9].offset
    struct.pack_into("<I", b, pkru, struct.unpack_from("<I", a, pkru)[0] ^ 0b11 << 4)
    struct.pack_into("<Q", b, legacy.XSTATE_BV, 0x2E7 & ~0x20 | 0x20)
    diffs = register_diff(decoded(bytes(a), "zen4"), decoded(bytes(b), "zen4"))
    lines = {d.register: regdiff.describe(d)[0] for d in diffs}
    assert lines["mxcsr"] == (
        "mxcsr: 0x1f80 [IM DM ZM OM UM PM RC=nearest] -> 0x9f80 [IM DM ZM OM UM PM FZ RC=nearest]"
    )
    assert lines["pkru"].startswith("pkru: 0x") and "key2:" in lines["pkru"]


def test_the_xstate_bv_line_names_the_components() -> None:
    d = Difference("XSTATE_BV", 0x2E7, 0x2E3, 8, texts=("0x2e7 (..)", "0x2e3 (..)"))
    assert regdiff.describe(d) == ["XSTATE_BV: 0x2e7 (..) -> 0x2e3 (..) (in use in A only: 0x4 (ymm))"]
    assert d == ("XSTATE_BV", "0x2e7 (..)", "0x2e3 (..)")  # still the (register, A, B) tuple


def test_summary_ranges() -> None:
    d = Difference("zmm7", 0, sum(0xFF << (32 * i) for i in (0, 1, 2, 5, 8, 9)), 64)
    assert regdiff.summary(d) == "zmm7: lanes 0-2, 5, 8-9 differ (of 16)"
