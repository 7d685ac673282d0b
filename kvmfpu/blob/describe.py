"""Human text for the fields of a decoded XSAVE image: flags by name, x87 values as 80-bit
floats with their tags, PKRU per key, the tile configuration, bytes 464-511, BNDCFGU.

Kept apart from decoding (as pyelftools keeps its descriptions apart): nothing here runs
unless something is shown.
"""

from __future__ import annotations

import decimal
import functools
import struct
from typing import TYPE_CHECKING, Final

from kvmfpu.arch import xfeatures as xf

if TYPE_CHECKING:
    from kvmfpu.blob.decode import Decoded

FCW_FLAGS: Final = ((0, "IM"), (1, "DM"), (2, "ZM"), (3, "OM"), (4, "UM"), (5, "PM"), (12, "X"))
FSW_FLAGS: Final = (
    (0, "IE"),
    (1, "DE"),
    (2, "ZE"),
    (3, "OE"),
    (4, "UE"),
    (5, "PE"),
    (6, "SF"),
    (7, "ES"),
    (8, "C0"),
    (9, "C1"),
    (10, "C2"),
    (14, "C3"),
    (15, "B"),
)
MXCSR_FLAGS: Final = (
    (0, "IE"),
    (1, "DE"),
    (2, "ZE"),
    (3, "OE"),
    (4, "UE"),
    (5, "PE"),
    (6, "DAZ"),
    (7, "IM"),
    (8, "DM"),
    (9, "ZM"),
    (10, "OM"),
    (11, "UM"),
    (12, "PM"),
    (15, "FZ"),
    (17, "MM"),
)
_describe_mask = functools.lru_cache(maxsize=256)(xf.describe_mask)  # a few XCR0s recur
ROUNDING: Final = ("nearest", "down", "up", "toward zero")
PRECISION: Final = ("single", "reserved", "double", "extended")


def flags(value: int, table: tuple[tuple[int, str], ...]) -> list[str]:
    return [name for bit, name in table if value >> bit & 1]


def fcw_text(v: int) -> str:
    masks = flags(v, FCW_FLAGS)
    return f"{' '.join(masks) or '-'} PC={PRECISION[v >> 8 & 3]} RC={ROUNDING[v >> 10 & 3]}"


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
        if beyond in ((4,) + (9,) * 9, (5,) + (0,) * 9):  # near a tie: decide exactly
            if exp2 >= 0:
                value = decimal.Decimal(significand << exp2)
            else:
                value = decimal.Decimal(significand * 5**-exp2).scaleb(exp2, _WIDE)
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
    ftw = d.value("ftw")
    top = d.value("fsw") >> 11 & 7
    rows = []
    for i in range(8):
        raw = d.value(f"st{i}")
        value, kind = float80(raw)
        tag = kind if ftw >> ((top + i) & 7) & 1 else "empty"
        rows.append((f"st{i}", value, tag, raw))
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
        colsb = int.from_bytes(cfg[16 + 2 * t : 18 + 2 * t], "little")
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
    return {
        f"tmm{t}": (cfg[48 + t], int.from_bytes(cfg[16 + 2 * t : 18 + 2 * t], "little")) for t in range(8)
    }


def sw_reserved_text(v: int) -> str:
    """Bytes 464-511: KVM and ptrace put the user xfeatures first; signal frames put
    _fpx_sw_bytes (FP_XSTATE_MAGIC1 first)."""
    raw = v.to_bytes(48, "little")
    word = int.from_bytes(raw[:8], "little")
    if int.from_bytes(raw[:4], "little") == 0x46505853:
        ext, feat, size = struct.unpack_from("<IQI", raw, 4)
        return f"_fpx_sw_bytes: extended_size {ext}, xfeatures {feat:#x}, xstate_size {size}"
    if word & 3 == 3 and not any(raw[8:]):
        return f"user xfeatures {_describe_mask(word)}"
    return "no known use" if any(raw) else "zero"


def bndcfgu_text(v: int) -> str:
    return f"base {v & ~0xFFF:#x} EN={v & 1} BNDPRESERVE={v >> 1 & 1}"
