"""kvmfpu.arch.tilecfg: one TILECFG validity rule for the emulated XRSTOR and the decoder.

Expected outcomes follow the SDM vol. 2 LDTILECFG Operation pseudocode: palette_id above
max_palette (1) is an error; palette_id 0 is INIT and reads nothing else; palette 1 checks
reserved bytes 2-15, 32-47 and 56-63, bytes per row <= 64, rows <= 16, and rows/bytes per
row both zero or both set. Issue 13: the decoder used to flag palette 0 with a reserved
byte set (which XRSTOR accepts) and pass palette 1 with bytes 32-63 set or tiles over the
limits (which XRSTOR faults on).
"""

from __future__ import annotations

import pytest

from kvmfpu import cpus
from kvmfpu.arch import tilecfg
from kvmfpu.arch import xfeatures as xf
from kvmfpu.blob import decode as dec
from kvmfpu.core.faults import GeneralProtection
from kvmfpu.testing import booted, standard_area

HOST = "sapphirerapids"


def cfg(palette: int, tiles: dict[int, tuple[int, int]] | None = None, **poke: int) -> bytes:
    """A TILECFG: palette, {tile: (rows, bytes per row)}, and raw bytes byte_N=value."""
    out = bytearray(64)
    out[0] = palette
    for n, (rows, colsb) in (tiles or {}).items():
        out[48 + n] = rows
        out[16 + 2 * n : 18 + 2 * n] = colsb.to_bytes(2, "little")
    for key, value in poke.items():
        out[int(key.removeprefix("byte_"))] = value
    return bytes(out)


CASES = [
    ("init", cfg(0), None),
    ("init_with_reserved_byte", cfg(0, byte_5=1), None),  # INIT: the rest is not read
    ("init_with_tiles", cfg(0, {0: (16, 64)}), None),
    ("palette1", cfg(1, {0: (16, 64), 7: (1, 4)}), None),
    ("palette1_start_row", cfg(1, {0: (16, 64)}, byte_1=3), None),  # start_row unchecked
    ("palette2", cfg(2), "palette 2 is not supported"),
    ("reserved_2_15", cfg(1, {0: (16, 64)}, byte_15=1), "reserved bytes 2-15"),
    ("reserved_32_47", cfg(1, {0: (16, 64)}, byte_40=1), "reserved bytes 32-47"),
    ("reserved_56_63", cfg(1, {0: (16, 64)}, byte_63=1), "reserved bytes 56-63"),
    ("colsb_65", cfg(1, {2: (16, 65)}), "tile 2: 65 bytes per row"),
    ("rows_17", cfg(1, {3: (17, 64)}), "tile 3: 17 rows"),
    ("rows_without_colsb", cfg(1, {4: (8, 0)}), "tile 4: rows=8"),
    ("colsb_without_rows", cfg(1, {5: (0, 8)}), "tile 5: rows=0"),
]


@pytest.mark.parametrize("data, why", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_rule(data: bytes, why: str | None) -> None:
    got = tilecfg.problem(data)
    assert got is None if why is None else (got is not None and why in got)


def _xrstor_faults(data: bytes) -> bool:
    cpu = booted(HOST)
    area = standard_area(cpu.host, 3 | xf.XTILECFG)
    off = cpu.host.layout.standard_offset(17)
    area[off : off + 64] = data
    cpu.memory[0x1000 : 0x1000 + len(area)] = area
    try:
        cpu.xrstor(0x1000, (1 << 64) - 1)
    except GeneralProtection:
        return True
    return False


def _decoder_flags(data: bytes) -> bool:
    area = standard_area(HOST, 3 | xf.XTILECFG)
    layout = cpus.load(HOST).layout
    off = layout.standard_offset(17)
    area[off : off + 64] = data
    d = dec.decode(bytes(area), layout, host=HOST)
    return any(a.startswith("TILECFG is not a valid tile configuration") for a in d.anomalies)


@pytest.mark.parametrize("data, why", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_core_and_decoder_agree(data: bytes, why: str | None) -> None:
    assert _xrstor_faults(data) is (why is not None)
    assert _decoder_flags(data) is (why is not None)
