"""Decode an XSAVE image into named fields, and encode it back byte for byte.

Every byte of the input lands in exactly one place of the result: a named field (FCW,
ST3, XMM7, the upper half of YMM7, k2, BND0, PKRU, TILECFG, TMM5, R17, ...), a header field,
or a run of bytes no field names (reserved, padding, gaps between components, the tail).
``encode`` rebuilds the input from those alone. Human text for each field (flags by name,
x87 values as 80-bit floats, PKRU per key, the tile configuration) is computed on demand.
"""

from __future__ import annotations

import decimal
import struct
from dataclasses import dataclass, field
from typing import Final

from kvmfpu.arch import legacy
from kvmfpu.arch import tilecfg as arch_tilecfg
from kvmfpu.arch import xfeatures as xf
from kvmfpu.arch.layout import XsaveLayout
from kvmfpu.arch.xfeatures import XCOMP_COMPACTED, bits, name_of
from kvmfpu.blob import producers
from kvmfpu.blob.errors import InputError

_Q = struct.Struct("<Q")

# Legacy region fields (64-bit form): name, offset, size.
LEGACY_FIELDS: Final = (("fcw", 0, 2), ("fsw", 2, 2), ("ftw", 4, 1), ("ftw_reserved", 5, 1),
                        ("fop", 6, 2), ("fip", 8, 8), ("fdp", 16, 8), ("mxcsr", 24, 4),
                        ("mxcsr_mask", 28, 4), ("legacy_reserved", 416, 48),
                        ("sw_reserved", 464, 48))
FCW_FLAGS: Final = ((0, "IM"), (1, "DM"), (2, "ZM"), (3, "OM"), (4, "UM"), (5, "PM"), (12, "X"))
FSW_FLAGS: Final = ((0, "IE"), (1, "DE"), (2, "ZE"), (3, "OE"), (4, "UE"), (5, "PE"), (6, "SF"),
                    (7, "ES"), (8, "C0"), (9, "C1"), (10, "C2"), (14, "C3"), (15, "B"))
MXCSR_FLAGS: Final = ((0, "IE"), (1, "DE"), (2, "ZE"), (3, "OE"), (4, "UE"), (5, "PE"),
                      (6, "DAZ"), (7, "IM"), (8, "DM"), (9, "ZM"), (10, "OM"), (11, "UM"),
                      (12, "PM"), (15, "FZ"), (17, "MM"))
ROUNDING: Final = ("nearest", "down", "up", "toward zero")
PRECISION: Final = ("single", "reserved", "double", "extended")


@dataclass(slots=True)
class Field:
    name: str
    offset: int
    size: int
    value: int

    def hex(self) -> str:
        return f"{self.value:#0{2 + 2 * self.size}x}"


@dataclass(slots=True)
class Component:
    bit: int
    offset: int
    size: int
    in_bv: bool
    fields: list[Field] = field(default_factory=list)

    @property
    def name(self) -> str:
        return name_of(self.bit)

    @property
    def nonzero(self) -> bool:
        return any(f.value for f in self.fields)


@dataclass
class Decoded:
    """An XSAVE image: header, legacy region, components, unnamed runs, anomalies."""

    length: int
    host: str
    compacted: bool
    xstate_bv: int
    xcomp_bv: int
    legacy: list[Field]
    st: list[Field]
    xmm: list[Field]
    components: list[Component]
    rest: list[tuple[int, bytes]]          # bytes no field names, by offset
    anomalies: list[str] = field(default_factory=list)
    xcr0_hint: int | None = None
    notes: list[str] = field(default_factory=list)   # facts about the image, not anomalies
    _index: dict[str, Field] | None = field(default=None, repr=False, compare=False)

    def field(self, name: str) -> Field:
        found = self.get(name)
        if found is None:
            raise KeyError(name)
        return found

    def get(self, name: str) -> Field | None:
        """The field, or None where the layout (or a component cut short) has none."""
        if self._index is None:
            self._index = {f.name: f for f in (*self.legacy, *self.st, *self.xmm,
                                                *(f for c in self.components for f in c.fields))}
        return self._index.get(name)

    def component(self, bit: int) -> Component | None:
        return next((c for c in self.components if c.bit == bit), None)


