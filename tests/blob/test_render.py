"""kvmfpu.blob.render: what the table and the kvmfpu-decode/1 document show of each
component."""

from __future__ import annotations

import struct
from typing import Any

from kvmfpu import cpus
from kvmfpu.arch import legacy
from kvmfpu.blob import decode as dec
from kvmfpu.blob import describe, infer, render
from kvmfpu.testing import compacted_area
from kvmfpu.testing.areas import component_data


def show(d: dec.Decoded) -> str:
    return "\n".join(render.text(d, origin="t", host="h", how="test"))


def test_x87_stack_with_tags_and_top() -> None:
    buf = bytearray(4096)
    struct.pack_into("<HHB", buf, 0, 0x037F, 5 << 11, 0b0110_0000)   # TOP=5; R5, R6 valid
    struct.pack_into("<QH", buf, legacy.ST_SPACE, 1 << 63, 0x3FFF)    # ST0 = 1.0 (R5)
    struct.pack_into("<QH", buf, legacy.ST_SPACE + 16, 0, 0)          # ST1 = +0 (R6)
    struct.pack_into("<QH", buf, legacy.ST_SPACE + 32, 3 << 62, 0xC000)  # ST2 = -3 (R7, empty)
    struct.pack_into("<Q", buf, legacy.XSTATE_BV, 1)
    d = dec.decode(bytes(buf), cpus.load("haswell").layout)
    rows = {r: (v, tag) for r, v, tag, _ in describe.st_rows(d)}
    assert rows["st0"] == ("1", "valid") and rows["st1"] == ("0", "zero")
    assert rows["st2"] == ("-3", "empty")
    text = show(d)
    assert "FSW 0x2800 [- TOP=5]" in text and "st2                         -3 empty" in text
    assert "st3" not in text                    # empty and zero: left out unless --all


def test_amx_tiles_pkru_and_bounds(guest_blob: Any) -> None:
    spr = cpus.load("sapphirerapids").layout
    buf = bytearray(guest_blob("sapphirerapids"))
    for b in (17, 18):
        c = spr.components[b]
        buf[c.offset:c.offset + c.size] = component_data(b, c.size)
    bv = struct.unpack_from("<Q", buf, legacy.XSTATE_BV)[0]
    struct.pack_into("<Q", buf, legacy.XSTATE_BV, bv | 3 << 17)
    d = dec.decode(bytes(buf), spr)
    text = show(d)
    assert "xtilecfg @0xac0+0x40: in use" in text and "palette 1, start_row 0" in text
    assert "tmm0: 16 rows x 64 bytes configured, 1024 non-zero bytes" in text
    assert "pkru         0000000c  [key1:AD,WD]" in text
    doc = render.to_json(d, origin="t", fmt="raw", host="h", how="x")
    tiles = next(c for c in doc["components"] if c["name"] == "xtiledata")
    assert tiles["text"]["tmm7"].startswith("16 rows x 64 bytes") and tiles["in_use"]
    sky = bytearray(guest_blob("skylake-sp"))
    d = dec.decode(bytes(sky), cpus.load("skylake-sp").layout)
    assert "bnd0 bounds [0x3, 0xfffffffffffffffa] (upper stored inverted)" in show(d)


def test_init_components_are_shown_as_such(guest_blob: Any) -> None:
    d = dec.decode(guest_blob("haswell"), cpus.load("skylake-sp").layout)
    text = show(d)
    assert "opmask @0x440+0x40: init" in text and "pkru @0xa80+0x8: init" in text
    doc = render.to_json(d, origin="t", fmt="raw", host="h", how="x")
    assert [c["in_use"] for c in doc["components"] if c["name"] == "opmask"] == [False]


def test_cet_in_a_supervisor_compacted_image() -> None:
    area = compacted_area("sapphirerapids", 0x1803, 0x1803)    # x87, SSE, CET_U, CET_S
    d = dec.decode(bytes(area), cpus.load("sapphirerapids").layout)
    names = {f.name for c in d.components for f in c.fields}
    assert {"u_cet", "pl3_ssp", "pl0_ssp", "pl1_ssp", "pl2_ssp"} <= names
    assert "cet_u @0x240+0x10: in use" in show(d) and dec.encode(d) == bytes(area)


def test_apx_from_a_layout_note() -> None:
    """APX (R16-R31) takes MPX's old place at 0x3c0 (128 bytes); no packaged host has it,
    so the layout comes from an NT_X86_XSAVE_LAYOUT note."""
    lay = infer.from_note({2: (256, 0x240, 0), 19: (128, 0x3C0, 0)}, 0x80007)
    buf = bytearray(4096)
    struct.pack_into("<Q", buf, legacy.XSTATE_BV, 1 << 19 | 3)
    struct.pack_into("<QQ", buf, 0x3C0, 0x1616, 0x1717)
    d = dec.decode(bytes(buf), lay)
    assert d.field("r16").value == 0x1616 and d.field("r17").value == 0x1717
    assert "apx @0x3c0+0x80: in use" in show(d)
