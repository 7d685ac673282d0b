"""KVM_GET_SUPPORTED_CPUID and the guest CPUID table (KVM_SET_CPUID2).

KVM_GET_SUPPORTED_CPUID follows kvm_dev_ioctl_get_cpuid / __do_cpuid_func (arch/x86/kvm/
cpuid.c) leaf by leaf: which leaves KVM copies, rewrites or zeroes, with the feature words
of kvmfpu.kvm.cpu_caps (kvm_set_cpu_caps and the vendor module's changes, per kernel through
the Switch registry). Leaf 0xD: subleaf 0 EAX/EDX = permitted XCR0, EBX = ECX =
xstate_required_size(permitted, false); subleaf 1 EAX = KVM's mask, EBX = compacted size of
permitted | supported XSS when XSAVES or XSAVEC, ECX/EDX = supported XSS; one subleaf per
permitted component, host values with EDX = 0 and ECX[2] (XFD) cleared when KVM lacks XFD.
Permitted = supported_xcr0 & the process's guest permission (5.17, 445ecdf79be0/
1ffce0924a8c), also without XTILE_CFG when XTILE_DATA is not permitted (6.4, 55cd57b596e8).
Not modelled (all zero): Intel PT (0x14), SEV (0x8000_001F); the PMU leaf 0xA
is approximate (see _pmu_leaf).
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Final

from kvmfpu import uapi
from kvmfpu.arch import legacy
from kvmfpu.arch import xfeatures as xf
from kvmfpu.arch.layout import XsaveLayout
from kvmfpu.arch.xfeatures import bits
from kvmfpu.cpus.model import HostModel
from kvmfpu.kvm import cpuid_leaves as cl
from kvmfpu.kvm.caps import KvmCaps
from kvmfpu.kvm.cpu_caps import CapWords, kernel_has, kvm_cpu_caps, tdp_enabled
from kvmfpu.kvm.profiles import KernelProfile

KVM_CPUID_FLAG_SIGNIFCANT_INDEX: Final = 1
KVM_MAX_CPUID_ENTRIES: Final = uapi.KVM_MAX_CPUID_ENTRIES
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


def supported_cpuid(host: HostModel, kernel: KernelProfile, caps: KvmCaps,
                    guest_perm: int) -> list[CpuidEntry]:
    """kvm_dev_ioctl_get_cpuid(KVM_GET_SUPPORTED_CPUID): the basic leaves, the extended
    leaves, Centaur's (on Centaur/Zhaoxin hosts) and KVM's own, in that order."""
    return list(_supported_cpuid(host, kernel, caps, guest_perm))


@lru_cache(maxsize=512)
def _supported_cpuid(host: HostModel, kernel: KernelProfile, caps: KvmCaps,
                     guest_perm: int) -> tuple[CpuidEntry, ...]:
    words = kvm_cpu_caps(host, kernel, caps)
    out: list[CpuidEntry] = []
    top = min(host.cpuid(0)[0], 0x24 if kernel.has("cpuid_avx10") else 0x1F)
    for fn in range(top + 1):
        out.extend(_basic_leaf(host, kernel, caps, words, guest_perm, fn))
    top = _max_extended(host, kernel)
    for fn in range(0x8000_0000, top + 1):
        out.extend(_extended_leaf(host, kernel, caps, words, fn, top))
    if host.vendor in ("CentaurHauls", "  Shanghai  "):
        for fn in range(0xC000_0000, min(host.cpuid(0xC000_0000)[0], 0xC000_0004) + 1):
            a, b, c, d = host.cpuid(fn)
            if fn == 0xC000_0000:
                a = min(a, 0xC000_0004)
            elif fn == 0xC000_0001:
                d = words[cl.W_C1_EDX]
            else:
                a = b = c = d = 0
            out.append(CpuidEntry(fn, 0, 0, a, b, c, d))
    out.append(CpuidEntry(0x4000_0000, 0, 0, 0x4000_0001, *cl.KVM_SIGNATURE))
    out.append(CpuidEntry(0x4000_0001, 0, 0, cl.KVM_PV_FEATURES, 0, 0, 0))
    return tuple(out)


def _entry(fn: int, sub: int, a: int, b: int, c: int, d: int) -> CpuidEntry:
    flags = KVM_CPUID_FLAG_SIGNIFCANT_INDEX if fn in cl.INDEXED_FUNCTIONS else 0
    return CpuidEntry(fn, sub, flags, a, b, c, d)


def _cache_leaf(host: HostModel, fn: int) -> Iterable[CpuidEntry]:
    """Leaves 4 and 0x8000_001D: subleaves up to and including the first whose cache type
    (EAX[4:0]) is 0."""
    for sub in range(64):
        regs = host.cpuid(fn, sub)
        yield _entry(fn, sub, *regs)
        if not regs[0] & 0x1F:
            return


def _basic_leaf(host: HostModel, kernel: KernelProfile, caps: KvmCaps, words: CapWords,
                guest_perm: int, fn: int) -> Iterable[CpuidEntry]:
    """__do_cpuid_func for a basic leaf (the leaves it does not name are all zero: 3, 5, 8,
    9, 0xC, 0xE-0x11, 0x13, 0x15-0x1C, 0x20-0x23)."""
    a, b, c, d = host.cpuid(fn)
    if fn == 0:
        yield _entry(0, 0, min(a, 0x24 if kernel.has("cpuid_avx10") else 0x1F), b, c, d)
    elif fn == 1:
        yield _entry(1, 0, a, b, words[cl.W_1_ECX], words[cl.W_1_EDX])
    elif fn == 2:
        yield _entry(2, 0, a, b, c, d)
    elif fn == 4:
        yield from _cache_leaf(host, 4)
    elif fn == 6:
        yield _entry(6, 0, 4, 0, 0, 0)                  # ARAT only
    elif fn == 7:
        yield from _leaf_7(host, kernel, words)
    elif fn == 0xA:
        yield _entry(0xA, 0, *_pmu_leaf(host, caps))
    elif fn in (0xB, 0x1F):
        if kernel.has("cpuid_no_host_topology"):
            yield _entry(fn, 0, 0, 0, 0, d)             # EDX: the x2APIC ID KVM ran on
        else:
            for sub in range(64):
                regs = host.cpuid(fn, sub)
                yield _entry(fn, sub, *regs)
                if not regs[2] & 0xFF00:
                    break
    elif fn == 0xD:
        yield from _leaf_d(host, host.layout, kernel, caps, guest_perm, kernel.has("amx"))
    elif fn == 0x12 and words[cl.W_7_0_EBX] >> cl.BY_NAME["SGX"].bit & 1:
        # Subleaf 0: SGX1/SGX2/EDECCSSA, MISCSELECT & EXINFO, the enclave sizes; subleaf 1:
        # SECS.ATTRIBUTES KVM allows (XFRM in ECX/EDX is the host's). EPC sections: none.
        yield _entry(fn, 0, words[cl.W_12_EAX], b & cl.SGX_MISC_EXINFO, c, d)
        a1, _, c1, d1 = host.cpuid(fn, 1)
        attrs = cl.SGX_ATTRIBUTES
        if kernel.has("cpuid_sgx_edeccssa"):
            attrs |= cl.SGX_ATTR_ASYNC_EXIT_NOTIFY
        yield _entry(fn, 1, a1 & attrs, 0, c1, d1)
    elif fn == 0x1D and words[cl.W_7_0_EDX] >> cl.BY_NAME["AMX_TILE"].bit & 1:
        for sub in range(a + 1):
            yield _entry(fn, sub, *host.cpuid(fn, sub))
    elif fn == 0x1E and words[cl.W_7_0_EDX] >> cl.BY_NAME["AMX_TILE"].bit & 1:
        yield _entry(fn, 0, a, b, c, d)
    elif fn == 0x24 and words[cl.W_7_1_EDX] >> cl.BY_NAME["AVX10"].bit & 1:
        yield _entry(fn, 0, 0, words[cl.W_24_EBX] | min(b & 0xFF, 1), 0, 0)
    else:
        # Includes 0x12 without SGX and 0x14 (Intel PT: pt_mode=0, the kvm_intel default).
        yield _entry(fn, 0, 0, 0, 0, 0)


def _leaf_7(host: HostModel, kernel: KernelProfile, words: CapWords) -> Iterable[CpuidEntry]:
    max_idx = min(host.cpuid(7, 0)[0], 2 if kernel.has("cpuid_leaf7_subleaf2") else 1)
    yield _entry(7, 0, max_idx, words[cl.W_7_0_EBX], words[cl.W_7_0_ECX], words[cl.W_7_0_EDX])
    if max_idx >= 1:
        yield _entry(7, 1, words[cl.W_7_1_EAX], 0, words[cl.W_7_1_ECX], words[cl.W_7_1_EDX])
    if max_idx >= 2:
        yield _entry(7, 2, 0, 0, 0, words[cl.W_7_2_EDX])


def _pmu_leaf(host: HostModel, caps: KvmCaps) -> tuple[int, int, int, int]:
    """Leaf 0xA from kvm_pmu_cap: only with an architectural PMU (Intel); version capped at
    2, 8 general and 3 fixed counters (KVM_INTEL_PMC_MAX_GENERIC, KVM_PMC_MAX_FIXED), EDX[15]
    AnyThread deprecated. UNVERIFIED: perf_get_x86_pmu_capability's own limits (hybrid
    parts, perf's events mask) are not modelled; kvm_pvm reported all zero on AMD."""
    a, b, _, d = host.cpuid(0xA)
    version = a & 0xFF
    if not version or not caps.ops.arch_pmu_leaf:
        return (0, 0, 0, 0)
    gp, width, mask_len = min(a >> 8 & 0xFF, 8), a >> 16 & 0xFF, a >> 24 & 0xFF
    eax = min(version, 2) | gp << 8 | width << 16 | mask_len << 24
    edx = min(d & 0x1F, 3) | (d >> 5 & 0xFF) << 5 | 1 << 15
    return (eax, b & ((1 << mask_len) - 1), 0, edx)


