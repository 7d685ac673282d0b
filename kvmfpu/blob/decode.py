"""Decode an XSAVE image into named fields, and encode it back byte for byte.

Every byte of the input lands in exactly one place of the result: a named field (FCW,
ST3, XMM7, the upper half of YMM7, k2, BND0, PKRU, TILECFG, TMM5, R17, ...), a header field,
or a run of bytes no field names (reserved, padding, gaps between components, the tail).
``encode`` rebuilds the input from those alone.

Where each field sits is the decode plan's (kvmfpu.blob.decode_plan), computed once per
layout and length; the anomaly rules are kvmfpu.blob.anomalies', the human text
kvmfpu.blob.describe's. Field objects are built when a caller first asks for a group of
them (``legacy``, ``st``, ``xmm``, a component's ``fields``), and are then the image: a
value changed there is what ``encode`` writes.
"""

from __future__ import annotations

import functools
import struct
from dataclasses import dataclass
from typing import Final

from kvmfpu.arch import legacy
from kvmfpu.arch.layout import XsaveLayout
from kvmfpu.arch.xfeatures import XCOMP_COMPACTED, name_of
from kvmfpu.blob import anomalies as rules
from kvmfpu.blob.decode_plan import (
    LEGACY,
    LEGACY_GROUP,
    ST,
    ST_FIELDS,
    XMM,
    XMM_FIELDS,
    DecodePlan,
    FieldSpec,
    HexSpan,
    plan_for,
)
from kvmfpu.blob.errors import InputError

_Q = struct.Struct("<Q")
_HEADER: Final = struct.Struct("<QQ")
_name_of = functools.cache(name_of)


@dataclass(slots=True)
class Field:
    name: str
    offset: int
    size: int
    value: int

    def hex(self) -> str:
        return f"{self.value:#0{2 + 2 * self.size}x}"


def _build(specs: tuple[FieldSpec, ...], data: bytes) -> list[Field]:
    frm = int.from_bytes
    return [Field(name, off, size, frm(data[off : off + size], "little")) for name, off, size in specs]


def _hex_of(fields: list[Field] | None, spans: tuple[HexSpan, ...], rhex: str) -> dict[str, str]:
    """name -> full-width hex of each field: from the field objects once built (they may
    have been changed), else straight from the image's reversed hex string."""
    if fields is not None:
        return {f.name: f.hex() for f in fields}
    return {name: "0x" + rhex[a:b] for name, a, b in spans}


class _Image:
    """The bytes of one image and, once asked for, their reversed hex string."""

    __slots__ = ("_rhex", "data")

    def __init__(self, data: bytes):
        self.data = data
        self._rhex: str | None = None

    def rhex(self) -> str:
        if self._rhex is None:
            self._rhex = self.data[::-1].hex()
        return self._rhex


class Component:
    """One component as the image holds it: where, whether XSTATE_BV sets it, its fields."""

    __slots__ = ("_covered", "_fields", "_image", "_spans", "_specs", "bit", "in_bv", "offset", "size")

    def __init__(
        self,
        bit: int,
        offset: int,
        size: int,
        in_bv: bool,
        fields: list[Field] | None = None,
        *,
        specs: tuple[FieldSpec, ...] = (),
        spans: tuple[HexSpan, ...] = (),
        covered: tuple[tuple[int, int], ...] = (),
        image: _Image | None = None,
    ):
        self.bit = bit
        self.offset = offset
        self.size = size
        self.in_bv = in_bv
        self._specs, self._spans, self._covered = specs, spans, covered
        self._image = image
        # Built on first use from the image; given outright when there is no image.
        self._fields = fields if fields is not None else None if image is not None else []

    @property
    def fields(self) -> list[Field]:
        if self._fields is None:
            assert self._image is not None
            self._fields = _build(self._specs, self._image.data)
        return self._fields

    @fields.setter
    def fields(self, value: list[Field]) -> None:
        self._fields = value

    @property
    def name(self) -> str:
        return _name_of(self.bit)

    @property
    def nonzero(self) -> bool:
        """Whether a register of the component holds data (bytes no register names aside)."""
        if self._fields is not None or self._image is None:
            return any(f.value for f in self.fields)
        data = self._image.data
        return any(data.count(0, a, b) != b - a for a, b in self._covered)

    def registers_hex(self) -> dict[str, str]:
        """name -> full-width hex of each register."""
        if self._image is None:
            return {f.name: f.hex() for f in self.fields}
        return _hex_of(self._fields, self._spans, self._image.rhex())

    def __repr__(self) -> str:
        return f"Component({self.name}, {self.offset:#x}+{self.size:#x}, in_bv={self.in_bv})"


