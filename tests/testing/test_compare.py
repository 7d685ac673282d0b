"""Register-level comparison of xsave buffers: the kit's diff is blob.compare's register diff
(one meaning) plus the buffer bytes that are not register state."""

import struct

import pytest

from kvmfpu import cpus
from kvmfpu.arch import legacy
from kvmfpu.blob import decode as dec
from kvmfpu.blob import regdiff
from kvmfpu.blob.compare import register_diff
from kvmfpu.testing import standard_area
from kvmfpu.testing.compare import assert_xsave_equal, diff_xsave


def test_names_registers_and_lanes_not_bytes() -> None:
    a = standard_area("skylake-sp", 0x2FF)
    b = bytearray(a)
    b[legacy.XMM_SPACE + 3 * 16 + 2] ^= 1  # xmm3 byte 2: zmm3 (the widest) lane 0
    b[28] ^= 0x40  # MXCSR_MASK: a capability, not state
    b[416] = 1  # legacy padding
    lines = diff_xsave(a, b, "skylake-sp")
    lane0 = struct.unpack_from("<I", a, legacy.XMM_SPACE + 3 * 16)[0]
    assert lines == [
        f"zmm3 lane 0 (bits 0..31): {lane0:#x} -> {lane0 ^ 0x10000:#x}",
        "MXCSR_MASK: 0x0 -> 0x40 (not register state)",
        "legacy bytes 416-463: 1 byte(s) differ from offset 416 (not register state)",
    ]


def test_data_under_a_clear_xstate_bv_bit_is_no_difference() -> None:
    # SDM vol. 1 §13.8.1: XRSTOR with XSTATE_BV[i] = 0 puts component i in its initial
    # configuration; the bytes in the buffer are not loaded, so they are not state. The kit
    # used to report these bytes while blob.compare.register_diff did not (issue 13).
    host = "skylake-sp"
    a = standard_area(host, 0x2FB)  # YMM (bit 2) in its init state
    b = bytearray(a)
    ymm = cpus.load(host).layout.components[2].offset
    b[ymm : ymm + 256] = bytes(range(256))  # data under the clear bit
    b[legacy.ST_SPACE : legacy.ST_SPACE + 10] = bytes(range(1, 11))  # x87 is in use: counts
    lay = cpus.load(host).layout
    diffs = register_diff(dec.decode(bytes(a), lay), dec.decode(bytes(b), lay))
    assert [d.register for d in diffs] == ["st0"]
    assert diff_xsave(a, b, host) == regdiff.lines(diffs)
    b[legacy.ST_SPACE : legacy.ST_SPACE + 10] = a[legacy.ST_SPACE : legacy.ST_SPACE + 10]
    assert diff_xsave(a, b, host) == []
    assert_xsave_equal(a, b, host)
    # A byte-exact comparison (the real-KVM differential) still sees them, labelled.
    assert diff_xsave(a, b, host, unused=True) == [
        "ymm: 255 byte(s) differ under XSTATE_BV[2], clear in both (not register state: XRSTOR "
        "loads the initial values)"
    ]
    # Setting the bit makes the same bytes state: now every ymm upper half differs.
    struct.pack_into("<Q", b, legacy.XSTATE_BV, 0x2FF)
    assert diff_xsave(a, b, host)[0].startswith("XSTATE_BV: 0x2fb")


def test_each_component_is_named_on_its_host() -> None:
    a = standard_area("sapphirerapids", 0x602E7, size=11008)
    b = bytearray(a)
    lay = cpus.load("sapphirerapids").layout
    tiles, cfg = lay.components[18].offset, lay.components[17].offset
    b[tiles + 1024 * 2 + 64 * 3 + 5] ^= 0xFF  # tmm2 row 3 byte 5
    b[cfg] = 2  # tilecfg palette 1 -> 2
    lines = diff_xsave(a, b, "sapphirerapids")
    assert lines == [
        "tilecfg palette (bits 0..7): 0x1 -> 0x2",
        "tmm2: 1 of 1024 bytes differ (rows of 64 bytes; '#' differs)",
        "  tmm2  row 3: " + "." * 5 + "#" + "." * 58,
    ]
    sse_only = standard_area("nehalem", 0x3)
    other = bytearray(sse_only)
    other[legacy.XMM_SPACE + 15 * 16 + 12] ^= 1
    assert diff_xsave(sse_only, other, "nehalem")[0].startswith("xmm15 lane 3 (bits 96..127)")


def test_x87_registers_read_as_80_bit_values_with_tags() -> None:
    a = standard_area("zen4", 0x2E7)
    struct.pack_into("<HB", a, legacy.FSW, 0, 0)  # TOP 0, every register empty
    b = bytearray(a)
    struct.pack_into("<QH", b, legacy.ST_SPACE, 1 << 63, 0x3FFF)  # 1.0
    b[legacy.FTW] = 0x01  # R0 = ST0 valid
    with pytest.raises(AssertionError) as info:
        assert_xsave_equal(a, b, "zen4")
    text = str(info.value)
    assert "ftw physical register R0 tag (bits 0..0): empty -> non-empty" in text
    assert "st0: " in text and "-> 1 [valid] (raw " in text and "0x3fff8000000000000000)" in text
    with pytest.raises(AssertionError, match=rf"length: {len(a)} != {len(a) + 4}"):
        assert_xsave_equal(a, bytes(b) + bytes(4), "zen4")


def test_huge_differences_are_bounded_and_counted() -> None:
    a = standard_area("skylake-sp", 0x2FF)
    b = bytearray(a)
    for i in range(legacy.XMM_SPACE, legacy.RESERVED):  # every xmm byte
        b[i] ^= 0xFF
    hi16 = cpus.load("skylake-sp").layout.components[7]
    for i in range(hi16.offset, hi16.offset + hi16.size):  # zmm16-31 whole
        b[i] ^= 0xFF
    # 16 x 4 + 16 x 16 lane lines do not fit: one summary line per register instead.
    lines = diff_xsave(a, b, "skylake-sp")
    assert len(lines) == 32
    assert lines[0] == "zmm0: lanes 0-3 differ (of 16)" and lines[16] == "zmm16: lanes 0-15 differ (of 16)"
    # Fewer lines than registers: cut, with the count and the next names.
    lines = diff_xsave(a, b, "skylake-sp", limit=10)
    assert len(lines) == 11 and lines[-1].startswith("... 22 more register(s) differ: zmm10, zmm11")
    # Few registers: each by lane, LANES of them, then how many more.
    c = bytearray(a)
    c[hi16.offset : hi16.offset + 64] = bytes(64)  # zmm16 only
    lines = diff_xsave(a, c, "skylake-sp")
    assert len(lines) == regdiff.LANES + 1 and lines[0].startswith("zmm16 lane 0 (bits 0..31): 0x")
    assert lines[-1] == "zmm16: 8 more part(s) differ (--json lists them all)"
