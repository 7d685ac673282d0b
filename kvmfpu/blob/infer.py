"""Which host layout an XSAVE image was written in, and what that layout is called.

Given ``--host`` that is the answer. Otherwise the capture's own hints decide, the way gdb
reads core files: an NT_X86_XSAVE_LAYOUT note names every offset; else the user feature
mask (byte 464 of KVM and ptrace buffers, or the signal frame's xfeatures, or XSTATE_BV)
and the length narrow the packaged host models down. When the hosts that remain place the
components in different spots, kvmfpu says which and asks for ``--host`` instead of
guessing.

Layouts are named by their shape, not by whichever packaged host comes first
(:func:`shape_name`): ``<placement>-<format>-<features>``, e.g. ``intel-std-avx512+pkru``.

- placement: ``intel`` when every component sits at the offset Intel parts use for it,
  ``amd`` when at AMD's (``INTEL_OFFSETS``/``AMD_OFFSETS``: every packaged dump of that
  vendor agrees, tests/blob/test_infer.py checks), nothing when both hold (x87/SSE/AVX only:
  the vendors agree), ``other`` when neither;
- format: ``std`` (standard) or ``compacted`` (offsets follow from XCOMP_BV and the sizes);
- features: the components in the capture's mask, by group (``avx``, ``mpx``, ``avx512``,
  ``pkru``, ``amx``, ``apx``; a partial group by component names), ``avx`` left out beside
  ``avx512`` (AVX-512 requires it: SDM vol. 1 §13.3), ``sse`` when there is nothing else.
- a component whose size is not the architectural one, every component of an ``other``
  placement, and (as a last resort) any two shapes that would share a name get their
  ``name@offset+size`` in parentheses, so one name is one placement.
"""

from __future__ import annotations

import functools
import struct
import weakref
from dataclasses import dataclass, field
from typing import Final

from kvmfpu import cpus
from kvmfpu.arch import legacy
from kvmfpu.arch import xfeatures as xf
from kvmfpu.arch.layout import Component, XsaveLayout
from kvmfpu.arch.xfeatures import XCOMP_COMPACTED, bits, describe_mask, name_of
from kvmfpu.blob import producers
from kvmfpu.blob.errors import AmbiguousLayout, InputError
from kvmfpu.blob.sources import Capture
from kvmfpu.cpus.model import HostModel

Signature = tuple[tuple[int, int, int], ...]  # (bit, offset, size) of each component

# Standard-format offsets by vendor, from CPUID leaf 0xD of the packaged dumps (Intel:
# Haswell to Granite Rapids; AMD: Zen 1 to Zen 5 but Zen 2's PKRU quirk, 0x340+0x40).
INTEL_OFFSETS: Final = {
    2: 0x240,
    3: 0x3C0,
    4: 0x400,
    5: 0x440,
    6: 0x480,
    7: 0x680,
    9: 0xA80,
    17: 0xAC0,
    18: 0xB00,
}
AMD_OFFSETS: Final = {2: 0x240, 5: 0x340, 6: 0x380, 7: 0x580, 9: 0x980}
_GROUPS: Final = (
    ("avx", xf.YMM),
    ("mpx", xf.MPX),
    ("avx512", xf.AVX512),
    ("pkru", xf.PKRU),
    ("amx", xf.XTILE),
    ("apx", xf.APX),
)


@dataclass
class Choice:
    layout: XsaveLayout
    host: str  # a host name, the shape several hosts share, or the source
    mxcsr_mask: int | None
    how: str  # why this layout
    shape: str = ""  # shape_name of the placement the capture uses
    hosts: tuple[str, ...] = field(default=())  # the packaged hosts with that placement


_SIGNATURES: weakref.WeakKeyDictionary[XsaveLayout, dict[tuple[int, bool], Signature]] = (
    weakref.WeakKeyDictionary()
)


def signature(layout: XsaveLayout, mask: int, compacted: bool = False) -> Signature:
    """Where ``layout`` puts the components of ``mask`` (beyond x87/SSE): standard offsets,
    or compacted ones for an XCOMP_BV of ``mask``."""
    mask &= ~XCOMP_COMPACTED
    known = _SIGNATURES.setdefault(layout, {})
    sig = known.get((mask, compacted))
    if sig is None:
        sig = _signature_of(layout, mask, compacted)
        if len(known) < 1024:  # masks seen per layout: few, but input picks them
            known[(mask, compacted)] = sig
    return sig


