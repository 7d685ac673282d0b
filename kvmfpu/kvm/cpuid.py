"""KVM_GET_SUPPORTED_CPUID and the guest CPUID table (KVM_SET_CPUID2).

Leaf 0xD follows __do_cpuid_func (arch/x86/kvm/cpuid.c): subleaf 0 EAX/EDX = permitted
XCR0, EBX = ECX = xstate_required_size(permitted, false); subleaf 1 EAX = KVM's mask,
EBX = compacted size of permitted | supported XSS when XSAVES or XSAVEC, ECX/EDX =
supported XSS; one subleaf per permitted component, host values with EDX = 0 and ECX[2]
(XFD) cleared when KVM lacks XFD. Permitted = supported_xcr0 & the process's guest
permission (5.17, 445ecdf79be0/1ffce0924a8c), also without XTILE_CFG when XTILE_DATA is
not permitted (6.4, 55cd57b596e8). Other leaves are the host's with the xstate-relevant
bits KVM filters (OSXSAVE is a runtime bit, MPX/PKU/CET/AMX follow KVM's caps); the rest of
KVM's filtering is not modelled.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Final

from kvmfpu.arch import legacy
from kvmfpu.arch import xfeatures as xf
from kvmfpu.arch.layout import XsaveLayout
from kvmfpu.arch.xfeatures import bits
from kvmfpu.cpus.features import INDEXED_LEAVES
from kvmfpu.cpus.model import HostModel
from kvmfpu.kvm.caps import PVM_FILTER, PVM_FILTER_HOST, KvmCaps
from kvmfpu.kvm.profiles import KernelProfile

KVM_CPUID_FLAG_SIGNIFCANT_INDEX: Final = 1
KVM_MAX_CPUID_ENTRIES: Final = 256
ENTRY = struct.Struct("<IIIIIII12x")   # struct kvm_cpuid_entry2 (40 bytes)


@dataclass(frozen=True, slots=True)
class CpuidEntry:
    """struct kvm_cpuid_entry2 (without padding)."""

    function: int
    index: int
    flags: int
    eax: int
    ebx: int
    ecx: int
    edx: int

    def values(self) -> tuple[int, int, int, int, int, int, int]:
        return (self.function, self.index, self.flags, self.eax, self.ebx, self.ecx, self.edx)

    def _replace(self, **changes: int) -> CpuidEntry:
        return replace(self, **changes)


def xstate_required_size(layout: XsaveLayout, mask: int, compacted: bool, align: bool) -> int:
    """KVM's xstate_required_size (cpuid.c): 576 plus each extended component; compacted
    offsets are 64-byte aligned per CPUID ECX[1] from 5.17 (cc04b6a21d43)."""
    ret = legacy.EXTENDED
    for b in bits(mask & ~xf.FPSSE & ~xf.XCOMP_COMPACTED):
        c = layout.components.get(b)
        if c is None:
            continue
        if compacted:
            off = (ret + 63) & ~63 if (align and c.align64) else ret
        else:
            off = c.offset
        ret = max(ret, off + c.size)
    return ret


def permitted_xcr0(caps: KvmCaps, kernel: KernelProfile, guest_perm: int) -> int:
    xcr0 = caps.supported_xcr0
    if kernel.has("amx"):
        xcr0 &= guest_perm | ~xf.DYNAMIC_MASK
        if kernel.has("filter_xtilecfg_without_perm") and not xcr0 & xf.XTILEDATA:
            xcr0 &= ~xf.XTILECFG
    return xcr0


def _set_bit(value: int, bit: int, on: bool) -> int:
    return value | 1 << bit if on else value & ~(1 << bit)


def supported_cpuid(host: HostModel, kernel: KernelProfile, caps: KvmCaps,
                    guest_perm: int) -> list[CpuidEntry]:
    out: list[CpuidEntry] = []
    layout = host.layout
    align = kernel.has("amx")
    for (leaf, sub), regs in sorted(host.table.items()):
        if leaf == 0xD or 0x4000_0000 <= leaf < 0x5000_0000:
            continue
        a, b, c, d = regs
        if leaf == 1:
            c = _set_bit(c, 27, False)        # OSXSAVE: runtime bit, from guest CR4
            c = _set_bit(c, 31, True)         # hypervisor
        elif leaf == 7 and sub == 0:
            b = _set_bit(b, 14, bool(b >> 14 & 1) and caps.mpx)
            c = _set_bit(c, 3, bool(c >> 3 & 1) and caps.pku)
            c = _set_bit(c, 4, False)         # OSPKE: runtime bit
            c = _set_bit(c, 7, caps.shstk)
            d = _set_bit(d, 20, caps.ibt)
            amx = kernel.has("amx") and bool(caps.supported_xcr0 & xf.XTILE)
            for bit in (22, 24, 25):
                d = _set_bit(d, bit, bool(d >> bit & 1) and amx)
        regs4 = [a, b, c, d]
        if caps.flavor == "pvm":
            for r in range(4):
                key = (leaf, sub, r)
                if key in PVM_FILTER:
                    measured, host_val = PVM_FILTER[key], PVM_FILTER_HOST[key]
                    regs4[r] = (regs4[r] & measured) | (measured & ~host_val)
        flags = KVM_CPUID_FLAG_SIGNIFCANT_INDEX if leaf in INDEXED_LEAVES else 0
        out.append(CpuidEntry(leaf, sub, flags, *regs4))
    if host.cpuid(0)[0] >= 0xD and host.has("xsave"):
        out.extend(_leaf_d(host, layout, kernel, caps, guest_perm, align))
    out.append(CpuidEntry(0x4000_0000, 0, 0, 0x4000_0001, 0x4B4D564B, 0x564B4D56, 0x4D))
    out.append(CpuidEntry(0x4000_0001, 0, 0, 0x0100_7EFB, 0, 0, 0))
    out.sort(key=lambda e: (e.function, e.index))
    return out


def _leaf_d(host: HostModel, layout: XsaveLayout, kernel: KernelProfile, caps: KvmCaps,
            guest_perm: int, align: bool) -> Iterable[CpuidEntry]:
    sig = KVM_CPUID_FLAG_SIGNIFCANT_INDEX
    p = permitted_xcr0(caps, kernel, guest_perm)
    s = caps.supported_xss
    a, _, _, d = host.cpuid(0xD, 0)
    std = xstate_required_size(layout, p, False, align)
    yield CpuidEntry(0xD, 0, sig, a & p & 0xFFFFFFFF, std, std, d & (p >> 32))
    if not p:
        return
    a, _, c, d = host.cpuid(0xD, 1)
    eax = a & caps.d1_eax
    ebx = xstate_required_size(layout, p | s, True, align) if eax & 0xA else 0
    yield CpuidEntry(0xD, 1, sig, eax, ebx, c & s & 0xFFFFFFFF, d & (s >> 32))
    for b, supervisor in [(b, False) for b in bits(p & ~xf.FPSSE)] + [(b, True) for b in bits(s)]:
        a, bb, c, _ = host.cpuid(0xD, b)
        if not a or bool(c & 1) != supervisor:
            continue
        if not caps.xfd:
            c &= ~4
        yield CpuidEntry(0xD, b, sig, a, bb, c, 0)


def pack_entries(entries: Sequence[CpuidEntry]) -> bytes:
    return b"".join(ENTRY.pack(*e.values()) for e in entries)


def unpack_entries(raw: bytes | memoryview, nent: int) -> tuple[CpuidEntry, ...]:
    return tuple(CpuidEntry(*ENTRY.unpack_from(raw, 40 * i)) for i in range(nent))


class GuestCpuid:
    """A guest CPUID table as KVM keeps it, with what KVM derives from it. Shared between
    vCPUs that were given the same table (tables are interned)."""

    __slots__ = ("entries", "gss_raw", "gsx_raw", "has", "lookup", "raw")

    def __init__(self, entries: tuple[CpuidEntry, ...]):
        self.entries = entries
        self.raw = pack_entries(entries)
        self.lookup: dict[tuple[int, int], CpuidEntry] = {}
        for e in entries:
            key = (e.function, e.index if e.flags & KVM_CPUID_FLAG_SIGNIFCANT_INDEX else -1)
            self.lookup.setdefault(key, e)
        d0 = self.find(0xD, 0)
        d1 = self.find(0xD, 1)
        #: CPUID.(0xD,0) EDX:EAX before masking with KVM's support (0 without the leaf).
        self.gsx_raw = (d0.eax | d0.edx << 32) if d0 else 0
        self.gss_raw = (d1.ecx | d1.edx << 32) if d1 else 0
        l1, l7, e1 = self.find(1, 0), self.find(7, 0), self.find(0x8000_0001, 0)
        self.has = {
            "xsave": bool(l1 and l1.ecx >> 26 & 1),
            "xsaves": bool(d1 and d1.eax >> 3 & 1),
            "xsavec": bool(d1 and d1.eax >> 1 & 1),
            "xfd": bool(d1 and d1.eax >> 4 & 1),
            "mpx": bool(l7 and l7.ebx >> 14 & 1),
            "pku": bool(l7 and l7.ecx >> 3 & 1),
            "shstk": bool(l7 and l7.ecx >> 7 & 1),
            "ibt": bool(l7 and l7.edx >> 20 & 1),
            "lm": bool(e1 and e1.edx >> 29 & 1),
        }

    def find(self, function: int, index: int) -> CpuidEntry | None:
        """kvm_find_cpuid_entry_index: exact index for leaves with a significant index."""
        return self.lookup.get((function, index)) or self.lookup.get((function, -1))

    def __len__(self) -> int:
        return len(self.entries)


@lru_cache(maxsize=256)
def intern(raw: bytes, nent: int) -> GuestCpuid:
    return GuestCpuid(unpack_entries(raw, nent))


EMPTY = GuestCpuid(())
