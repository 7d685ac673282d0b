"""Register differences a reader can act on: which lanes, bytes or fields differ.

A zmm register is 64 bytes: two long hex strings elided in the middle look identical when
the difference sits in the elided part. So each :class:`~kvmfpu.blob.compare.Difference`
is shown by its parts:

- vector registers (xmm/ymm/zmm) by 32-bit lane, the lanes the decode view numbers:
  ``zmm3 lane 5 (bits 160..191): 0x3f800000 -> 0x0``;
- AMX tiles by a byte map, one line per 64-byte row holding a difference (``#`` differs,
  ``.`` equal), with the count of differing bytes;
- TILECFG by field (palette, start_row, each tile's rows and bytes per row, reserved);
- x87 st registers as 80-bit values with their tags, and FTW by the tags it changes;
- FCW, FSW, MXCSR and PKRU with their flags by name; XSTATE_BV by the components in use
  on one side only;
- anything else whole (k1, bnd0_lower, pkru, r17 ...: at most 8 bytes).

Output is bounded: at most ``LANES`` parts per register in text, and ``lines`` stops after
``limit`` lines with how many more registers differ. JSON keeps every value in full.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Final

from kvmfpu.blob import describe as field_texts
from kvmfpu.blob.compare import Difference, describe_xstate_bv

#: Parts shown per register in text (a zmm has 16 lanes, a tile 16 rows).
LANES: Final = 8
#: Lines ``lines`` prints before saying how many more registers differ.
LIMIT: Final = 120
#: Parts kept per register in JSON (every lane of a zmm, every row of a tile).
JSON_PARTS: Final = 64

_VECTOR = re.compile(r"^[xyz]mm\d+$")
_TILE = re.compile(r"^tmm\d+$")
_ST = re.compile(r"^st\d$")
_ROW = 64  # bytes per tile row at most (palette 1: 64 bytes x 16 rows)
ABSENT = "absent"


@dataclass(frozen=True)
class Part:
    """One lane, row or field that differs."""

    label: str  # "lane 5", "row 3", "palette", "tmm0 rows" ...
    bits: tuple[int, int] | None  # first and last bit within the register
    a: str
    b: str
    map: str | None = None  # tiles: '#' where a byte differs

    def to_json(self, a_key: str = "a", b_key: str = "b") -> dict[str, Any]:
        out: dict[str, Any] = {
            "part": self.label,
            "bits": list(self.bits) if self.bits else None,
            a_key: self.a,
            b_key: self.b,
        }
        if self.map is not None:
            out["map"] = self.map
        return out


def _side(v: int | None, lo: int, n: int) -> int | None:
    return None if v is None else v >> (8 * lo) & ((1 << (8 * n)) - 1)


def _h(v: int | None) -> str:
    return ABSENT if v is None else f"{v:#x}"


def _chunks(d: Difference, unit: int, label: str) -> list[Part]:
    out = []
    for i in range(d.size // unit):
        va, vb = _side(d.value_a, i * unit, unit), _side(d.value_b, i * unit, unit)
        if va != vb and (va or vb):  # a layout without the register: its lanes with data
            # Lanes at full width, so a column of them lines up digit for digit.
            ha = ABSENT if va is None else f"{va:#0{2 + 2 * unit}x}"
            hb = ABSENT if vb is None else f"{vb:#0{2 + 2 * unit}x}"
            out.append(Part(f"{label} {i}", (8 * unit * i, 8 * unit * (i + 1) - 1), ha, hb))
    return out


def _ranges(numbers: list[int]) -> str:
    """``[0, 1, 2, 5, 8, 9]`` -> ``"0-2, 5, 8-9"``."""
    out: list[str] = []
    last = -2
    for n in numbers:
        if out and n == last + 1:
            first = out[-1].split("-")[0]
            out[-1] = f"{first}-{n}"
        else:
            out.append(str(n))
        last = n
    return ", ".join(out)


def _tile_rows(d: Difference) -> list[Part]:
    ba = None if d.value_a is None else d.value_a.to_bytes(d.size, "little")
    bb = None if d.value_b is None else d.value_b.to_bytes(d.size, "little")
    out = []
    for r in range(d.size // _ROW):
        ra = ba[r * _ROW : (r + 1) * _ROW] if ba is not None else None
        rb = bb[r * _ROW : (r + 1) * _ROW] if bb is not None else None
        if ra == rb:
            continue
        marks = "".join("#" if ra is None or rb is None or ra[i] != rb[i] else "." for i in range(_ROW))
        out.append(
            Part(
                f"row {r}",
                (8 * _ROW * r, 8 * _ROW * (r + 1) - 1),
                "0x" + ra[::-1].hex() if ra is not None else ABSENT,
                "0x" + rb[::-1].hex() if rb is not None else ABSENT,
                marks,
            )
        )
    return out


def _tilecfg_fields(v: int | None) -> dict[str, tuple[int | None, tuple[int, int]]]:
    """Field -> (value, bit range) of a 64-byte TILECFG (SDM vol. 2 LDTILECFG)."""
    cfg = v.to_bytes(64, "little") if v is not None else None

    def at(lo: int, n: int) -> int | None:
        return None if cfg is None else int.from_bytes(cfg[lo : lo + n], "little")

    fields: dict[str, tuple[int | None, tuple[int, int]]] = {
        "palette": (at(0, 1), (0, 7)),
        "start_row": (at(1, 1), (8, 15)),
        "reserved bytes 2-15": (at(2, 14), (16, 127)),
    }
    for t in range(16):
        fields[f"tile {t} bytes per row"] = (at(16 + 2 * t, 2), (128 + 16 * t, 143 + 16 * t))
    for t in range(16):
        fields[f"tile {t} rows"] = (at(48 + t, 1), (384 + 8 * t, 391 + 8 * t))
    return fields


def _tilecfg(d: Difference) -> list[Part]:
    fa, fb = _tilecfg_fields(d.value_a), _tilecfg_fields(d.value_b)
    return [Part(name, bits, _h(va), _h(fb[name][0])) for name, (va, bits) in fa.items() if va != fb[name][0]]


def _ftw(d: Difference) -> list[Part]:
    out = []
    for r in range(8):
        va, vb = _side(d.value_a, 0, 1), _side(d.value_b, 0, 1)
        ta = ABSENT if va is None else ("non-empty" if va >> r & 1 else "empty")
        tb = ABSENT if vb is None else ("non-empty" if vb >> r & 1 else "empty")
        if ta != tb:
            out.append(Part(f"physical register R{r} tag", (r, r), ta, tb))
    return out


_TEXTS = {
    "fcw": field_texts.fcw_text,
    "fsw": field_texts.fsw_text,
    "mxcsr": field_texts.mxcsr_text,
    "pkru": field_texts.pkru_text,
}


def parts(d: Difference) -> list[Part]:
    """The lanes, rows or fields of ``d`` that differ (empty: shown whole)."""
    name = d.register
    if name == "XSTATE_BV" or _ST.match(name) or name in _TEXTS:
        return []
    if _VECTOR.match(name):
        return _chunks(d, 4, "lane")
    if _TILE.match(name):
        return _tile_rows(d)
    if name == "tilecfg":
        return _tilecfg(d)
    if name == "ftw":
        return _ftw(d)
    if d.size > 8:
        return _chunks(d, 8, "quadword")
    return []


def _whole(d: Difference) -> str:
    name = d.register
    if name == "XSTATE_BV":
        why = describe_xstate_bv(d.value_a or 0, d.value_b or 0)
        return f"{d.a} -> {d.b}" + (f" ({why})" if why else "")
    if _ST.match(name):

        def x87(v: int | None, tag: str) -> str:
            return ABSENT if v is None else f"{field_texts.float80(v)[0]} [{tag or '?'}]"

        return f"{x87(d.value_a, d.tags[0])} -> {x87(d.value_b, d.tags[1])} (raw {d.a} -> {d.b})"
    text = _TEXTS.get(name)
    if text is not None:

        def show(v: int | None) -> str:
            return ABSENT if v is None else f"{v:#x} [{text(v)}]"

        return f"{show(d.value_a)} -> {show(d.value_b)}"
    return f"{d.a} -> {d.b}"


def describe(d: Difference, *, lanes: int = LANES) -> list[str]:
    """Human lines for one difference: one line, or one line per differing part (at most
    ``lanes``, then how many more)."""
    ps = parts(d)
    if not ps:
        return [f"{d.register}: {_whole(d)}"]
    out = []
    if _TILE.match(d.register):
        changed = sum(p.map.count("#") for p in ps if p.map)
        out.append(f"{d.register}: {changed} of {d.size} bytes differ (rows of {_ROW} bytes; '#' differs)")
        out += [f"  {d.register} {p.label:>6}: {p.map}" for p in ps[: lanes * 2]]
        hidden = len(ps) - lanes * 2
    else:
        for p in ps[:lanes]:
            where = f" (bits {p.bits[0]}..{p.bits[1]})" if p.bits else ""
            out.append(f"{d.register} {p.label}{where}: {p.a} -> {p.b}")
        hidden = len(ps) - lanes
    if hidden > 0:
        out.append(f"{d.register}: {hidden} more part(s) differ (--json lists them all)")
    return out


def summary(d: Difference) -> str:
    """One line for ``d``: which lanes, rows or fields differ, without their values."""
    ps = parts(d)
    if not ps:
        return f"{d.register}: {_whole(d)}"
    numbers = [int(p.label.split()[-1]) for p in ps if p.label.split()[-1].isdigit()]
    if _TILE.match(d.register):
        changed = sum(p.map.count("#") for p in ps if p.map)
        return f"{d.register}: {changed} of {d.size} bytes differ, in rows {_ranges(numbers)}"
    if len(numbers) == len(ps):
        unit = ps[0].label.split()[0]
        return f"{d.register}: {unit}s {_ranges(numbers)} differ (of {d.size * 8 // _bits(ps[0])})"
    return f"{d.register}: " + ", ".join(p.label for p in ps) + " differ"


def _bits(p: Part) -> int:
    return p.bits[1] - p.bits[0] + 1 if p.bits else 1


def lines(diffs: list[Difference], *, limit: int | None = LIMIT) -> list[str]:
    """Human lines for every difference, at most ``limit`` (None: all): each register by
    its parts while they fit, else one summary line per register; then how many more
    registers differ."""
    if limit is not None and sum(len(describe(d)) for d in diffs) > limit:
        return _bounded([[summary(d)] for d in diffs], diffs, limit)
    return _bounded([describe(d) for d in diffs], diffs, limit)


def _bounded(blocks: list[list[str]], diffs: list[Difference], limit: int | None) -> list[str]:
    out: list[str] = []
    for n, block in enumerate(blocks):
        if limit is not None and out and len(out) + len(block) > limit:
            rest = len(diffs) - n
            out.append(
                f"... {rest} more register(s) differ: "
                + ", ".join(x.register for x in diffs[n : n + 8])
                + (" ..." if rest > 8 else "")
                + " (--json lists them all)"
            )
            break
        out += block
    return out


def to_json(d: Difference, a_key: str = "a", b_key: str = "b") -> dict[str, Any]:
    """``{"register", a_key, b_key, "parts": [...], "more_parts"}``: full values, and each
    differing lane/row/field as ``{"part", "bits", a_key, b_key}`` (tiles with ``"map"``),
    at most JSON_PARTS of them."""
    ps = parts(d)
    return {
        "register": d.register,
        a_key: d.a,
        b_key: d.b,
        "parts": [p.to_json(a_key, b_key) for p in ps[:JSON_PARTS]],
        "more_parts": max(0, len(ps) - JSON_PARTS),
    }
