"""Register-level differences between two decoded XSAVE images, whatever their layouts.

A component whose XSTATE_BV bit is clear counts as its initial state (zero registers; the
x87 control word 037Fh), as XRSTOR would load it; MXCSR always counts.
"""

from __future__ import annotations

from kvmfpu.arch import legacy
from kvmfpu.arch import xfeatures as xf
from kvmfpu.arch.xfeatures import describe_mask
from kvmfpu.blob.decode import Decoded

_X87 = ("fcw", "fsw", "ftw", "fop", "fip", "fdp")


def registers(d: Decoded) -> dict[str, tuple[int, int]]:
    """name -> (value, size), as XRSTOR would load them."""
    out: dict[str, tuple[int, int]] = {}
    fp, sse = d.xstate_bv & xf.FP, d.xstate_bv & xf.SSE
    for name in _X87:
        f = d.field(name)
        init = legacy.FCW_INIT if name == "fcw" else 0
        out[name] = (f.value if fp else init, f.size)
    for f in d.st:
        out[f.name] = (f.value if fp else 0, f.size)
    out["mxcsr"] = (d.field("mxcsr").value, 4)
    for f in d.xmm:
        out[f.name] = (f.value if sse else 0, f.size)
    for c in d.components:
        for f in c.fields:
            out[f.name] = (f.value if c.in_bv else 0, f.size)
    return out


def register_diff(a: Decoded, b: Decoded) -> list[tuple[str, str, str]]:
    """(register, value in A, value in B) for each difference; header first."""
    out = []
    if a.xstate_bv != b.xstate_bv:
        out.append(("XSTATE_BV", describe_mask(a.xstate_bv), describe_mask(b.xstate_bv)))
    ra, rb = registers(a), registers(b)
    for name in [*ra, *(n for n in rb if n not in ra)]:
        va, vb = ra.get(name), rb.get(name)
        if va is None or vb is None:
            held = va or vb
            assert held is not None
            if held[0]:                     # only report what holds data
                out.append((name, f"{va[0]:#x}" if va else "not in this layout",
                            f"{vb[0]:#x}" if vb else "not in this layout"))
            continue
        if va[0] != vb[0]:
            out.append((name, f"{va[0]:#x}", f"{vb[0]:#x}"))
    return out