def _signature_of(layout: XsaveLayout, mask: int, compacted: bool) -> Signature:
    offsets = layout.compacted(mask)[0] if compacted else {b: c.offset for b, c in layout.components.items()}
    return tuple(
        (b, offsets[b], layout.components[b].size)
        for b in bits(mask & ~3)
        if b in layout.components and b in offsets
    )


def _features(sig: Signature) -> str:
    have = sum(1 << b for b, _, _ in sig)
    names = []
    for group, mask in _GROUPS:
        if have & mask == mask:
            names.append(group)
        else:
            names += [name_of(b) for b in bits(have & mask)]
    names += [name_of(b) for b in bits(have & ~sum(m for _, m in _GROUPS))]
    if "avx512" in names and "avx" in names:
        names.remove("avx")
    return "+".join(names) or "sse"


@functools.lru_cache(maxsize=4096)
def shape_name(sig: Signature, compacted: bool = False) -> str:
    """The name of a placement (the rule is in the module docstring)."""

    def known(bit: int) -> int:
        return xf.INFO[xf.XFeature(bit)].size if bit in xf.XFeature._value2member_map_ else -1

    odd = [(b, off, size) for b, off, size in sig if size != known(b)]
    if compacted:
        placement = ""
    else:
        intel = all(INTEL_OFFSETS.get(b) == off for b, off, _ in sig)
        amd = all(AMD_OFFSETS.get(b) == off for b, off, _ in sig)
        placement = "" if intel and amd else "intel" if intel else "amd" if amd else "other"
        if placement == "other":
            odd = list(sig)
    name = "-".join(p for p in (placement, "compacted" if compacted else "std", _features(sig)) if p)
    if odd:
        name += " (" + " ".join(f"{name_of(b)}@{off:#x}+{size:#x}" for b, off, size in odd) + ")"
    return name


def _names(sigs: list[Signature], compacted: bool) -> dict[Signature, str]:
    """A distinct name for each signature (offsets spelled out where two would clash)."""
    names = {sig: shape_name(sig, compacted) for sig in sigs}
    for sig, name in names.items():
        if list(names.values()).count(name) > 1 and "(" not in name:
            names[sig] = (
                name + " (" + " ".join(f"{name_of(b)}@{off:#x}+{size:#x}" for b, off, size in sig) + ")"
            )
    return names


def _hosts(models: list[HostModel], most: int = 4) -> str:
    shown = ", ".join(m.name for m in models[:most])
    return shown + (f" and {len(models) - most} more" if len(models) > most else "")


def from_note(note: dict[int, tuple[int, int, int]], user_mask: int) -> XsaveLayout:
    """The layout an NT_X86_XSAVE_LAYOUT note describes: its records are the components
    (xfeature numbers 2-63; the note is input, so others are ignored). ``user_mask`` (the
    capture's own feature mask) adds nothing the note does not place."""
    comps = [
        Component(b, size, offset, False, bool(flags & 2), bool(flags & 4))
        for b, (size, offset, flags) in note.items()
        if 2 <= b < 64
    ]
    placed = sum(1 << c.bit for c in comps)
    return XsaveLayout(comps, (user_mask & placed) | 3, 0)


def _mask(capture: Capture) -> tuple[int, int | None]:
    """The components the capture holds (the capture's XCR0 hint, or XSTATE_BV, with
    XSTATE_BV), and for a compacted image its XCOMP_BV (which alone places them)."""
    bv, cb = struct.unpack_from("<QQ", capture.data, legacy.XSTATE_BV)
    if cb & XCOMP_COMPACTED:
        placed = cb & ~XCOMP_COMPACTED
        return (placed | bv) & ~XCOMP_COMPACTED, placed
    return ((capture.xcr0_hint if capture.xcr0_hint is not None else bv) | bv) & ~XCOMP_COMPACTED, None


def _signature(layout: XsaveLayout, mask: int, xcomp: int | None) -> Signature:
    return signature(layout, mask) if xcomp is None else signature(layout, xcomp, True)


def _for_host(model: HostModel, capture: Capture, how: str) -> Choice:
    mask, xcomp = _mask(capture)
    try:
        shape = shape_name(_signature(model.layout, mask, xcomp), xcomp is not None)
    except KeyError:  # the capture holds components this host lacks: decode says so
        shape = ""
    return Choice(model.layout, model.name, model.behaviour.mxcsr_mask, how, shape, (model.name,))


