"""The anomaly rules read bytes, not fields: each x87/SSE register under a clear
XSTATE_BV bit counts, bytes no register names do not."""

from __future__ import annotations

import struct

import pytest

from kvmfpu import cpus
from kvmfpu.arch import legacy
from kvmfpu.blob import decode as dec
from kvmfpu.blob import decode_plan as dp

LAYOUT = cpus.load("skylake-sp").layout


def _init_image() -> bytearray:
    buf = bytearray(4096)
    struct.pack_into("<H", buf, legacy.FCW, legacy.FCW_INIT)
    struct.pack_into("<I", buf, legacy.MXCSR, legacy.MXCSR_INIT)
    return buf


def _x87_flagged(buf: bytearray) -> bool:
    return any(a.startswith("x87 registers hold data") for a in dec.decode(bytes(buf), LAYOUT).anomalies)


@pytest.mark.parametrize("name, off, size", [
    f for f in (*dp.LEGACY_FIELDS, *dp.ST_FIELDS) if f[0] in ("fcw", "fsw", "ftw", "fop", "fip", "fdp")
    or f[0].startswith("st")])
def test_each_x87_register_under_a_clear_bit_is_lost(name: str, off: int, size: int) -> None:
    """XRSTOR loads the x87 init state when XSTATE_BV[0] is clear (SDM vol. 1 13.8.1): FCW
    037Fh, the rest zero; any register holding something else is lost."""
    buf = _init_image()
    assert not _x87_flagged(buf)
    buf[off + size - 1] ^= 0x10
    assert _x87_flagged(buf), name


def test_bytes_no_register_names_do_not_count() -> None:
    """The FTW reserved byte and the six padding bytes of each ST slot hold no register."""
    buf = _init_image()
    buf[legacy.FTW_RESERVED] = 0xFF
    buf[legacy.ST_SPACE + legacy.ST_BYTES] = 0xFF
    assert not _x87_flagged(buf)


def test_xmm_and_component_data_under_clear_bits() -> None:
    """SSE and each extended component: data with the XSTATE_BV bit clear is lost (13.8.1)."""
    buf = _init_image()
    buf[legacy.RESERVED - 1] = 1                      # XMM15's top byte
    opmask = LAYOUT.components[5]
    buf[opmask.offset + opmask.size - 1] = 1          # k7's top byte
    found = dec.decode(bytes(buf), LAYOUT).anomalies
    assert any(a.startswith("XMM registers hold data") for a in found)
    assert any(a.startswith("opmask holds data but XSTATE_BV[5] is clear") for a in found)