# -- the components' register layout (offsets within the component) ---------------------------

def _component_fields(bit: int, size: int) -> list[tuple[str, int, int]]:
    if bit == xf.XFeature.YMM:
        return [(f"ymm{i}_hi", 16 * i, 16) for i in range(16)]
    if bit == xf.XFeature.BNDREGS:
        return [(f"bnd{i}_{part}", 16 * i + 8 * j, 8) for i in range(4)
                for j, part in enumerate(("lower", "upper"))]
    if bit == xf.XFeature.BNDCSR:
        return [("bndcfgu", 0, 8), ("bndstatus", 8, 8)]
    if bit == xf.XFeature.OPMASK:
        return [(f"k{i}", 8 * i, 8) for i in range(8)]
    if bit == xf.XFeature.ZMM_HI256:
        return [(f"zmm{i}_hi256", 32 * i, 32) for i in range(16)]
    if bit == xf.XFeature.HI16_ZMM:
        return [(f"zmm{i}", 64 * (i - 16), 64) for i in range(16, 32)]
    if bit == xf.XFeature.PKRU:
        return [("pkru", 0, 4)]
    if bit == xf.XFeature.XTILECFG:
        return [("tilecfg", 0, 64)]
    if bit == xf.XFeature.XTILEDATA:
        return [(f"tmm{i}", 1024 * i, 1024) for i in range(size // 1024)]
    if bit == xf.XFeature.APX:
        return [(f"r{i}", 8 * (i - 16), 8) for i in range(16, 32)]
    if bit == xf.XFeature.CET_U:
        return [("u_cet", 0, 8), ("pl3_ssp", 8, 8)]
    if bit == xf.XFeature.CET_S:
        return [("pl0_ssp", 0, 8), ("pl1_ssp", 8, 8), ("pl2_ssp", 16, 8)]
    if bit == xf.XFeature.PASID:
        return [("pasid", 0, 8)]
    return []


_FIXED: Final = (*LEGACY_FIELDS, *((f"st{i}", legacy.ST_SPACE + 16 * i, 10) for i in range(8)),
                 *((f"xmm{i}", legacy.XMM_SPACE + 16 * i, 16) for i in range(16)),
                 ("header_reserved", legacy.HEADER_RESERVED, 48))
_N_LEGACY: Final = len(LEGACY_FIELDS)


@dataclass(frozen=True)
class _Plan:
    """Where every field of one (length, component placement) sits, and the byte runs no
    field covers: computed once, so decoding is slicing."""

    components: tuple[tuple[int, int, int, tuple[tuple[str, int, int], ...]], ...]
    gaps: tuple[tuple[int, int], ...]


_PLANS: dict[tuple[int, tuple[tuple[int, int, int], ...]], _Plan] = {}


def _plan(n: int, placed: tuple[tuple[int, int, int], ...]) -> _Plan:
    key = (n, placed)
    plan = _PLANS.get(key)
    if plan is not None:
        return plan
    covered = bytearray(n)
    for _, off, size in _FIXED:
        covered[off:off + size] = b"\1" * size
    for off in (legacy.XSTATE_BV, legacy.XCOMP_BV):
        covered[off:off + 8] = b"\1" * 8
    comps = []
    for b, off, size in placed:
        fields = tuple((name, off + rel, fsize) for name, rel, fsize in _component_fields(b, size)
                       if rel + fsize <= size)
        for _, foff, fsize in fields:
            covered[foff:foff + fsize] = b"\1" * fsize
        comps.append((b, off, size, fields))
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
    if len(_PLANS) > 4096:          # placements are few; bound the cache for odd lengths
        _PLANS.clear()
    plan = _PLANS[key] = _Plan(tuple(comps), tuple(gaps))
    return plan


def decode(data: bytes, layout: XsaveLayout, *, host: str = "", xcr0: int | None = None,
           mxcsr_mask: int | None = None, xfd: int = 0) -> Decoded:
    """Decode ``data`` (standard or, when XCOMP_BV[63] is set, compacted format) laid out
    as ``layout``. ``xcr0`` (the features the source enabled) and ``mxcsr_mask`` (the
    host's) sharpen the anomaly checks."""
    data = bytes(data)
    n = len(data)
    if n < legacy.EXTENDED:
        raise InputError(f"{n} bytes is too short for an XSAVE area (the legacy region and "
                         f"header take {legacy.EXTENDED})")
    bv, cb = struct.unpack_from("<QQ", data, legacy.XSTATE_BV)
    compacted = bool(cb & XCOMP_COMPACTED)
    anomalies: list[str] = []
    if compacted:
        try:
            offsets, _ = layout.compacted(cb & ~XCOMP_COMPACTED)
        except KeyError as exc:
            raise InputError(f"XCOMP_BV {cb:#x}: {exc.args[0]} of {host or 'the host'}") from None
        placed = {b: offsets[b] for b in bits(cb & ~XCOMP_COMPACTED & ~3)}
    else:
        placed = {b: c.offset for b, c in layout.components.items() if not c.supervisor}
    fit = []
    for b, off in sorted(placed.items(), key=lambda kv: kv[1]):
        size = layout.components[b].size
        if off + size <= n:
            fit.append((b, off, size))
        elif bv >> b & 1:
            anomalies.append(f"XSTATE_BV sets {name_of(b)} but the buffer ends at {n}, "
                             f"before the component ({off:#x}+{size:#x})")
    plan = _plan(n, tuple(fit))
    frm = int.from_bytes
    fixed = [Field(name, off, size, frm(data[off:off + size], "little"))
             for name, off, size in _FIXED]
    legacy_fields = [*fixed[:_N_LEGACY], fixed[-1]]
    st, xmm = fixed[_N_LEGACY:_N_LEGACY + 8], fixed[_N_LEGACY + 8:-1]
    components = [Component(b, off, size, bool(bv >> b & 1),
                            [Field(name, foff, fsize, frm(data[foff:foff + fsize], "little"))
                             for name, foff, fsize in fields])
                  for b, off, size, fields in plan.components]
    rest = [(i, data[i:j]) for i, j in plan.gaps]
    d = Decoded(n, host, compacted, bv, cb, legacy_fields, st, xmm, components, rest,
                anomalies, xcr0)
    _check(d, layout, data, xcr0, mxcsr_mask)
    if xfd & d.xstate_bv:
        anomalies.append(f"XSTATE_BV sets {xf.describe_mask(xfd & d.xstate_bv)}, which IA32_XFD "
                         f"{xfd:#x} arms: XRSTOR under that XFD raises #NM (the seed 003 host "
                         "crash before b45f72177594; KVM_SET_XSAVE clears the bit after it)")
    return d


def encode(d: Decoded) -> bytes:
    """The bytes ``d`` was decoded from, rebuilt from its fields and runs."""
    out = bytearray(d.length)
    for f in (*d.legacy, *d.st, *d.xmm):
        out[f.offset:f.offset + f.size] = f.value.to_bytes(f.size, "little")
    _Q.pack_into(out, legacy.XSTATE_BV, d.xstate_bv)
    _Q.pack_into(out, legacy.XCOMP_BV, d.xcomp_bv)
    for c in d.components:
        for f in c.fields:
            out[f.offset:f.offset + f.size] = f.value.to_bytes(f.size, "little")
    for off, chunk in d.rest:
        out[off:off + len(chunk)] = chunk
    return bytes(out)


# -- anomalies ----------------------------------------------------------------------------------

def expected_lengths(layout: XsaveLayout, xcr0: int | None = None) -> dict[int, str]:
    """The lengths a standard-format image of this host comes in, and who writes each."""
    user = layout.user_mask
    full = layout.standard_size(user)
    out = {4096: "KVM_GET_XSAVE"}
    out.setdefault(full, "every user component: KVM_GET_XSAVE2, ptrace, core notes")
    out.setdefault(-(-full // 4096) * 4096, "QEMU's KVM_GET_XSAVE2 buffer, whole pages")
    out.setdefault(layout.standard_size(user & ~xf.DYNAMIC_MASK),
                   "without AMX tile data: signal frames, threads without AMX permission")
    if xcr0 is not None:
        out.setdefault(layout.standard_size(xcr0), f"XSAVE of XCR0 {xcr0:#x}")
    return out


def _check(d: Decoded, layout: XsaveLayout, data: bytes, xcr0: int | None,
           mxcsr_mask: int | None) -> None:
    a = d.anomalies
    if not d.compacted:
        sizes = expected_lengths(layout, xcr0)
        gdb = _gdb_notes(d, layout, xcr0) if d.length not in sizes else []
        d.notes += gdb
        if d.length not in sizes and not gdb:
            known = ", ".join(f"{n} ({who})" for n, who in sorted(sizes.items()))
            a.append(f"{d.length} bytes is none of the lengths {d.host or 'this host'}'s images "
                     f"come in: {known}")
    reserved = d.field("header_reserved").value.to_bytes(48, "little")
    if any(reserved):
        a.append(f"header reserved bytes 528-575 are not zero ({sum(1 for x in reserved if x)} "
                 "non-zero bytes)")
    if d.xcomp_bv and not d.compacted:
        a.append(f"XCOMP_BV is {d.xcomp_bv:#x} without bit 63: neither format accepts it")
    user = layout.user_mask
    outside = d.xstate_bv & ~user & ~(layout.supervisor_mask if d.compacted else 0)
    if outside:
        a.append(f"XSTATE_BV sets {xf.describe_mask(outside)} outside the host's XCR0 "
                 f"{user:#x}")
    if xcr0 is not None and d.xstate_bv & ~xcr0 & user:
        a.append(f"XSTATE_BV sets {xf.describe_mask(d.xstate_bv & ~xcr0 & user)} outside the "
                 f"XCR0 the capture reports ({xcr0:#x})")
    # XRSTOR loads the initial state of a component whose XSTATE_BV bit is clear (SDM
    # 13.8.1), so data there is lost on restore; MXCSR is loaded regardless (RFBM[1]|[2]).
    if not d.xstate_bv & xf.FP and (d.field("fcw").value != legacy.FCW_INIT or any(
            d.field(n).value for n in ("fsw", "ftw", "fop", "fip", "fdp")) or
            any(f.value for f in d.st)):
        a.append("x87 registers hold data but XSTATE_BV[0] is clear (XRSTOR loads FCW 037Fh "
                 "and empty registers instead)")
    if not d.xstate_bv & xf.SSE and any(f.value for f in d.xmm):
        a.append("XMM registers hold data but XSTATE_BV[1] is clear (XRSTOR loads zeros "
                 "instead)")
    for c in d.components:
        if not c.in_bv and any(data[c.offset:c.offset + c.size]):
            a.append(f"{c.name} holds data but XSTATE_BV[{c.bit}] is clear (XRSTOR loads its "
                     "initial state instead)")
    mask = mxcsr_mask if mxcsr_mask is not None else (d.field("mxcsr_mask").value or 0xFFBF)
    mxcsr = d.field("mxcsr").value
    if mxcsr & ~mask:
        a.append(f"MXCSR {mxcsr:#x} sets bits {mxcsr & ~mask:#x} outside MXCSR_MASK {mask:#x} "
                 "(XRSTOR and KVM_SET_XSAVE reject it)")
    tilecfg = d.component(xf.XFeature.XTILECFG)
    if tilecfg is not None and tilecfg.in_bv and tilecfg.fields:
        why = arch_tilecfg.problem(tilecfg.fields[0].value.to_bytes(64, "little"))
        if why:   # the emulated core's XRSTOR check (kvmfpu.arch.tilecfg, SDM LDTILECFG)
            a.append(f"TILECFG is not a valid tile configuration: {why} (XRSTOR raises #GP)")


def _gdb_notes(d: Decoded, layout: XsaveLayout, xcr0: int | None) -> list[str]:
    """What a length that is gdb <= 13's NT_X86_XSTATE size says (kvmfpu.blob.producers):
    the producer, and the registers its Intel offsets did not copy on this layout."""
    if xcr0 is None:
        word = d.field("sw_reserved").value & ((1 << 64) - 1)   # ptrace/core: XCR0 at 464
        xcr0 = word if word & 3 == 3 else None
    if xcr0 is None or d.length != producers.gdb13_note_size(xcr0):
        return []
    out = [f"{d.length} bytes is the NT_X86_XSTATE size gdb 13 and earlier write for XCR0 "
           f"{xcr0:#x} (X86_XSTATE_SIZE, Intel's layout), not a size the kernel writes on "
           f"{d.host or 'this host'}: a core from gdb's gcore"]
    lost = producers.gdb13_unsaved(layout, xcr0, d.length)
    names = [f.name for c in d.components for f in c.fields
             if any(f.offset < hi and lo < f.offset + f.size for lo, hi in lost)]
    if names:
        where = ", ".join(f"{lo:#x}-{hi - 1:#x}" for lo, hi in lost)
        out.append(f"that gdb copies registers at Intel's offsets: on this layout it does not "
                   f"save {producers.name_ranges(names)} (bytes {where}), which read as zero "
                   "here, not as the process's values")
    return out


# -- human text --------------------------------------------------------------------------------

def flags(value: int, table: tuple[tuple[int, str], ...]) -> list[str]:
    return [name for bit, name in table if value >> bit & 1]


def fcw_text(v: int) -> str:
    masks = flags(v, FCW_FLAGS)
    return (f"{' '.join(masks) or '-'} PC={PRECISION[v >> 8 & 3]} RC={ROUNDING[v >> 10 & 3]}")


def fsw_text(v: int) -> str:
    return f"{' '.join(flags(v, FSW_FLAGS)) or '-'} TOP={v >> 11 & 7}"


def mxcsr_text(v: int) -> str:
    return f"{' '.join(flags(v, MXCSR_FLAGS)) or '-'} RC={ROUNDING[v >> 13 & 3]}"


# Shown to the 21 significant digits that tell 64-bit significands apart, correctly
# rounded: computed to 60 digits, and exactly (from integers) in the rare case those 60
# leave the rounding in doubt.
_DEC = decimal.Context(prec=21, Emax=999_999, Emin=-999_999)
_P60 = decimal.Context(prec=60, Emax=999_999, Emin=-999_999)
_WIDE = decimal.Context(prec=999_999, Emax=999_999, Emin=-999_999)
_TWO = decimal.Decimal(2)


def _exact(significand: int, exp2: int) -> str:
    """significand * 2**exp2 correctly rounded to 21 digits, whatever its range (80-bit
    values reach 1e4932 and 4e-4951, beyond a double)."""
    ctx = _P60.copy()
    value = ctx.multiply(decimal.Decimal(significand), ctx.power(_TWO, exp2))
    if ctx.flags[decimal.Inexact]:
        beyond = value.as_tuple().digits[21:31]
        if beyond in ((4,) + (9,) * 9, (5,) + (0,) * 9):    # near a tie: decide exactly
            if exp2 >= 0:
                value = decimal.Decimal(significand << exp2)
            else:
                value = decimal.Decimal(significand * 5 ** -exp2).scaleb(exp2, _WIDE)
    return f"{_DEC.plus(value).normalize(_DEC):g}"


def float80(raw: int) -> tuple[str, str]:
    """(value, class) of an 80-bit extended-precision number (SDM 4.2.2, 8.2)."""
    significand = raw & ((1 << 64) - 1)
    exponent = raw >> 64 & 0x7FFF
    sign = "-" if raw >> 79 & 1 else ""
    integer = significand >> 63
    if exponent == 0x7FFF:
        if significand << 1 & ((1 << 64) - 1) == 0:
            return (f"{sign}inf", "special") if integer else ("pseudo-infinity", "special")
        quiet = significand >> 62 & 1
        return f"{'q' if quiet else 's'}NaN" if integer else "pseudo-NaN", "special"
    if exponent == 0:
        if significand == 0:
            return f"{sign}0", "zero"
        kind = "pseudo-denormal" if integer else "denormal"
        return f"{sign}{_exact(significand, -16382 - 63)} ({kind})", "special"
    if not integer:
        return "unnormal", "special"
    return f"{sign}{_exact(significand, exponent - 16383 - 63)}", "valid"


def st_rows(d: Decoded) -> list[tuple[str, str, str, int]]:
    """(register, value, tag, raw) for ST0-ST7 with tags from the abridged FTW and TOP."""
    ftw = d.field("ftw").value
    top = d.field("fsw").value >> 11 & 7
    rows = []
    for i, f in enumerate(d.st):
        physical = (top + i) & 7
        value, kind = float80(f.value)
        tag = kind if ftw >> physical & 1 else "empty"
        rows.append((f"st{i}", value, tag, f.value))
    return rows


def pkru_text(v: int) -> str:
    keys = []
    for k in range(16):
        ad, wd = v >> (2 * k) & 1, v >> (2 * k + 1) & 1
        if ad or wd:
            keys.append(f"key{k}:{'AD' if ad else ''}{',' if ad and wd else ''}{'WD' if wd else ''}")
    return " ".join(keys) or "all keys read/write"


def tilecfg_text(v: int) -> str:
    cfg = v.to_bytes(64, "little")
    palette, start_row = cfg[0], cfg[1]
    tiles = []
    for t in range(16):
        colsb = int.from_bytes(cfg[16 + 2 * t:18 + 2 * t], "little")
        rows = cfg[48 + t]
        if colsb or rows:
            tiles.append(f"tmm{t}={rows}x{colsb}B")
    return f"palette {palette}, start_row {start_row}" + (f": {' '.join(tiles)}" if tiles else "")


def tile_rows(d: Decoded) -> dict[str, tuple[int, int]]:
    """Configured rows and bytes per row of each tile register, from TILECFG."""
    c = d.component(xf.XFeature.XTILECFG)
    if c is None or not c.fields:
        return {}
    cfg = c.fields[0].value.to_bytes(64, "little")
    return {f"tmm{t}": (cfg[48 + t], int.from_bytes(cfg[16 + 2 * t:18 + 2 * t], "little"))
            for t in range(8)}


def sw_reserved_text(v: int) -> str:
    """Bytes 464-511: KVM and ptrace put the user xfeatures first; signal frames put
    _fpx_sw_bytes (FP_XSTATE_MAGIC1 first)."""
    raw = v.to_bytes(48, "little")
    word = int.from_bytes(raw[:8], "little")
    if int.from_bytes(raw[:4], "little") == 0x46505853:
        ext, feat, size = struct.unpack_from("<IQI", raw, 4)
        return f"_fpx_sw_bytes: extended_size {ext}, xfeatures {feat:#x}, xstate_size {size}"
    if word & 3 == 3 and not any(raw[8:]):
        return f"user xfeatures {xf.describe_mask(word)}"
    return "no known use" if any(raw) else "zero"


def bndcfgu_text(v: int) -> str:
    return f"base {v & ~0xFFF:#x} EN={v & 1} BNDPRESERVE={v >> 1 & 1}"