def _max_extended(host: HostModel, kernel: KernelProfile) -> int:
    """0x8000_0000.EAX: capped at KVM's highest extended leaf, raised to 0x8000_0021 when
    the host has 0x8000_001D and KVM can synthesise 0x8000_0021 (f144c49e8c39)."""
    top = host.cpuid(0x8000_0000)[0]
    if not 0x8000_0000 <= top < 0x8000_0100:
        return 0x7FFF_FFFF                # no extended leaves at all
    if kernel.has("cpuid_leaf_80000022"):
        top = min(top, 0x8000_0022)
    elif kernel.has("cpuid_leaf_80000021"):
        top = min(top, 0x8000_0021)
    else:
        top = min(top, 0x8000_001F)
    if kernel.has("cpuid_leaf_80000021") and top >= 0x8000_001D and (
            kernel_has(host, "LFENCE_RDTSC") or kernel_has(host, "NO_NULL_SEG_BUG")):
        top = max(top, 0x8000_0021)
    return top


def _extended_leaf(host: HostModel, kernel: KernelProfile, caps: KvmCaps, words: CapWords,
                   fn: int, top: int) -> Iterable[CpuidEntry]:
    # do_host_cpuid: a leaf above the host's own maximum reads as zeros.
    a, b, c, d = host.cpuid(fn) if fn <= host.cpuid(0x8000_0000)[0] else (0, 0, 0, 0)
    rsvd = kernel.has("cpuid_reserved_bits_dropped")
    if fn == 0x8000_0000:
        yield _entry(fn, 0, top, b, c, d)
    elif fn == 0x8000_0001:
        yield _entry(fn, 0, a, b & ~cl.E1_EBX_DROPPED if rsvd else b, words[cl.W_E1_ECX],
                     words[cl.W_E1_EDX])
    elif fn == 0x8000_0005 and kernel.has("cpuid_leaf_80000005"):
        yield _entry(fn, 0, a, b, c, d)
    elif fn == 0x8000_0006:
        yield _entry(fn, 0, a, b, c, d & ~cl.E6_EDX_RESERVED if rsvd else d)
    elif fn == 0x8000_0007:
        yield _entry(fn, 0, 0, 0, 0, words[cl.W_E7_EDX] & d)
    elif fn == 0x8000_0008:
        yield _entry(fn, 0, _phys_bits(host, kernel, caps, a), words[cl.W_E8_EBX],
                     c & ~cl.E8_ECX_DROPPED if rsvd else c, 0)
    elif fn == 0x8000_000A and words[cl.W_E1_ECX] >> cl.BY_NAME["SVM"].bit & 1:
        yield _entry(fn, 0, 1, 8, 0, words[cl.W_EA_EDX])   # SVM revision 1, 8 ASIDs
    elif fn == 0x8000_0019:
        yield _entry(fn, 0, a, b, 0, 0)
    elif fn == 0x8000_001A:
        yield _entry(fn, 0, a & 7, 0, 0, 0)
    elif fn == 0x8000_001D:
        yield from _cache_leaf(host, fn)
    elif fn == 0x8000_001E and not kernel.has("cpuid_no_host_topology"):
        yield _entry(fn, 0, a, b, c, d)
    elif fn == 0x8000_0021:
        yield _entry(fn, 0, words[cl.W_E21_EAX], 0, words[cl.W_E21_ECX], 0)
    elif fn == 0x8000_0022 and words[cl.W_E22_EAX] & 1:
        yield _entry(fn, 0, words[cl.W_E22_EAX], min(b & 0xF, 6), 0, 0)
    else:
        # 0x8000_0002-4 (brand string), 0x8000_001F (SEV, not modelled), 0x8000_0020 and
        # every leaf __do_cpuid_func does not name: all zero.
        yield _entry(fn, 0, 0, 0, 0, 0)


def _phys_bits(host: HostModel, kernel: KernelProfile, caps: KvmCaps, eax: int) -> int:
    """0x8000_0008 EAX: PhysAddrSize, LinAddrSize (at least 48), GuestPhysAddrSize. Shadow
    paging uses the host's MAXPHYADDR and no GuestPhysAddrSize; with TDP GuestPhysAddrSize
    is capped at 48 without 5-level TDP (taken as: the host has LA57, UNVERIFIED for hosts
    that boot with no5lvl)."""
    virt = max(eax >> 8 & 0xFF, 48)
    phys = eax & 0xFF
    if not kernel.has("cpuid_guest_phys_bits"):
        return phys | virt << 8
    guest = 0
    if tdp_enabled(caps):
        guest = phys if host.has("la57") else min(phys, 48)
    return phys | virt << 8 | guest << 16


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
