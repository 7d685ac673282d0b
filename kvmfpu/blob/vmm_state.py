"""What the VMM and checkpoint readers (Cloud Hypervisor, crosvm, Firecracker, CRIU) share:
the saved CPUID's leaf 0xD as a layout, the XCRs and MSRs that travel with a vCPU's xsave
buffer, and the packaged host a field-by-field capture is laid out for.

Each reader returns ``kvmfpu.blob.sources.Capture`` objects; they are imported lazily here
because sources.py dispatches to the readers.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Final

from kvmfpu.arch import xfeatures as xf
from kvmfpu.blob.errors import InputError

if TYPE_CHECKING:
    from kvmfpu.blob.sources import Capture
    from kvmfpu.cpus.model import HostModel

#: MSR numbers (Intel SDM vol. 4; Linux arch/x86/include/asm/msr-index.h).
MSR_IA32_XSS: Final = 0xDA0
MSR_IA32_XFD: Final = 0x1C4
MSR_IA32_XFD_ERR: Final = 0x1C5
#: KVM_GET_XSAVE's struct kvm_xsave: 4096 bytes (include/uapi/asm/kvm.h, region[1024]).
KVM_XSAVE_SIZE: Final = 4096

#: (function, index, eax, ebx, ecx, edx) of one saved CPUID entry.
CpuidEntry = tuple[int, int, int, int, int, int]


def xcr0_at_464(data: bytes) -> int | None:
    """The user xfeatures KVM_GET_XSAVE leaves in the first sw_reserved word (as
    sources.py reads raw buffers): a plausible value has x87 and SSE set."""
    if len(data) < 472:
        return None
    value = int(struct.unpack_from("<Q", data, 464)[0])
    return value if value & 3 == 3 and value >> 63 == 0 else None


def layout_note(entries: Iterable[CpuidEntry]) -> dict[int, tuple[int, int, int]]:
    """The guest CPUID's leaf 0xD as {bit: (size, offset, flags)}, the shape of an
    NT_X86_XSAVE_LAYOUT note (flags = ECX: supervisor, 64-byte aligned, XFD). KVM fills
    leaf 0xD's offsets from the host (KVM_GET_SUPPORTED_CPUID, arch/x86/kvm/cpuid.c), and
    the VMMs pass them on: they are the offsets of the saved buffer. Components the leaf's
    subleaf 0 does not report are left out (Zen 2 reports a PKRU size without PKU)."""
    leaf = {(f, i): (a, b, c, d) for f, i, a, b, c, d in entries if f == 0xD}
    if (0xD, 0) not in leaf:
        return {}
    eax0, _, _, edx0 = leaf[(0xD, 0)]
    user = (eax0 | edx0 << 32) & xf.USER_MASK
    out: dict[int, tuple[int, int, int]] = {}
    for bit in xf.bits(user & ~xf.FPSSE):
        regs = leaf.get((0xD, bit))
        if regs is None:
            continue
        size, offset, flags, _ = regs
        if size and not flags & 1:
            out[bit] = (size, offset, flags)
    return out


def registers(cap: Capture, xcr0: int | None, msrs: Mapping[int, int], source: str) -> None:
    """Record the vCPU's XCR0 and its xsave MSRs (IA32_XSS, IA32_XFD, IA32_XFD_ERR) from
    the VMM's saved state in ``cap.extra`` and say so in its notes; ``kvmfpu.blob.load``
    arms IA32_XFD from ``extra``."""
    parts = []
    if xcr0 is not None:
        cap.extra["xcr0"] = xcr0
        parts.append(f"XCR0 {xf.describe_mask(xcr0)}")
        if cap.xcr0_hint is None:
            cap.xcr0_hint = xcr0
    for name, msr in (("xss", MSR_IA32_XSS), ("xfd", MSR_IA32_XFD), ("xfd_err", MSR_IA32_XFD_ERR)):
        if msr in msrs:
            cap.extra[name] = msrs[msr]
            parts.append(f"IA32_{name.upper()} {msrs[msr]:#x}")
    cap.notes.append(f"{source}: " + (", ".join(parts) if parts else "no XCR0 or xsave MSRs saved"))


def smallest_host(need: int, what: str) -> HostModel:
    """The packaged host with the fewest user components that holds all of ``need`` (as
    kvmfpu.blob.qemu lays a QEMU vCPU's fields out without --host)."""
    from kvmfpu import cpus

    models = sorted(
        (m for m in (cpus.load(n) for n in cpus.names()) if m.has("xsave")),
        key=lambda m: (bin(m.layout.user_mask).count("1"), m.name),
    )
    for m in models:
        if not need & ~m.layout.user_mask:
            return m
    raise InputError(f"{what}: no packaged host holds {xf.describe_mask(need)}: give --host")


def u32_words(values: object, count: int | None, what: str) -> bytes:
    """A JSON/CBOR list of u32 words as little-endian bytes (the ``[u32; N]`` and
    ``Vec<u32>`` fields the Rust VMMs serialise), refusing anything else."""
    if not isinstance(values, list) or (count is not None and len(values) != count):
        want = f"{count} " if count is not None else ""
        got = f"{len(values)} items" if isinstance(values, list) else type(values).__name__
        raise InputError(f"{what}: expected a list of {want}u32 words, found {got}")
    out = bytearray()
    for v in values:
        if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= 0xFFFF_FFFF:
            raise InputError(f"{what}: {str(v)[:40]!r} is not a u32 word")
        out += v.to_bytes(4, "little")
    return bytes(out)


def cut_short(cap: Capture, xcr0: int | None, why: str) -> None:
    """Note the components XCR0 enables that the saved buffer ends before (by the layout
    the saved CPUID gives): their state did not travel."""
    if xcr0 is None or not cap.layout_note:
        return
    lost = [
        b
        for b, (size, offset, _) in sorted(cap.layout_note.items())
        if xcr0 >> b & 1 and offset + size > len(cap.data)
    ]
    if lost:
        names = ", ".join(xf.name_of(b) for b in lost)
        cap.notes.append(
            f"the saved buffer ({len(cap.data)} bytes) ends before {names}, which XCR0 "
            f"enables: that state was not saved ({why})"
        )
