"""Convert XSAVE areas between the standard and the compacted format of one host.

The legacy region is shared by both formats; extended components move between their
CPUID standard offsets and their compacted offsets (SDM §13.4.3). Components whose
XSTATE_BV bit is clear carry no data in either format and come out as zero bytes.
Linux does the same re-laying in ``copy_uabi_to_xstate`` / ``__copy_xstate_to_uabi_buf``
(arch/x86/kernel/fpu/xstate.c).
"""

from __future__ import annotations

import struct

from kvmfpu.arch import legacy
from kvmfpu.arch.layout import XsaveLayout
from kvmfpu.arch.xfeatures import XCOMP_COMPACTED, bits, describe_mask

_QQ = struct.Struct("<QQ")


class FormatError(ValueError):
    """The area cannot be converted as asked."""


def _header(area: bytes | bytearray | memoryview) -> tuple[int, int]:
    if len(area) < legacy.EXTENDED:
        raise FormatError(f"{len(area)} bytes is shorter than legacy region + header (576)")
    bv, cb = _QQ.unpack_from(area, legacy.XSTATE_BV)
    return bv, cb


def standard_to_compacted(area: bytes | bytearray | memoryview, layout: XsaveLayout,
                          xcomp_bv: int | None = None) -> bytearray:
    """Re-lay a standard-format area compacted with XCOMP_BV[62:0] = ``xcomp_bv``
    (default: XSTATE_BV), XCOMP_BV[63] = 1."""
    bv, cb = _header(area)
    if cb:
        raise FormatError(f"XCOMP_BV={cb:#x}: not a standard-format area")
    comp = (bv if xcomp_bv is None else xcomp_bv) & ~XCOMP_COMPACTED
    if bv & ~comp:
        raise FormatError(f"XSTATE_BV sets {describe_mask(bv & ~comp)} outside XCOMP_BV")
    offsets, size = layout.compacted(comp)
    out = bytearray(size)
    out[:legacy.HEADER] = area[:legacy.HEADER]
    _QQ.pack_into(out, legacy.XSTATE_BV, bv, comp | XCOMP_COMPACTED)
    out[legacy.HEADER_RESERVED:legacy.EXTENDED] = area[legacy.HEADER_RESERVED:legacy.EXTENDED]
    for b in bits(bv & ~3):
        c = layout.component(b)
        if c.supervisor:
            raise FormatError(f"{describe_mask(1 << b)} is supervisor state: not in a "
                              "standard-format area")
        end = c.offset + c.size
        if end > len(area):
            raise FormatError(f"area of {len(area)} bytes ends before {describe_mask(1 << b)} "
                              f"(needs {end})")
        out[offsets[b]:offsets[b] + c.size] = area[c.offset:end]
    return out


def compacted_to_standard(area: bytes | bytearray | memoryview, layout: XsaveLayout,
                          size: int | None = None) -> bytearray:
    """Re-lay a compacted area in the standard format (XCOMP_BV = 0). ``size`` defaults to
    the standard size of every user component the host supports."""
    bv, cb = _header(area)
    if not cb & XCOMP_COMPACTED:
        raise FormatError(f"XCOMP_BV={cb:#x}: not a compacted area (bit 63 clear)")
    comp = cb & ~XCOMP_COMPACTED
    if bv & ~comp:
        raise FormatError(f"XSTATE_BV sets {describe_mask(bv & ~comp)} outside XCOMP_BV")
    supervisor = bv & layout.supervisor_mask & ~layout.user_mask
    if supervisor:
        raise FormatError(f"XSTATE_BV has supervisor state {describe_mask(supervisor)}: "
                          "the standard format cannot hold it")
    offsets, csize = layout.compacted(comp)
    if csize > len(area):
        raise FormatError(f"compacted area of {len(area)} bytes, XCOMP_BV needs {csize}")
    total = layout.standard_size(layout.user_mask) if size is None else size
    out = bytearray(total)
    out[:legacy.HEADER] = area[:legacy.HEADER]
    _QQ.pack_into(out, legacy.XSTATE_BV, bv, 0)
    out[legacy.HEADER_RESERVED:legacy.EXTENDED] = area[legacy.HEADER_RESERVED:legacy.EXTENDED]
    for b in bits(bv & ~3):
        c = layout.component(b)
        if c.offset + c.size > total:
            raise FormatError(f"{describe_mask(1 << b)} does not fit in {total} bytes")
        out[c.offset:c.offset + c.size] = area[offsets[b]:offsets[b] + c.size]
    return out
