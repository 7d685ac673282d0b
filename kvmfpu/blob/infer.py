"""Which host layout an XSAVE image was written in.

Given ``--host`` that is the answer. Otherwise the capture's own hints decide, the way gdb
reads core files: an NT_X86_XSAVE_LAYOUT note names every offset; else the user feature
mask (byte 464 of KVM and ptrace buffers, or the signal frame's xfeatures, or XSTATE_BV)
and the length narrow the packaged host models down. When the hosts that remain place the
components in different spots, kvmfpu says which and asks for ``--host`` instead of
guessing.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from kvmfpu import cpus
from kvmfpu.arch import legacy
from kvmfpu.arch.layout import Component, XsaveLayout
from kvmfpu.arch.xfeatures import XCOMP_COMPACTED, bits, describe_mask, name_of
from kvmfpu.blob.errors import AmbiguousLayout, InputError
from kvmfpu.blob.sources import Capture
from kvmfpu.cpus.model import HostModel


@dataclass
class Choice:
    layout: XsaveLayout
    host: str                  # a host name, or a description of where the layout came from
    mxcsr_mask: int | None
    how: str                   # why this layout


def _signature(layout: XsaveLayout, mask: int) -> tuple[tuple[int, int, int], ...]:
    return tuple((b, layout.components[b].offset, layout.components[b].size)
                 for b in bits(mask & ~3) if b in layout.components)


def from_note(note: dict[int, tuple[int, int, int]], user_mask: int) -> XsaveLayout:
    """The layout an NT_X86_XSAVE_LAYOUT note describes: its records are the components
    (xfeature numbers 2-63; the note is input, so others are ignored). ``user_mask`` (the
    capture's own feature mask) adds nothing the note does not place."""
    comps = [Component(b, size, offset, False, bool(flags & 2), bool(flags & 4))
             for b, (size, offset, flags) in note.items() if 2 <= b < 64]
    placed = sum(1 << c.bit for c in comps)
    return XsaveLayout(comps, (user_mask & placed) | 3, 0)


def choose(capture: Capture, host: str | HostModel | None = None) -> Choice:
    data = capture.data
    if len(data) < legacy.EXTENDED:
        raise InputError(f"{capture.origin}: {len(data)} bytes is too short for an XSAVE area")
    if host is not None:
        model = cpus.load(host)
        if not model.has("xsave"):
            raise InputError(f"{model.name} has no XSAVE: its KVM buffers hold the FXSAVE "
                             "area only (decode with a host that has XSAVE)")
        if capture.rebuild is not None:
            capture.data = capture.rebuild(model.layout)
            return Choice(model.layout, model.name, model.behaviour.mxcsr_mask,
                          "--host; QEMU's buffer for this destination")
        return Choice(model.layout, model.name, model.behaviour.mxcsr_mask, "--host")
    if capture.rebuild is not None and capture.reference_host is not None:
        model = cpus.load(capture.reference_host)
        return Choice(model.layout, model.name, model.behaviour.mxcsr_mask,
                      "QEMU's buffer for this host; --host re-lays it for another destination")
    bv, cb = struct.unpack_from("<QQ", data, legacy.XSTATE_BV)
    mask = capture.xcr0_hint if capture.xcr0_hint is not None else bv
    if cb & XCOMP_COMPACTED:
        mask = cb & ~XCOMP_COMPACTED
    if capture.layout_note:
        return Choice(from_note(capture.layout_note, mask), f"{capture.origin} layout note",
                      None, "NT_X86_XSAVE_LAYOUT")
    mask |= bv & ~(cb if cb & XCOMP_COMPACTED else 0)
    fits: dict[tuple[tuple[int, int, int], ...], list[HostModel]] = {}
    for name in cpus.names():
        model = cpus.load(name)
        if not model.has("xsave"):
            continue
        lay = model.layout
        if mask & ~lay.supported_mask & ~XCOMP_COMPACTED:
            continue
        need = lay.compacted(mask & ~XCOMP_COMPACTED)[1] if cb & XCOMP_COMPACTED \
            else lay.standard_size(mask)
        if need > len(data):
            continue
        fits.setdefault(_signature(lay, mask), []).append(model)
    if not fits:
        raise InputError(f"no packaged host holds {describe_mask(mask)} in {len(data)} bytes: "
                         "give --host (a model name or a CPUID dump)")
    if len(fits) > 1:
        groups = "; ".join(
            f"{', '.join(m.name for m in models[:4])}{' ...' if len(models) > 4 else ''}: "
            + " ".join(f"{name_of(b)}@{off:#x}" for b, off, _ in sig if b >= 3)
            for sig, models in fits.items())
        raise AmbiguousLayout(f"{len(fits)} layouts fit {describe_mask(mask)} in {len(data)} "
                              f"bytes ({groups}); give --host")
    (_, models), = fits.items()
    first = models[0]
    same_mask = {m.behaviour.mxcsr_mask for m in models}
    mxcsr_mask = same_mask.pop() if len(same_mask) == 1 else None
    names = ", ".join(m.name for m in models[:3]) + (" ..." if len(models) > 3 else "")
    return Choice(first.layout, first.name, mxcsr_mask,
                  f"the only layout for {describe_mask(mask)} in {len(data)} bytes ({names})")