class Decoded:
    """An XSAVE image: header, legacy region, components, unnamed runs, anomalies."""

    __slots__ = (
        "_components",
        "_decoded_bv",
        "_image",
        "_legacy",
        "_plan",
        "_rest",
        "_st",
        "_xmm",
        "anomalies",
        "compacted",
        "host",
        "length",
        "notes",
        "xcomp_bv",
        "xcr0_hint",
        "xstate_bv",
    )

    def __init__(
        self,
        image: _Image,
        plan: DecodePlan,
        host: str,
        xstate_bv: int,
        xcomp_bv: int,
        anomalies: list[str],
        notes: list[str],
        xcr0_hint: int | None,
    ):
        self.length = plan.length
        self.host = host
        self.compacted = bool(xcomp_bv & XCOMP_COMPACTED)
        self.xstate_bv = xstate_bv
        self.xcomp_bv = xcomp_bv
        self.anomalies = anomalies
        self.xcr0_hint = xcr0_hint
        self.notes = notes  # facts about the image, not anomalies
        self._plan = plan
        self._image = image
        self._legacy: list[Field] | None = None
        self._st: list[Field] | None = None
        self._xmm: list[Field] | None = None
        self._rest: list[tuple[int, bytes]] | None = None
        self._components: list[Component] | None = None
        self._decoded_bv = xstate_bv  # what in_bv says, whatever xstate_bv becomes

    @property
    def components(self) -> list[Component]:
        """The components the layout places in the image (those a short buffer cuts off
        aside), by offset."""
        if self._components is None:
            bv, image = self._decoded_bv, self._image
            self._components = [
                Component(
                    c.bit,
                    c.offset,
                    c.size,
                    bool(bv >> c.bit & 1),
                    specs=c.fields,
                    spans=c.hex_spans,
                    covered=c.covered,
                    image=image,
                )
                for c in self._plan.components
            ]
        return self._components

    @property
    def legacy(self) -> list[Field]:
        """The legacy region's fields other than ST and XMM, then the header's reserved bytes."""
        if self._legacy is None:
            self._legacy = _build(LEGACY_GROUP, self._image.data)
        return self._legacy

    @property
    def st(self) -> list[Field]:
        if self._st is None:
            self._st = _build(ST_FIELDS, self._image.data)
        return self._st

    @property
    def xmm(self) -> list[Field]:
        if self._xmm is None:
            self._xmm = _build(XMM_FIELDS, self._image.data)
        return self._xmm

    @property
    def rest(self) -> list[tuple[int, bytes]]:
        """Bytes no field names, by offset."""
        if self._rest is None:
            data = self._image.data
            self._rest = [(i, data[i:j]) for i, j in self._plan.gaps]
        return self._rest

    def field(self, name: str) -> Field:
        found = self.get(name)
        if found is None:
            raise KeyError(name)
        return found

    def get(self, name: str) -> Field | None:
        """The field, or None where the layout (or a component cut short) has none."""
        where = self._plan.index.get(name)
        if where is None:
            return None
        group, pos = where
        if group == LEGACY:
            return self.legacy[pos]
        if group == ST:
            return self.st[pos]
        if group == XMM:
            return self.xmm[pos]
        return self.components[group].fields[pos]

    def value(self, name: str) -> int:
        """The field's value (KeyError where the layout has none), building no fields."""
        group, pos = self._plan.index[name]
        if group >= 0:
            comps = self._components
            built = comps[group]._fields if comps is not None else None
            specs = self._plan.components[group].fields
        elif group == LEGACY:
            built, specs = self._legacy, LEGACY_GROUP
        elif group == ST:
            built, specs = self._st, ST_FIELDS
        else:
            built, specs = self._xmm, XMM_FIELDS
        if built is not None:
            return built[pos].value
        _, off, size = specs[pos]
        return int.from_bytes(self._image.data[off : off + size], "little")

    def component(self, bit: int) -> Component | None:
        return next((c for c in self.components if c.bit == bit), None)

    def legacy_hex(self) -> dict[str, str]:
        """name -> full-width hex of the ``legacy`` fields."""
        return _hex_of(self._legacy, self._plan.legacy_hex, self._image.rhex())

    def st_hex(self) -> dict[str, str]:
        return _hex_of(self._st, self._plan.st_hex, self._image.rhex())

    def xmm_hex(self) -> dict[str, str]:
        return _hex_of(self._xmm, self._plan.xmm_hex, self._image.rhex())

    def rest_nonzero(self) -> list[tuple[int, int, int]]:
        """(offset, length, non-zero bytes) of each run ``rest`` holds."""
        if self._rest is not None:
            return [(off, len(chunk), len(chunk) - chunk.count(0)) for off, chunk in self._rest]
        data = self._image.data
        return [(i, j - i, j - i - data.count(0, i, j)) for i, j in self._plan.gaps]

    def __repr__(self) -> str:
        return (
            f"Decoded({self.length} bytes, host={self.host!r}, xstate_bv={self.xstate_bv:#x}, "
            f"xcomp_bv={self.xcomp_bv:#x}, anomalies={self.anomalies!r})"
        )


