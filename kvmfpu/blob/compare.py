"""Register-level differences between two decoded XSAVE images, whatever their layouts.

The one meaning of "register diff" in kvmfpu (``kvmfpu diff``, the migration check, the
kit's ``assert_xsave_equal``): two images differ where the registers XRSTOR would load
from them differ. So a component whose XSTATE_BV bit is clear is in its initial
configuration, whatever bytes its part of the buffer holds: XRSTOR loads the init values
for it (SDM vol. 1 §13.8.1, "if XSTATE_BV[i] = 0, the state component is set to its
initial configuration"; init values in §13.6: zero registers, x87 FCW 037Fh with every
register empty). MXCSR is loaded whenever RFBM[1] or RFBM[2] is set, whatever XSTATE_BV[1]
says (§13.8.1), so it always counts. MXCSR_MASK, reserved bytes and padding are not
register state and never count here (``kvmfpu.testing.compare.diff_xsave`` reports them
separately). Vector registers are compared whole (xmm, ymm or zmm, the widest either image
holds), not by component part; :mod:`kvmfpu.blob.regdiff` shows which lanes differ.
"""

from __future__ import annotations

from kvmfpu.arch import legacy
from kvmfpu.arch import xfeatures as xf
from kvmfpu.arch.xfeatures import describe_mask
from kvmfpu.blob.decode import Decoded
from kvmfpu.blob.describe import st_rows

_X87 = ("fcw", "fsw", "ftw", "fop", "fip", "fdp")
_VECTOR_PARTS = {xf.XFeature.YMM: (128, "ymm{}_hi"), xf.XFeature.ZMM_HI256: (256, "zmm{}_hi256")}
_VECTOR_BITS = (xf.XFeature.YMM, xf.XFeature.ZMM_HI256, xf.XFeature.HI16_ZMM)
ABSENT = "not in this layout"


class Difference(tuple[str, str, str]):
    """One register that differs: ``(register, A, B)`` with both values in full hex (or
    ``"not in this layout"``), so code that unpacks three strings keeps working, plus the
    numbers themselves for :mod:`kvmfpu.blob.regdiff` to show by lane, byte or field."""

    value_a: int | None
    value_b: int | None
    size: int  # bytes
    tags: tuple[str, str]  # x87 tags of an st register ("" elsewhere)

    def __new__(
        cls,
        register: str,
        value_a: int | None,
        value_b: int | None,
        size: int,
        tags: tuple[str, str] = ("", ""),
        texts: tuple[str, str] | None = None,
    ) -> Difference:
        ta, tb = texts or (_hex(value_a), _hex(value_b))
        self = super().__new__(cls, (register, ta, tb))
        self.value_a, self.value_b, self.size, self.tags = value_a, value_b, size, tags
        return self

    @property
    def register(self) -> str:
        return self[0]

    @property
    def a(self) -> str:
        return self[1]

    @property
    def b(self) -> str:
        return self[2]


def _hex(v: int | None) -> str:
    return ABSENT if v is None else f"{v:#x}"


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
                part = d.get(pattern.format(i))  # absent where a note cut it short
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


def st_tags(d: Decoded) -> dict[str, str]:
    """The x87 tag of each st register as XRSTOR would load it (all empty when
    XSTATE_BV[0] is clear: the init FTW is 0)."""
    if not d.xstate_bv & xf.FP:
        return {f"st{i}": "empty" for i in range(8)}
    return {reg: tag for reg, _, tag, _ in st_rows(d)}


def register_diff(a: Decoded, b: Decoded) -> list[Difference]:
    """Each register that differs, XSTATE_BV first. A register only one layout holds counts
    when it holds data (the other side is ``"not in this layout"``)."""
    out = []
    if a.xstate_bv != b.xstate_bv:
        out.append(
            Difference(
                "XSTATE_BV",
                a.xstate_bv,
                b.xstate_bv,
                8,
                texts=(describe_mask(a.xstate_bv), describe_mask(b.xstate_bv)),
            )
        )
    vb = max(width(a), width(b))
    ra, rb = registers(a, vb), registers(b, vb)
    ta, tb = st_tags(a), st_tags(b)
    for name in [*ra, *(n for n in rb if n not in ra)]:
        va, vb_ = ra.get(name), rb.get(name)
        if va is None or vb_ is None:
            held = va or vb_
            assert held is not None
            if held[0]:
                out.append(
                    Difference(name, None if va is None else va[0], None if vb_ is None else vb_[0], held[1])
                )
            continue
        if va[0] != vb_[0]:
            tags = (ta[name], tb[name]) if name in ta else ("", "")
            out.append(Difference(name, va[0], vb_[0], va[1], tags))
    return out


def describe_xstate_bv(a: int, b: int) -> str:
    """What an XSTATE_BV change means: the components in use on one side only."""
    only_a, only_b = a & ~b, b & ~a
    parts = []
    if only_a:
        parts.append(f"in use in A only: {describe_mask(only_a)}")
    if only_b:
        parts.append(f"in use in B only: {describe_mask(only_b)}")
    return "; ".join(parts)