#: Who lays out a capture that keeps registers, not a buffer (Capture.rebuild), by format:
#: QEMU's x86_cpu_xsave_all_areas for its streams (bare, in a libvirt save image or a qcow2
#: snapshot), CRIU's restore_fpu for its core images.
BUILDERS: Final = {"qemu": "QEMU", "libvirt-save": "QEMU", "qcow2": "QEMU", "criu": "CRIU restore_fpu"}
#: Where a capture's layout note comes from, by format: an ELF core's NT_X86_XSAVE_LAYOUT,
#: or the CPUID leaf 0xD subleaves a VMM saved with the vCPU (kvmfpu.blob.vmm_state).
LAYOUT_SOURCES: Final = {
    "core": "NT_X86_XSAVE_LAYOUT",
    "cloud-hypervisor": "CPUID leaf 0xD in the Cloud Hypervisor state.json",
    "firecracker": "CPUID leaf 0xD in the Firecracker vmstate",
    "firecracker-info": "CPUID leaf 0xD in snapshot-editor info-vmstate text",
}


def _builder(capture: Capture) -> str:
    return BUILDERS.get(capture.fmt, capture.fmt)


def choose(capture: Capture, host: str | HostModel | None = None) -> Choice:
    data = capture.data
    if len(data) < legacy.EXTENDED:
        raise InputError(f"{capture.origin}: {len(data)} bytes is too short for an XSAVE area")
    if host is not None:
        model = cpus.load(host)
        if not model.has("xsave"):
            raise InputError(
                f"{model.name} has no XSAVE: its KVM buffers hold the FXSAVE "
                "area only (decode with a host that has XSAVE)"
            )
        if capture.rebuild is not None:
            capture.data = capture.rebuild(model.layout)
            return _for_host(model, capture, f"--host; {_builder(capture)}'s buffer for this destination")
        return _for_host(model, capture, "--host")
    if capture.rebuild is not None and capture.reference_host is not None:
        model = cpus.load(capture.reference_host)
        return _for_host(
            model,
            capture,
            f"{_builder(capture)}'s buffer for this host; --host re-lays it for another destination",
        )
    mask, xcomp = _mask(capture)
    compacted = xcomp is not None
    if capture.layout_note:
        layout = from_note(capture.layout_note, mask)
        return Choice(
            layout,
            f"{capture.origin} layout note",
            None,
            LAYOUT_SOURCES.get(capture.fmt, "NT_X86_XSAVE_LAYOUT"),
            shape_name(signature(layout, mask)),
        )
    fits: dict[Signature, list[HostModel]] = {}
    for name in cpus.names():
        model = cpus.load(name)
        if not model.has("xsave"):
            continue
        lay = model.layout
        if mask & ~lay.supported_mask:
            continue
        need = lay.compacted(xcomp)[1] if xcomp is not None else lay.standard_size(mask)
        if need > len(data):
            continue
        fits.setdefault(_signature(lay, mask, xcomp), []).append(model)
    if not fits:
        raise InputError(
            f"no packaged host holds {describe_mask(mask)} in {len(data)} bytes: "
            "give --host (a model name or a CPUID dump)"
        )
    names = _names(list(fits), compacted)
    if len(fits) > 1:
        groups = "; ".join(
            f"{names[sig]}: {_hosts(models)}: "
            + " ".join(f"{name_of(b)}@{off:#x}" for b, off, _ in sig if b >= 3)
            for sig, models in fits.items()
        )
        gdb = ""
        if not compacted and len(data) == producers.gdb13_note_size(mask):
            gdb = (
                f"; gdb 13 and earlier write {len(data)} bytes for XCR0 {mask:#x} on any "
                "host, so a gcore's size does not tell them apart"
            )
        raise AmbiguousLayout(
            f"{len(fits)} layouts fit {describe_mask(mask)} in {len(data)} bytes ({groups}{gdb}); give --host"
        )
    ((sig, models),) = fits.items()
    first = models[0]
    same_mask = {m.behaviour.mxcsr_mask for m in models}
    mxcsr_mask = same_mask.pop() if len(same_mask) == 1 else None
    hosts = tuple(m.name for m in models)
    label = first.name if len(models) == 1 else names[sig]
    return Choice(
        first.layout,
        label,
        mxcsr_mask,
        f"the only layout for {describe_mask(mask)} in {len(data)} bytes, that of {_hosts(models)}",
        names[sig],
        hosts,
    )
