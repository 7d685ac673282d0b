"""Register-level differences between two decoded XSAVE images, whatever their layouts.

A component whose XSTATE_BV bit is clear counts as its initial state (zero registers; the
x87 control word 037Fh), as XRSTOR would load it; MXCSR always counts. Vector registers
are compared whole (xmm, ymm or zmm, the widest either image holds), not by component part.
"""

from __future__ import annotations

from kvmfpu.arch import legacy
from kvmfpu.arch import xfeatures as xf
from kvmfpu.arch.xfeatures import describe_mask
from kvmfpu.blob.decode import Decoded

_X87 = ("fcw", "fsw", "ftw", "fop", "fip", "fdp")
_VECTOR_PARTS = {xf.XFeature.YMM: (128, "ymm{}_hi"), xf.XFeature.ZMM_HI256: (256, "zmm{}_hi256")}
_VECTOR_BITS = (xf.XFeature.YMM, xf.XFeature.ZMM_HI256, xf.XFeature.HI16_ZMM)


def width(d: Decoded) -> int:
    """Bytes of vector register the image's layout holds: 16, 32 or 64."""
    have = {c.bit for c in d.components}
    return 64 if xf.XFeature.ZMM_HI256 in have else 32 if xf.XFeature.YMM in have else 16


def registers(d: Decoded, vector_bytes: int | None = None) -> dict[str, tuple[int, int]]:
    """name -> (value, size in bytes), as XRSTOR would load them; vector registers named
    and sized for ``vector_bytes`` (default: the image's own width)."""
    vb = vector_bytes or width(d)
    out: dict[str, tuple[int, int]] = {}
    fp, sse = d.xstate_bv & xf.FP, d.xstate_bv & xf.SSE
    for name in _X87:
        f = d.field(name)
        init = legacy.FCW_INIT if name == "fcw" else 0
        out[name] = (f.value if fp else init, f.size)
    for f in d.st:
        out[f.name] = (f.value if fp else 0, f.size)
    out["mxcsr"] = (d.field("mxcsr").value, 4)
    vectors = [f.value if sse else 0 for f in d.xmm]
    for bit, (shift, pattern) in _VECTOR_PARTS.items():
        c = d.component(bit)
        if c is not None and c.in_bv:
            for i in range(16):
                part = d.get(pattern.format(i))       # absent where a note cut it short
                vectors[i] |= (part.value if part else 0) << shift
    prefix = {16: "xmm", 32: "ymm", 64: "zmm"}[vb]
    for i, v in enumerate(vectors):
        out[f"{prefix}{i}"] = (v, vb)
    for c in d.components:
        if c.bit in _VECTOR_BITS[:2]:
            continue
        for f in c.fields:
            out[f.name] = (f.value if c.in_bv else 0, f.size)
    return out


def register_diff(a: Decoded, b: Decoded) -> list[tuple[str, str, str]]:
    """(register, value in A, value in B) for each difference; header first. A register
    only one layout holds counts when it holds data."""
    out = []
    if a.xstate_bv != b.xstate_bv:
        out.append(("XSTATE_BV", describe_mask(a.xstate_bv), describe_mask(b.xstate_bv)))
    vb = max(width(a), width(b))
    ra, rb = registers(a, vb), registers(b, vb)
    for name in [*ra, *(n for n in rb if n not in ra)]:
        va, vb_ = ra.get(name), rb.get(name)
        if va is None or vb_ is None:
            held = va or vb_
            assert held is not None
            if held[0]:
                out.append((name, f"{va[0]:#x}" if va else "not in this layout",
                            f"{vb_[0]:#x}" if vb_ else "not in this layout"))
            continue
        if va[0] != vb_[0]:
            out.append((name, f"{va[0]:#x}", f"{vb_[0]:#x}"))
    return out
