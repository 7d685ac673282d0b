"""Where the emulated core keeps register contents, and the names that reach them.

The register file is one bytearray in the host's standard XSAVE layout (legacy region
in its 64-bit form, user components at their CPUID offsets) with supervisor components
appended after it. Saving or restoring in the standard format is then a few slice copies.
It is always canonical: what XSAVE would write (FOP in 11 bits, zero padding, ...).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from kvmfpu.arch import legacy
from kvmfpu.arch.layout import XsaveLayout
from kvmfpu.arch.xfeatures import XFeature, bits

Range = tuple[int, int]


class RegFileLayout:
    """Offsets of every component in the register file of one host."""

    def __init__(self, layout: XsaveLayout):
        self.layout = layout
        ranges: dict[int, tuple[Range, ...]] = {
            0: legacy.X87_RANGES,
            1: (legacy.SSE_XMM_RANGE,),
        }
        end = legacy.EXTENDED
        for b, c in layout.components.items():
            if not c.supervisor:
                ranges[b] = ((c.offset, c.offset + c.size),)
                end = max(end, c.offset + c.size)
        for b, c in sorted(layout.components.items()):
            if c.supervisor:
                end = (end + 63) & ~63
                ranges[b] = ((end, end + c.size),)
                end += c.size
        self.ranges: Final = ranges
        self.size: Final = end
        #: Start of each component in the register file (legacy ones: 0).
        self.start: Final = {b: r[0][0] if b > 1 else 0 for b, r in ranges.items()}

    def component_ranges(self, mask: int) -> list[Range]:
        out: list[Range] = []
        for b in bits(mask):
            out.extend(self.ranges[b])
        return merge(out)

    def init_image(self, mxcsr_mask: int) -> bytearray:
        """Every component in its initial configuration (SDM §13.6), MXCSR = 1F80h."""
        img = bytearray(self.size)
        img[legacy.FCW:legacy.FCW + 2] = legacy.FCW_INIT.to_bytes(2, "little")
        img[legacy.MXCSR:legacy.MXCSR + 4] = legacy.MXCSR_INIT.to_bytes(4, "little")
        img[legacy.MXCSR_MASK:legacy.MXCSR_MASK + 4] = mxcsr_mask.to_bytes(4, "little")
        return img


def merge(ranges: Iterable[Range]) -> list[Range]:
    """Sort and coalesce adjacent or overlapping half-open ranges."""
    out: list[Range] = []
    for a, b in sorted(ranges):
        if out and a <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out


def merge_pairs(copies: Iterable[tuple[int, int, int]]) -> list[tuple[int, int, int]]:
    """Coalesce (src, dst, length) copies that continue each other on both sides."""
    out: list[tuple[int, int, int]] = []
    for s, d, n in sorted(copies, key=lambda t: t[1]):
        if out:
            ps, pd, pn = out[-1]
            if ps + pn == s and pd + pn == d:
                out[-1] = (ps, pd, pn + n)
                continue
        out.append((s, d, n))
    return out


# -- named registers -------------------------------------------------------------------------

@dataclass(frozen=True)
class Piece:
    """``size`` bytes at ``offset`` within component ``bit``."""

    bit: int
    offset: int
    size: int


@dataclass(frozen=True)
class Register:
    name: str
    pieces: tuple[Piece, ...]   # lowest-order bytes first
    writable: bool = True

    @property
    def size(self) -> int:
        return sum(p.size for p in self.pieces)

    @property
    def mask(self) -> int:
        m = 0
        for p in self.pieces:
            m |= 1 << p.bit
        return m


def _build_registers() -> dict[str, Register]:
    X87, SSE = XFeature.X87, XFeature.SSE
    regs: dict[str, Register] = {}

    def add(name: str, *pieces: tuple[int, int, int], writable: bool = True) -> None:
        regs[name] = Register(name, tuple(Piece(*p) for p in pieces), writable)

    add("fcw", (X87, legacy.FCW, 2))
    add("fsw", (X87, legacy.FSW, 2))
    add("ftw", (X87, legacy.FTW, 1))   # abridged: bit i = physical register Ri valid
    add("fop", (X87, legacy.FOP, 2))
    add("fip", (X87, legacy.FIP, 8))
    add("fdp", (X87, legacy.FDP, 8))
    for i in range(8):
        add(f"st{i}", (X87, legacy.ST_SPACE + 16 * i, 10))
        add(f"mm{i}", (X87, legacy.ST_SPACE + 16 * i, 8))
    add("mxcsr", (SSE, legacy.MXCSR, 4))
    add("mxcsr_mask", (SSE, legacy.MXCSR_MASK, 4), writable=False)
    for i in range(16):
        xmm = (SSE, legacy.XMM_SPACE + 16 * i, 16)
        ymmh = (XFeature.YMM, 16 * i, 16)
        zmmh = (XFeature.ZMM_HI256, 32 * i, 32)
        add(f"xmm{i}", xmm)
        add(f"ymm{i}", xmm, ymmh)
        add(f"zmm{i}", xmm, ymmh, zmmh)
    for i in range(16, 32):
        base = 64 * (i - 16)
        add(f"xmm{i}", (XFeature.HI16_ZMM, base, 16))
        add(f"ymm{i}", (XFeature.HI16_ZMM, base, 32))
        add(f"zmm{i}", (XFeature.HI16_ZMM, base, 64))
    for i in range(8):
        add(f"k{i}", (XFeature.OPMASK, 8 * i, 8))
    for i in range(4):
        add(f"bnd{i}", (XFeature.BNDREGS, 16 * i, 16))   # lower bound, then upper bound
    add("bndcfgu", (XFeature.BNDCSR, 0, 8))
    add("bndstatus", (XFeature.BNDCSR, 8, 8))
    add("pkru", (XFeature.PKRU, 0, 4))
    add("pasid", (XFeature.PASID, 0, 8))
    add("u_cet", (XFeature.CET_U, 0, 8))
    add("pl3_ssp", (XFeature.CET_U, 8, 8))
    for i in range(3):
        add(f"pl{i}_ssp", (XFeature.CET_S, 8 * i, 8))
    add("tilecfg", (XFeature.XTILECFG, 0, 64))
    for i in range(8):
        add(f"tmm{i}", (XFeature.XTILEDATA, 1024 * i, 1024))
    for i in range(16, 32):
        add(f"r{i}", (XFeature.APX, 8 * (i - 16), 8))
    return regs


REGISTERS: Final = _build_registers()


def area_register(area: bytes | bytearray | memoryview, layout: XsaveLayout, name: str) -> int:
    """A register's value in a standard-format XSAVE area (a KVM_GET_XSAVE buffer) as
    XRSTOR would load it: a component whose XSTATE_BV bit is clear reads as its initial
    configuration (SDM §13.8.1), except MXCSR, which XRSTOR takes from memory."""
    reg = REGISTERS[name.lower()]
    bv = int.from_bytes(area[legacy.XSTATE_BV:legacy.XSTATE_BV + 8], "little")
    out = bytearray()
    for p in reg.pieces:
        if not bv >> p.bit & 1 and reg.name != "mxcsr":
            init = legacy.FCW_INIT if reg.name == "fcw" else 0
            out += init.to_bytes(p.size, "little")
            continue
        base = 0 if p.bit <= XFeature.SSE else layout.components[p.bit].offset
        out += area[base + p.offset:base + p.offset + p.size]
    return int.from_bytes(out, "little")
