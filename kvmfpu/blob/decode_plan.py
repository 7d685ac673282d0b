"""Where every named field of one image shape sits: the decode plan.

A plan is computed once per (layout, length, compacted placement) and cached on the layout
(weakly): the fixed fields of the legacy region and header, each component's registers at
their absolute offsets, the byte runs no field covers, the components a short buffer cuts
off, and the slices of the image's reversed hex string that spell each field. Decoding is
then slicing, and nothing is built per field unless a caller asks for it.

The registers of each component are data (``COMPONENT_REGISTERS``, one ``RegisterRow`` per
name pattern), so that the one component table issue 13 asks for (kvmfpu/arch/components.py)
can feed this module in its place.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Final

from kvmfpu.arch import legacy
from kvmfpu.arch.layout import XsaveLayout
from kvmfpu.arch.xfeatures import XCOMP_COMPACTED, XFeature, bits

FieldSpec = tuple[str, int, int]  # name, offset in the image, size in bytes
HexSpan = tuple[str, int, int]  # name, start and end in the image's reversed hex string


@dataclass(frozen=True, slots=True)
class RegisterRow:
    """Registers of one name pattern inside a component: ``count`` of them (None: as many
    as the component's size holds), ``width`` bytes each, the first ``offset`` bytes into
    the component and each next ``stride`` bytes on, numbered from ``first``."""

    pattern: str
    offset: int
    width: int
    count: int | None = 1
    stride: int = 0
    first: int = 0


# The registers of each component, offsets within the component (SDM vol. 1 §13.5; Linux
# struct ymmh_struct, mpx_bndreg_state, avx_512_opmask_state, avx_512_zmm_uppers_state,
# avx_512_hi16_state, pkru_state, xtile_cfg/xtile_data, apx_state, cet_user_state,
# cet_supervisor_state, ia32_pasid_state in arch/x86/include/asm/fpu/types.h).
COMPONENT_REGISTERS: Final[dict[int, tuple[RegisterRow, ...]]] = {
    XFeature.YMM: (RegisterRow("ymm{}_hi", 0, 16, 16, 16),),
    XFeature.BNDREGS: (RegisterRow("bnd{}_lower", 0, 8, 4, 16), RegisterRow("bnd{}_upper", 8, 8, 4, 16)),
    XFeature.BNDCSR: (RegisterRow("bndcfgu", 0, 8), RegisterRow("bndstatus", 8, 8)),
    XFeature.OPMASK: (RegisterRow("k{}", 0, 8, 8, 8),),
    XFeature.ZMM_HI256: (RegisterRow("zmm{}_hi256", 0, 32, 16, 32),),
    XFeature.HI16_ZMM: (RegisterRow("zmm{}", 0, 64, 16, 64, 16),),
    XFeature.PKRU: (RegisterRow("pkru", 0, 4),),
    XFeature.XTILECFG: (RegisterRow("tilecfg", 0, 64),),
    XFeature.XTILEDATA: (RegisterRow("tmm{}", 0, 1024, None, 1024),),
    XFeature.APX: (RegisterRow("r{}", 0, 8, 16, 8, 16),),
    XFeature.CET_U: (RegisterRow("u_cet", 0, 8), RegisterRow("pl3_ssp", 8, 8)),
    XFeature.CET_S: (
        RegisterRow("pl0_ssp", 0, 8),
        RegisterRow("pl1_ssp", 8, 8),
        RegisterRow("pl2_ssp", 16, 8),
    ),
    XFeature.PASID: (RegisterRow("pasid", 0, 8),),
}

# Legacy region fields (64-bit form, SDM vol. 1 table 10-2): name, offset, size.
LEGACY_FIELDS: Final[tuple[FieldSpec, ...]] = (
    ("fcw", legacy.FCW, 2),
    ("fsw", legacy.FSW, 2),
    ("ftw", legacy.FTW, 1),
    ("ftw_reserved", legacy.FTW_RESERVED, 1),
    ("fop", legacy.FOP, 2),
    ("fip", legacy.FIP, 8),
    ("fdp", legacy.FDP, 8),
    ("mxcsr", legacy.MXCSR, 4),
    ("mxcsr_mask", legacy.MXCSR_MASK, 4),
    ("legacy_reserved", legacy.RESERVED, 48),
    ("sw_reserved", legacy.SW_RESERVED, 48),
)
ST_FIELDS: Final[tuple[FieldSpec, ...]] = tuple(
    (f"st{i}", legacy.ST_SPACE + legacy.ST_SLOT * i, legacy.ST_BYTES) for i in range(8)
)
XMM_FIELDS: Final[tuple[FieldSpec, ...]] = tuple(
    (f"xmm{i}", legacy.XMM_SPACE + 16 * i, 16) for i in range(legacy.XMM_COUNT)
)
HEADER_RESERVED_FIELD: Final[FieldSpec] = ("header_reserved", legacy.HEADER_RESERVED, 48)
#: The fields of ``Decoded.legacy``, in order: the legacy region's, then the header's.
LEGACY_GROUP: Final = (*LEGACY_FIELDS, HEADER_RESERVED_FIELD)

# Groups of Decoded's fields, as plan.index names them (components are 0, 1, ...).
LEGACY: Final = -1
ST: Final = -2
XMM: Final = -3


def _bytes_mask(specs: tuple[FieldSpec, ...]) -> int:
    """An integer with the bytes of ``specs`` set, for testing many fields in one AND."""
    mask = 0
    for _, off, size in specs:
        mask |= ((1 << 8 * size) - 1) << 8 * off
    return mask


_X87_NAMES: Final = ("fcw", "fsw", "ftw", "fop", "fip", "fdp")
#: The x87 registers XRSTOR replaces with their initial state when XSTATE_BV[0] is clear:
#: bytes 0 to X87_END of the image ANDed with X87_MASK equal FCW_INIT exactly when they
#: hold that state (FCW 037Fh, everything else zero).
X87_END: Final = legacy.XMM_SPACE
X87_MASK: Final = _bytes_mask((*(f for f in LEGACY_FIELDS if f[0] in _X87_NAMES), *ST_FIELDS))


def component_fields(bit: int, size: int) -> tuple[FieldSpec, ...]:
    """The registers of component ``bit`` that fit in ``size`` bytes, offsets within the
    component, by offset."""
    out = []
    for row in COMPONENT_REGISTERS.get(bit, ()):
        count = row.count if row.count is not None else size // row.width
        for i in range(count):
            rel = row.offset + row.stride * i
            if rel + row.width <= size:
                out.append((row.pattern.format(row.first + i), rel, row.width))
    return tuple(sorted(out, key=lambda f: f[1]))


@dataclass(frozen=True, slots=True)
class ComponentPlan:
    bit: int
    offset: int
    size: int
    fields: tuple[FieldSpec, ...]  # absolute offsets
    hex_spans: tuple[HexSpan, ...]
    covered: tuple[tuple[int, int], ...]  # the byte runs its fields cover, merged


@dataclass(frozen=True, slots=True)
class DecodePlan:
    """Everything about an image that follows from its layout, length and placement."""

    length: int
    components: tuple[ComponentPlan, ...]
    cut: tuple[tuple[int, int, int], ...]  # (bit, offset, size) of components past the end
    gaps: tuple[tuple[int, int], ...]  # [start, end) runs no field covers
    index: dict[str, tuple[int, int]]  # field name -> (group, position in it)
    legacy_hex: tuple[HexSpan, ...]
    st_hex: tuple[HexSpan, ...]
    xmm_hex: tuple[HexSpan, ...]


def hex_spans(specs: tuple[FieldSpec, ...], n: int) -> tuple[HexSpan, ...]:
    """Where each field's little-endian value sits, most significant digit first, in the
    hex string of an ``n``-byte image reversed (``data[::-1].hex()``)."""
    return tuple((name, 2 * (n - off - size), 2 * (n - off)) for name, off, size in specs)


def _merged(specs: tuple[FieldSpec, ...]) -> tuple[tuple[int, int], ...]:
    runs: list[list[int]] = []
    for _, off, size in specs:
        if runs and runs[-1][1] == off:
            runs[-1][1] = off + size
        else:
            runs.append([off, off + size])
    return tuple((a, b) for a, b in runs)


def _build(layout: XsaveLayout, n: int, placed_bits: int | None) -> DecodePlan:
    if placed_bits is not None:
        offsets, _ = layout.compacted(placed_bits)  # KeyError: a component the host lacks
        placed = {b: offsets[b] for b in bits(placed_bits & ~3)}
    else:
        placed = {b: c.offset for b, c in layout.components.items() if not c.supervisor}
    covered = bytearray(n)
    for _, off, size in (*LEGACY_GROUP, *ST_FIELDS, *XMM_FIELDS):
        covered[off : off + size] = b"\1" * size
    for off in (legacy.XSTATE_BV, legacy.XCOMP_BV):
        covered[off : off + 8] = b"\1" * 8
    index = {name: (LEGACY, i) for i, (name, _, _) in enumerate(LEGACY_GROUP)}
    index.update({name: (ST, i) for i, (name, _, _) in enumerate(ST_FIELDS)})
    index.update({name: (XMM, i) for i, (name, _, _) in enumerate(XMM_FIELDS)})
    comps: list[ComponentPlan] = []
    cut = []
    for b, off in sorted(placed.items(), key=lambda kv: kv[1]):
        size = layout.components[b].size
        if off + size > n:
            cut.append((b, off, size))
            continue
        fields = tuple((name, off + rel, fsize) for name, rel, fsize in component_fields(b, size))
        for _, foff, fsize in fields:
            covered[foff : foff + fsize] = b"\1" * fsize
        index.update({name: (len(comps), i) for i, (name, _, _) in enumerate(fields)})
        comps.append(ComponentPlan(b, off, size, fields, hex_spans(fields, n), _merged(fields)))
    gaps = []
    i = 0
    while i < n:
        j = covered.find(b"\0", i)
        if j < 0:
            break
        k = covered.find(b"\1", j)
        k = n if k < 0 else k
        gaps.append((j, k))
        i = k
    return DecodePlan(
        n,
        tuple(comps),
        tuple(cut),
        tuple(gaps),
        index,
        hex_spans(LEGACY_GROUP, n),
        hex_spans(ST_FIELDS, n),
        hex_spans(XMM_FIELDS, n),
    )


_PLANS: weakref.WeakKeyDictionary[XsaveLayout, dict[tuple[int, int | None], DecodePlan]] = (
    weakref.WeakKeyDictionary()
)
#: Plans kept per layout: placements are few, lengths are few unless a fuzzer picks them.
MAX_PLANS: Final = 4096


def plan_for(layout: XsaveLayout, n: int, xcomp_bv: int) -> DecodePlan:
    """The plan of an ``n``-byte image of ``layout`` with this XCOMP_BV (compacted when
    bit 63 is set: XCOMP_BV places the components; else their standard offsets do).
    KeyError when XCOMP_BV names a component the layout lacks."""
    placed_bits = xcomp_bv & ~XCOMP_COMPACTED if xcomp_bv & XCOMP_COMPACTED else None
    key = (n, placed_bits)
    plans = _PLANS.get(layout)
    if plans is None:
        plans = _PLANS[layout] = {}
    plan = plans.get(key)
    if plan is None:
        if len(plans) >= MAX_PLANS:
            plans.clear()
        plan = plans[key] = _build(layout, n, placed_bits)
    return plan
