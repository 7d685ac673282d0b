"""Compare two standard-format xsave buffers register by register.

``diff_xsave`` names what differs (``ymm3``, ``mxcsr``, ``XSTATE_BV``, ``tmm2``, "legacy
bytes 416-463"...) instead of printing a hexdump; ``assert_xsave_equal`` raises an
AssertionError listing those lines.
"""

from __future__ import annotations

from typing import Final

from kvmfpu import cpus
from kvmfpu.arch import legacy
from kvmfpu.arch.layout import XsaveLayout
from kvmfpu.arch.xfeatures import describe_mask, name_of
from kvmfpu.core.regfile import REGISTERS, Register
from kvmfpu.cpus.model import HostModel
from kvmfpu.testing.areas import HostLike

# Legacy-area fields without a register name.
_LEGACY_FIELDS: Final = (("fcs", 12, 2), ("fds", 20, 2))


def _report_names(layout: XsaveLayout) -> list[str]:
    """The registers to report, each byte under one name: the widest vector register the
    layout holds (zmm over ymm over xmm), no MMX aliases."""
    have = set(layout.components)
    names = ["fcw", "fsw", "ftw", "fop", "fip", "fdp", "mxcsr", "mxcsr_mask",
             *(f"st{i}" for i in range(8))]
    if {2, 6} <= have:
        names += [f"zmm{i}" for i in range(16)]
    elif 2 in have:
        names += [f"ymm{i}" for i in range(16)]
    else:
        names += [f"xmm{i}" for i in range(16)]
    if 7 in have:
        names += [f"zmm{i}" for i in range(16, 32)]
    names += [f"k{i}" for i in range(8)] + [f"bnd{i}" for i in range(4)]
    names += ["bndcfgu", "bndstatus", "pkru", "tilecfg", *(f"tmm{i}" for i in range(8))]
    names += [f"r{i}" for i in range(16, 32)]
    return names


def _layout(host: HostLike | XsaveLayout) -> XsaveLayout:
    if isinstance(host, XsaveLayout):
        return host
    return (host if isinstance(host, HostModel) else cpus.load(host)).layout


def _spans(reg: Register, layout: XsaveLayout) -> list[tuple[int, int]] | None:
    out = []
    for p in reg.pieces:
        if p.bit <= 1:
            out.append((p.offset, p.size))
            continue
        c = layout.components.get(p.bit)
        if c is None or c.supervisor:
            return None
        out.append((c.offset + p.offset, p.size))
    return out


def _read(buf: bytes | bytearray | memoryview, spans: list[tuple[int, int]]) -> int:
    data = b"".join(bytes(buf[o:o + n]) for o, n in spans)
    return int.from_bytes(data, "little")


def _fmt(v: int) -> str:
    text = f"{v:#x}"
    return text if len(text) <= 34 else f"{text[:14]}...{text[-10:]}"


def diff_xsave(a: bytes | bytearray | memoryview, b: bytes | bytearray | memoryview,
               host: HostLike | XsaveLayout) -> list[str]:
    """What differs between two standard-format buffers laid out for ``host``: header
    fields, every named register, then any remaining bytes by region."""
    layout = _layout(host)
    out: list[str] = []
    if len(a) != len(b):
        out.append(f"length: {len(a)} != {len(b)}")
    n = min(len(a), len(b))
    covered = bytearray(n)

    def mark(off: int, size: int) -> None:
        covered[off:min(off + size, n)] = b"\1" * max(0, min(off + size, n) - off)

    for name, off in (("XSTATE_BV", legacy.XSTATE_BV), ("XCOMP_BV", legacy.XCOMP_BV)):
        if off + 8 <= n:
            va = int.from_bytes(a[off:off + 8], "little")
            vb = int.from_bytes(b[off:off + 8], "little")
            mark(off, 8)
            if va != vb:
                out.append(f"{name}: {describe_mask(va)} != {describe_mask(vb)}")
    for name, off, size in _LEGACY_FIELDS:
        mark(off, size)
        if a[off:off + size] != b[off:off + size]:
            out.append(f"{name}: {_fmt(_read(a, [(off, size)]))} != {_fmt(_read(b, [(off, size)]))}")
    for name in _report_names(layout):
        reg = REGISTERS[name]
        spans = _spans(reg, layout)
        if spans is None or any(o + size > n for o, size in spans):
            continue
        for o, size in spans:
            mark(o, size)
        va, vb = _read(a, spans), _read(b, spans)
        if va != vb:
            out.append(f"{name}: {_fmt(va)} != {_fmt(vb)}")
    # Whatever no field covers: reserved bytes, padding, gaps, unknown components.
    regions = [("legacy bytes 416-463", 416, 464), ("sw_reserved bytes 464-511", 464, 512),
               ("header reserved bytes 528-575", 528, 576)]
    for bit, c in sorted(layout.components.items()):
        if not c.supervisor:
            regions.append((f"{name_of(bit)} (other bytes)", c.offset, c.offset + c.size))
    regions.append(("bytes outside every component", 0, n))
    for label, start, end in regions:
        bad = [i for i in range(start, min(end, n)) if not covered[i] and a[i] != b[i]]
        if bad:
            out.append(f"{label}: {len(bad)} byte(s) differ from offset {bad[0]}")
            for i in bad:
                covered[i] = 1
    return out


def assert_xsave_equal(a: bytes | bytearray | memoryview, b: bytes | bytearray | memoryview,
                       host: HostLike | XsaveLayout) -> None:
    """Raise AssertionError naming every register that differs."""
    lines = diff_xsave(a, b, host)
    if lines:
        raise AssertionError("xsave buffers differ:\n  " + "\n  ".join(lines))
