"""Register-level comparison of xsave buffers."""

import pytest

from kvmfpu.testing import standard_area
from kvmfpu.testing.compare import assert_xsave_equal, diff_xsave


def test_names_registers_not_bytes() -> None:
    a = standard_area("skylake-sp", 0x2FF)
    b = bytearray(a)
    b[160 + 3 * 16 + 2] ^= 1           # xmm3, reported as zmm3 (the widest register)
    b[28] ^= 0x40                      # MXCSR_MASK
    b[416] = 1                         # legacy padding
    b[512] ^= 4                        # XSTATE_BV loses YMM
    lines = diff_xsave(a, b, "skylake-sp")
    assert lines[0].startswith("XSTATE_BV: 0x2ff") and "!= 0x2fb" in lines[0]
    assert any(line.startswith("zmm3: ") for line in lines)
    assert any(line.startswith("mxcsr_mask: ") for line in lines)
    assert "legacy bytes 416-463: 1 byte(s) differ from offset 416" in lines
    assert len(lines) == 4


def test_each_component_is_named_on_its_host() -> None:
    a = standard_area("sapphirerapids", 0x602E7, size=11008)
    b = bytearray(a)
    b[2816 + 1024 * 2 + 5] ^= 0xFF          # tmm2
    b[2752] = 2                             # tilecfg palette
    assert [line.split(":")[0] for line in diff_xsave(a, b, "sapphirerapids")] == ["tilecfg", "tmm2"]
    sse_only = standard_area("nehalem", 0x3)
    other = bytearray(sse_only)
    other[160 + 15 * 16] ^= 1
    assert [line.split(":")[0] for line in diff_xsave(sse_only, other, "nehalem")] == ["xmm15"]


def test_assert_raises_with_the_names() -> None:
    a = standard_area("zen4", 0x2E7)
    assert_xsave_equal(a, bytes(a), "zen4")
    b = bytearray(a)
    b[32] ^= 1
    with pytest.raises(AssertionError, match=r"st0: "):
        assert_xsave_equal(a, b, "zen4")
    with pytest.raises(AssertionError, match=rf"length: {len(a)} != {len(a) + 4}"):
        assert_xsave_equal(a, bytes(b) + bytes(4), "zen4")
