"""Show a decoded XSAVE image: a human table and the ``kvmfpu-decode/1`` JSON document.

JSON schema (``kvmfpu-decode/1``), one object per capture under ``captures``:

- ``origin``, ``format``, ``length``; ``layout``: ``{"host", "how", "shape", "hosts"}``: the
  host given, or the shape name several packaged hosts share (kvmfpu.blob.infer.shape_name,
  e.g. ``intel-std-avx512+pkru``), why, and the packaged hosts with that placement
- ``sw_reserved``: bytes 464-511 as ``{"value": hex, "text": str}`` (user xfeatures, or a
  signal frame's _fpx_sw_bytes)
- ``header``: ``xstate_bv`` (hex), ``xstate_bv_names``, ``xcomp_bv`` (hex), ``compacted``
- ``x87``: ``in_use``, ``fcw``/``fsw``/``ftw``/``fop``/``fip``/``fdp`` as
  ``{"value": hex, "text": str}``, ``st``: list of ``{"reg", "value", "tag", "raw"}``
- ``sse``: ``in_use``, ``mxcsr`` and ``mxcsr_mask`` as above, ``xmm``: ``{name: hex}``
- ``vectors``: the widest view the layout holds: ``{"ymm0": hex, ...}`` or ``zmm``
- ``components``: list of ``{"name", "bit", "offset", "size", "in_use", "registers":
  {name: hex}, "text": {name: str}}`` (``text`` for PKRU, TILECFG, tiles, BNDCFGU)
- ``unnamed``: list of ``{"offset", "length", "nonzero"}`` (reserved bytes, padding, gaps)
- ``notes``: list of str (what the container says: compression, QEMU's guest XCR0/XFD,
  the accelerator that wrote a stream; then what the image says: a known producer's size,
  such as gdb 13's NT_X86_XSTATE, and the registers that producer did not save)
- ``anomalies``: list of str
"""

from __future__ import annotations

import functools
from typing import Any, Final

from kvmfpu.arch import xfeatures as xf
from kvmfpu.arch.xfeatures import bits, name_of
from kvmfpu.blob import describe
from kvmfpu.blob.decode import Component, Decoded

SCHEMA = "kvmfpu-decode/1"
_name_of = functools.cache(name_of)


def _hexv(value: int, size: int) -> str:
    return f"{value:#0{2 + 2 * size}x}"


def _grouped(value: int, size: int) -> str:
    digits = f"{value:0{2 * size}x}"
    return "_".join(digits[i:i + 8] for i in range(0, len(digits), 8))


def vectors(d: Decoded) -> dict[str, tuple[int, int]]:
    """Full vector registers (value, size in bytes) from xmm, ymm_hi, zmm_hi256, hi16: as
    wide as every register's parts are present (a layout note may cut a component short)."""
    def parts(pattern: str) -> list[int] | None:
        fields = [d.get(pattern.format(i)) for i in range(16)]
        return None if any(f is None for f in fields) else [f.value for f in fields if f]
    ymm = parts("ymm{}_hi")
    zmm = parts("zmm{}_hi256") if ymm is not None else None
    width = 64 if zmm is not None else 32 if ymm is not None else 16
    prefix = {16: "xmm", 32: "ymm", 64: "zmm"}[width]
    out: dict[str, tuple[int, int]] = {}
    for i in range(16):
        v = d.xmm[i].value
        if ymm is not None:
            v |= ymm[i] << 128
        if zmm is not None:
            v |= zmm[i] << 256
        out[f"{prefix}{i}"] = (v, width)
    hi16 = d.component(xf.XFeature.HI16_ZMM)
    if hi16 is not None:
        for f in hi16.fields:
            out[f.name] = (f.value, 64)
    return out


