"""Compare two xsave buffers register by register, for tests.

``diff_xsave`` names what differs instead of printing a hexdump, in two parts:

1. the register state, exactly as ``kvmfpu diff`` and the migration check see it
   (:func:`kvmfpu.blob.compare.register_diff`, one meaning of "register diff"): a
   component whose XSTATE_BV bit is clear holds its initial values whatever its bytes say
   (SDM vol. 1 §13.8.1), so data there is no difference; vector registers by lane, tiles by
   byte map, x87 registers as 80-bit values (:mod:`kvmfpu.blob.regdiff`);
2. buffer bytes that are not register state but that a test may care about: XCOMP_BV,
   MXCSR_MASK, the reserved and software bytes of the legacy region and header, padding
   and gaps between components, and the length.

``assert_xsave_equal`` raises an AssertionError listing those lines.
"""

from __future__ import annotations

from kvmfpu import cpus
from kvmfpu.arch import legacy
from kvmfpu.arch.layout import XsaveLayout
from kvmfpu.arch.xfeatures import describe_mask
from kvmfpu.blob import decode as dec
from kvmfpu.blob import regdiff
from kvmfpu.blob.compare import register_diff
from kvmfpu.cpus.model import HostModel
from kvmfpu.testing.areas import HostLike

Buffer = bytes | bytearray | memoryview

# Fields of the decode that are bytes of the buffer, not register state.
_NOT_STATE = (
    ("mxcsr_mask", "MXCSR_MASK"),
    ("legacy_reserved", "legacy bytes 416-463"),
    ("sw_reserved", "sw_reserved bytes 464-511"),
    ("header_reserved", "header reserved bytes 528-575"),
)


def _layout(host: HostLike | XsaveLayout) -> XsaveLayout:
    if isinstance(host, XsaveLayout):
        return host
    return (host if isinstance(host, HostModel) else cpus.load(host)).layout


def _bytes_differ(label: str, a: bytes, b: bytes, base: int) -> str | None:
    bad = [i for i in range(min(len(a), len(b))) if a[i] != b[i]]
    if not bad:
        return None
    return f"{label}: {len(bad)} byte(s) differ from offset {base + bad[0]} (not register state)"


def _unused(da: dec.Decoded, db: dec.Decoded) -> list[str]:
    """Bytes that differ inside components whose XSTATE_BV bit is clear in both images."""
    groups: list[tuple[str, int, list[dec.Field], list[dec.Field]]] = []
    x87 = ("fcw", "fsw", "ftw", "fop", "fip", "fdp")
    groups.append(("x87", 0, [da.field(n) for n in x87] + da.st, [db.field(n) for n in x87] + db.st))
    groups.append(("sse", 1, da.xmm, db.xmm))
    comps_b = {c.bit: c for c in db.components}
    for c in da.components:
        other = comps_b.get(c.bit)
        if other is not None and other.offset == c.offset:
            groups.append((c.name, c.bit, c.fields, other.fields))
    out = []
    for name, bit, fa, fb in groups:
        if (da.xstate_bv | db.xstate_bv) >> bit & 1:
            continue
        raw_a = b"".join(f.value.to_bytes(f.size, "little") for f in fa)
        raw_b = b"".join(f.value.to_bytes(f.size, "little") for f in fb)
        bad = sum(1 for x, y in zip(raw_a, raw_b, strict=True) if x != y)
        if bad:
            out.append(
                f"{name}: {bad} byte(s) differ under XSTATE_BV[{bit}], clear in both (not "
                "register state: XRSTOR loads the initial values)"
            )
    return out


def diff_xsave(
    a: Buffer,
    b: Buffer,
    host: HostLike | XsaveLayout,
    *,
    limit: int | None = regdiff.LIMIT,
    unused: bool = False,
) -> list[str]:
    """What differs between two buffers (standard, or compacted where XCOMP_BV[63] says
    so) laid out for ``host``: the register state first, then the buffer bytes that are
    not state. ``limit`` bounds the register lines (None: all). ``unused`` also reports
    bytes under XSTATE_BV bits clear in both, which are no register difference but which
    a byte-exact comparison (the model against real KVM) must still see."""
    layout = _layout(host)
    a, b = bytes(a), bytes(b)
    out: list[str] = []
    if len(a) != len(b):
        out.append(f"length: {len(a)} != {len(b)}")
    if min(len(a), len(b)) < legacy.EXTENDED:  # no header to decode: bytes only
        line = _bytes_differ("bytes", a, b, 0)
        return out + ([line] if line else [])
    da, db = dec.decode(a, layout), dec.decode(b, layout)
    out += regdiff.lines(register_diff(da, db), limit=limit)
    if da.xcomp_bv != db.xcomp_bv:
        out.append(
            f"XCOMP_BV: {describe_mask(da.xcomp_bv)} -> {describe_mask(db.xcomp_bv)} (not register state)"
        )
    for name, label in _NOT_STATE:
        fa, fb = da.field(name), db.field(name)
        if fa.value != fb.value:
            line = _bytes_differ(
                label, fa.value.to_bytes(fa.size, "little"), fb.value.to_bytes(fb.size, "little"), fa.offset
            )
            if name == "mxcsr_mask":
                line = f"MXCSR_MASK: {fa.value:#x} -> {fb.value:#x} (not register state)"
            if line:
                out.append(line)
    runs_b = dict(db.rest)
    for off, chunk in da.rest:
        other = runs_b.get(off)
        if other is None:
            continue  # the two lengths place different runs: said above
        line = _bytes_differ(f"bytes {off}-{off + len(chunk) - 1} (no register)", chunk, other, off)
        if line:
            out.append(line)
    if unused:
        out += _unused(da, db)
        if not out and a != b:  # byte-exact means no difference goes unsaid
            out.append(_bytes_differ("bytes", a, b, 0) or "bytes differ")
    return out


def assert_xsave_equal(a: Buffer, b: Buffer, host: HostLike | XsaveLayout) -> None:
    """Raise AssertionError naming every register (and non-state byte range) that differs."""
    lines = diff_xsave(a, b, host)
    if lines:
        raise AssertionError("xsave buffers differ:\n  " + "\n  ".join(lines))
