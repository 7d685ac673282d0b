"""Build XSAVE areas and ready-to-use Cpus for tests."""

from __future__ import annotations

import os
import struct

from kvmfpu import cpus
from kvmfpu.arch import legacy
from kvmfpu.arch.xfeatures import XCOMP_COMPACTED, bits
from kvmfpu.core import Cpu
from kvmfpu.cpus.model import HostModel

HostLike = HostModel | str | os.PathLike[str]


def pattern(bit: int, size: int, seed: int = 0) -> bytes:
    """Recognisable non-zero bytes for component ``bit``."""
    return bytes(((i * 37 + bit * 11 + seed * 101) % 255) + 1 for i in range(size))


def component_data(bit: int, size: int, seed: int = 0) -> bytes:
    """Patterned contents that XRSTOR(S) accepts and XSAVE writes back unchanged: PKRU's
    padding is zero, CET values are valid, TILECFG is a valid palette-1 configuration."""
    if bit == 9:      # PKRU, 4 bytes of padding
        return pattern(bit, 4, seed) + bytes(size - 4)
    if bit == 11:     # CET_U: IA32_U_CET = SH_STK_EN, IA32_PL3_SSP canonical and aligned
        return struct.pack("<QQ", 1, 0x7FFF_F000_0000 - 8 * (seed + 1)).ljust(size, b"\0")
    if bit == 12:     # CET_S: three aligned canonical SSPs
        return struct.pack("<QQQ", *(0xFFFF_8000_0000_0000 + 0x1000 * (i + 1) + 8 * seed
                                     for i in range(3))).ljust(size, b"\0")
    if bit == 17:     # XTILECFG: palette 1, tiles 0-7 of 16 rows x 64 bytes
        cfg = bytearray(64)
        cfg[0] = 1
        for n in range(8):
            struct.pack_into("<H", cfg, 16 + 2 * n, 64)
            cfg[48 + n] = 16
        return bytes(cfg).ljust(size, b"\0")
    return pattern(bit, size, seed)


def booted(host: HostLike, memory: bytearray | None = None, *, xcr0: int | None = None,
           xss: int = 0, cpl: int = 0) -> Cpu:
    """A Cpu with CR4.OSXSAVE=1, XCR0 = ``xcr0`` (default: every supported user bit) and
    IA32_XSS = ``xss``, then running at ``cpl``."""
    model = cpus.load(host)
    cpu = Cpu(model, memory if memory is not None else bytearray(1 << 16))
    if model.has("xsave"):
        cpu.cr4_osxsave = True
        cpu.xsetbv(0, model.supported_xcr0 if xcr0 is None else xcr0)
        if xss:
            cpu.wrmsr(0xDA0, xss)
    cpu.cpl = cpl
    return cpu


def _legacy(area: bytearray, bv: int, mxcsr: int, seed: int) -> None:
    struct.pack_into("<H", area, legacy.FCW, legacy.FCW_INIT)
    struct.pack_into("<I", area, legacy.MXCSR, mxcsr)
    if bv & 1:
        area[legacy.ST_SPACE:legacy.XMM_SPACE] = bytes(
            b if (i % 16) < 10 else 0 for i, b in enumerate(pattern(0, 128, seed)))
    if bv & 2:
        area[legacy.XMM_SPACE:legacy.RESERVED] = pattern(1, 256, seed)


def standard_area(host: HostLike, bv: int, *, mxcsr: int = legacy.MXCSR_INIT,
                  seed: int = 0, size: int | None = None) -> bytearray:
    """A standard-format area with XSTATE_BV = ``bv`` and patterned data in each component
    of ``bv`` (zero elsewhere)."""
    model = cpus.load(host)
    lay = model.layout
    total = size or max(lay.standard_size(model.supported_xcr0), legacy.EXTENDED)
    area = bytearray(total)
    _legacy(area, bv, mxcsr, seed)
    struct.pack_into("<Q", area, legacy.XSTATE_BV, bv)
    for b in bits(bv & ~3):
        c = lay.components.get(b)
        if c is not None and not c.supervisor:
            area[c.offset:c.offset + c.size] = component_data(b, c.size, seed)
    return area


def compacted_area(host: HostLike, bv: int, xcomp_bv: int, *, mxcsr: int = legacy.MXCSR_INIT,
                   seed: int = 0) -> bytearray:
    """A compacted area: XCOMP_BV = ``xcomp_bv`` | 1<<63, patterned components of ``bv``."""
    model = cpus.load(host)
    offsets, size = model.layout.compacted(xcomp_bv)
    area = bytearray(size)
    _legacy(area, bv, mxcsr, seed)
    struct.pack_into("<QQ", area, legacy.XSTATE_BV, bv, xcomp_bv | XCOMP_COMPACTED)
    for b in bits(bv & ~3):
        if b in offsets:
            n = model.layout.components[b].size
            area[offsets[b]:offsets[b] + n] = component_data(b, n, seed)
    return area