def _texts(c: Component, d: Decoded) -> dict[str, str]:
    out: dict[str, str] = {}
    if c.bit not in _TEXT_BITS or not c.fields:  # a layout note may give too few bytes
        return out
    if c.bit == xf.XFeature.PKRU:
        out["pkru"] = describe.pkru_text(c.fields[0].value)
    elif c.bit == xf.XFeature.XTILECFG:
        out["tilecfg"] = describe.tilecfg_text(c.fields[0].value)
    elif c.bit == xf.XFeature.XTILEDATA:
        shape = describe.tile_rows(d)
        for f in c.fields:
            nz = f.size - f.value.to_bytes(f.size, "little").count(0)
            rows, colsb = shape.get(f.name, (0, 0))
            out[f.name] = f"{rows} rows x {colsb} bytes configured, {nz} non-zero bytes"
    elif c.bit == xf.XFeature.BNDCSR:
        out["bndcfgu"] = describe.bndcfgu_text(c.fields[0].value)
    elif c.bit == xf.XFeature.BNDREGS:
        for i in range(4):
            lo_f, up_f = d.get(f"bnd{i}_lower"), d.get(f"bnd{i}_upper")
            lo, up = (lo_f.value if lo_f else 0), (up_f.value if up_f else 0)
            if lo or up:
                out[f"bnd{i}"] = f"[{lo:#x}, {~up & ((1 << 64) - 1):#x}] (upper stored inverted)"
    return out


_TEXT_BITS: Final = frozenset((xf.XFeature.PKRU, xf.XFeature.XTILECFG, xf.XFeature.XTILEDATA,
                               xf.XFeature.BNDCSR, xf.XFeature.BNDREGS))


_YMM_NAMES: Final = tuple(f"ymm{i}_hi" for i in range(16))
_ZMM_NAMES: Final = tuple(f"zmm{i}_hi256" for i in range(16))


def _vectors_hex(d: Decoded, xmm: dict[str, str], registers: dict[int, dict[str, str]]) -> dict[str, str]:
    """``vectors(d)`` as full-width hex, spelled by joining the parts' hex digits (each
    part's value fits its width: decode and encode keep it so)."""
    def parts(bit: int, names: tuple[str, ...]) -> list[str] | None:
        regs = registers.get(bit)
        if regs is None or any(n not in regs for n in names):
            return None
        return [regs[n][2:] for n in names]
    ymm = parts(xf.XFeature.YMM, _YMM_NAMES)
    zmm = parts(xf.XFeature.ZMM_HI256, _ZMM_NAMES) if ymm is not None else None
    if zmm is not None and ymm is not None:
        joined = zip(zmm, ymm, xmm.values(), strict=True)
        out = {f"zmm{i}": "0x" + z + y + x[2:] for i, (z, y, x) in enumerate(joined)}
    elif ymm is not None:
        out = {f"ymm{i}": "0x" + y + x[2:] for i, (y, x) in enumerate(zip(ymm, xmm.values(), strict=True))}
    else:
        out = dict(xmm)
    out.update(registers.get(xf.XFeature.HI16_ZMM, {}))
    return out


def to_json(d: Decoded, *, origin: str, fmt: str, host: str, how: str,
            notes: list[str] | None = None, shape: str = "",
            hosts: tuple[str, ...] = ()) -> dict[str, Any]:
    legacy_hex = d.legacy_hex()
    def fld(name: str, text: str | None = None) -> dict[str, str]:
        out = {"value": legacy_hex[name]}
        if text is not None:
            out["text"] = text
        return out
    fcw, fsw, mxcsr, sw = (d.value(n) for n in ("fcw", "fsw", "mxcsr", "sw_reserved"))
    registers = {c.bit: c.registers_hex() for c in d.components}
    xmm = d.xmm_hex()
    return {
        "origin": origin, "format": fmt, "length": d.length,
        "layout": {"host": host, "how": how, "shape": shape, "hosts": list(hosts)},
        "sw_reserved": {"value": legacy_hex["sw_reserved"], "text": describe.sw_reserved_text(sw)},
        "header": {"xstate_bv": f"{d.xstate_bv:#x}",
                   "xstate_bv_names": [_name_of(b) for b in bits(d.xstate_bv)],
                   "xcomp_bv": f"{d.xcomp_bv:#x}", "compacted": d.compacted},
        "x87": {"in_use": bool(d.xstate_bv & xf.FP),
                "fcw": fld("fcw", describe.fcw_text(fcw)), "fsw": fld("fsw", describe.fsw_text(fsw)),
                "ftw": fld("ftw"), "fop": fld("fop"), "fip": fld("fip"), "fdp": fld("fdp"),
                "st": [{"reg": r, "value": v, "tag": t, "raw": f"{raw:#022x}"}
                       for r, v, t, raw in describe.st_rows(d)]},
        "sse": {"in_use": bool(d.xstate_bv & xf.SSE), "mxcsr": fld("mxcsr", describe.mxcsr_text(mxcsr)),
                "mxcsr_mask": fld("mxcsr_mask"), "xmm": xmm},
        "vectors": _vectors_hex(d, xmm, registers),
        "components": [{"name": c.name, "bit": c.bit, "offset": c.offset, "size": c.size,
                        "in_use": c.in_bv, "registers": registers[c.bit],
                        "text": _texts(c, d)} for c in d.components],
        "unnamed": [{"offset": off, "length": length, "nonzero": bool(nz)}
                    for off, length, nz in d.rest_nonzero()],
        "notes": [*(notes or ()), *d.notes],
        "anomalies": list(d.anomalies),
    }


