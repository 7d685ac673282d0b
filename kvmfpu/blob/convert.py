"""Re-lay a standard-format XSAVE buffer for another host's component offsets.

Each component in XSTATE_BV moves from the source host's CPUID offset to the target's; the
legacy region and header stay. A component the target does not have cannot be carried:
``convert`` refuses rather than drop state. Byte 464 (the host's user xfeatures in KVM and
ptrace buffers) is narrowed to what the target supports.
"""

from __future__ import annotations

import struct

from kvmfpu import cpus
from kvmfpu.arch import legacy
from kvmfpu.arch.xfeatures import XCOMP_COMPACTED, bits, describe_mask, name_of
from kvmfpu.blob.errors import InputError
from kvmfpu.cpus.model import HostModel


class ConversionError(InputError):
    """The target cannot hold what the buffer holds."""


def convert(data: bytes, src: str | HostModel, dst: str | HostModel) -> tuple[bytes, list[str]]:
    a, b = cpus.load(src), cpus.load(dst)
    for m in (a, b):
        if not m.has("xsave"):
            raise ConversionError(f"{m.name} has no XSAVE: nothing to lay out")
    if len(data) < legacy.EXTENDED:
        raise InputError(f"{len(data)} bytes is too short for an XSAVE area")
    bv, cb = struct.unpack_from("<QQ", data, legacy.XSTATE_BV)
    if cb & XCOMP_COMPACTED:
        raise ConversionError("the buffer is in the compacted format; convert re-lays "
                              "standard-format (KVM, ptrace, core) buffers")
    missing = bv & ~3 & ~b.layout.user_mask
    if missing:
        raise ConversionError(f"{b.name} cannot hold {describe_mask(missing)} (XSTATE_BV "
                              f"{bv:#x}); the state would be lost")
    unknown = bv & ~3 & ~a.layout.user_mask
    if unknown:
        raise ConversionError(f"XSTATE_BV sets {describe_mask(unknown)}, which {a.name} does "
                              "not have: is --from right?")
    notes = []
    need = b.layout.standard_size(bv)
    size = max(need, len(data) if len(data) in (4096,) else need)
    out = bytearray(size)
    out[:legacy.EXTENDED] = data[:legacy.EXTENDED]
    for bit in bits(bv & ~3):
        ca, cb_ = a.layout.components[bit], b.layout.components[bit]
        if ca.size != cb_.size:
            raise ConversionError(f"{name_of(bit)} is {ca.size} bytes on {a.name} and "
                                  f"{cb_.size} on {b.name}")
        if ca.offset + ca.size > len(data):
            raise ConversionError(f"the buffer ends before {name_of(bit)} ({ca.offset:#x})")
        out[cb_.offset:cb_.offset + cb_.size] = data[ca.offset:ca.offset + ca.size]
        if ca.offset != cb_.offset:
            notes.append(f"{name_of(bit)} moved {ca.offset:#x} -> {cb_.offset:#x}")
    word = struct.unpack_from("<Q", out, 464)[0]
    if word & 3 == 3 and word & ~b.layout.user_mask:
        struct.pack_into("<Q", out, 464, word & b.layout.user_mask)
        notes.append(f"user xfeatures at byte 464 narrowed to {word & b.layout.user_mask:#x}")
    return bytes(out), notes