def decode(
    data: bytes,
    layout: XsaveLayout,
    *,
    host: str = "",
    xcr0: int | None = None,
    mxcsr_mask: int | None = None,
    xfd: int = 0,
) -> Decoded:
    """Decode ``data`` (standard or, when XCOMP_BV[63] is set, compacted format) laid out
    as ``layout``. ``xcr0`` (the features the source enabled) and ``mxcsr_mask`` (the
    host's) sharpen the anomaly checks."""
    data = bytes(data)
    n = len(data)
    if n < legacy.EXTENDED:
        raise InputError(
            f"{n} bytes is too short for an XSAVE area (the legacy region and header take {legacy.EXTENDED})"
        )
    bv, cb = _HEADER.unpack_from(data, legacy.XSTATE_BV)
    try:
        plan = plan_for(layout, n, cb)
    except KeyError as exc:
        raise InputError(f"XCOMP_BV {cb:#x}: {exc.args[0]} of {host or 'the host'}") from None
    found, notes = rules.check(data, plan, layout, host, xcr0, mxcsr_mask, xfd)
    return Decoded(_Image(data), plan, host, bv, cb, found, notes, xcr0)


def encode(d: Decoded) -> bytes:
    """The bytes ``d`` was decoded from, rebuilt from its fields and runs (those never
    asked for are as decoded)."""
    out = bytearray(d._image.data)
    groups = [d._legacy, d._st, d._xmm, *(c._fields for c in d._components or ())]
    for fields in groups:
        for f in fields or ():
            out[f.offset : f.offset + f.size] = f.value.to_bytes(f.size, "little")
    _Q.pack_into(out, legacy.XSTATE_BV, d.xstate_bv)
    _Q.pack_into(out, legacy.XCOMP_BV, d.xcomp_bv)
    for off, chunk in d._rest or ():
        out[off : off + len(chunk)] = chunk
    return bytes(out)