def text(d: Decoded, *, origin: str, host: str, how: str, all_registers: bool = False,
         notes: list[str] | None = None, shape: str = "") -> list[str]:
    """Human lines: header, x87 with values and tags, SSE, vectors, each component (in-use
    ones with their registers, init ones in one line), non-zero unnamed bytes, anomalies."""
    named = f"{host}, {shape}" if shape and shape != host else host
    out = [f"{origin}: {d.length} bytes, {'compacted' if d.compacted else 'standard'} format, "
           f"layout {named} ({how})",
           f"  XSTATE_BV {xf.describe_mask(d.xstate_bv)}   XCOMP_BV {d.xcomp_bv:#x}"]
    fcw, fsw, ftw = (d.field(n).value for n in ("fcw", "fsw", "ftw"))
    state = "in use" if d.xstate_bv & xf.FP else "init"
    out.append(f"  x87 ({state}): FCW {fcw:#06x} [{describe.fcw_text(fcw)}]  FSW {fsw:#06x} "
               f"[{describe.fsw_text(fsw)}]  FTW {ftw:#04x}")
    out.append(f"    FOP {d.field('fop').value:#x}  FIP {d.field('fip').value:#x}  "
               f"FDP {d.field('fdp').value:#x}")
    sw = d.field("sw_reserved").value
    out.append(f"  bytes 464-511 (software): {describe.sw_reserved_text(sw)}")
    if d.field("legacy_reserved").value:
        out.append("  bytes 416-463 (reserved): not zero")
    for reg, value, tag, raw in describe.st_rows(d):
        if tag != "empty" or raw or all_registers:
            out.append(f"    {reg} {value:>26} {tag:8} {raw:#022x}")
    mxcsr = d.field("mxcsr").value
    state = "in use" if d.xstate_bv & xf.SSE else "init"
    out.append(f"  SSE ({state}): MXCSR {mxcsr:#x} [{describe.mxcsr_text(mxcsr)}]  "
               f"MXCSR_MASK {d.field('mxcsr_mask').value:#x}")
    shown = [(name, v, size) for name, (v, size) in vectors(d).items() if v or all_registers]
    if shown:
        lanes = shown[0][2] // 4
        out.append(f"    vector registers, 32-bit lanes {lanes - 1}..0:")
    for name, v, size in shown:
        out.append(f"    {name:6} {_grouped(v, size)}")
    for c in d.components:
        if c.bit in (xf.XFeature.YMM, xf.XFeature.ZMM_HI256, xf.XFeature.HI16_ZMM):
            continue                       # shown as whole vector registers above
        head = f"  {c.name} @{c.offset:#x}+{c.size:#x}"
        if not c.in_bv:
            out.append(f"{head}: init" + (" (holds data)" if c.nonzero else ""))
            continue
        texts = _texts(c, d)
        out.append(f"{head}: in use")
        for f in c.fields:
            if c.bit == xf.XFeature.XTILEDATA:
                out.append(f"    {f.name}: {texts[f.name]}")
            elif f.value or all_registers or f.name in texts:
                extra = f"  [{texts[f.name]}]" if f.name in texts else ""
                out.append(f"    {f.name:12} {_grouped(f.value, f.size)}{extra}")
        for name, t in texts.items():
            if name.startswith("bnd") and name[3:].isdigit():
                out.append(f"    {name} bounds {t}")
    for off, chunk in d.rest:
        if any(chunk):
            out.append(f"  bytes {off}-{off + len(chunk) - 1} (no field): "
                       f"{sum(1 for b in chunk if b)} non-zero")
    for n in (*(notes or ()), *d.notes):
        out.append(f"  note: {n}")
    for a in d.anomalies:
        out.append(f"  ANOMALY: {a}")
    return out
