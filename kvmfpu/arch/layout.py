"""Component geometry of one host, from its CPUID leaf 0xD.

Standard format: component i lives at CPUID.(EAX=0DH,ECX=i).EBX with size EAX (SDM
§13.4.2). Compacted format: the first component set in XCOMP_BV[62:2] starts at 576 and
each next one follows the previous, rounded up to 64 when CPUID.(0DH,i).ECX[1] is set
(SDM §13.4.3). Sizes for a mask follow Linux ``xstate_calculate_size`` / KVM
``xstate_required_size`` (arch/x86/kvm/cpuid.c): the maximum end offset, never below 576.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Final

from kvmfpu.arch import legacy
from kvmfpu.arch.xfeatures import XCOMP_COMPACTED, bits, name_of

CpuidRegs = tuple[int, int, int, int]

# XCR0 bits 0 and 1 have no leaf 0xD subleaf of their own: they live in the legacy region.
LEGACY_BITS: Final = 0b11


@dataclass(frozen=True, slots=True)
class Component:
    """One extended component as CPUID.(EAX=0DH,ECX=bit) describes it."""

    bit: int
    size: int          # EAX
    offset: int        # EBX: standard-format offset; 0 for supervisor components
    supervisor: bool   # ECX[0]
    align64: bool      # ECX[1]: 64-byte aligned in the compacted format
    xfd: bool          # ECX[2]: may be armed by IA32_XFD

    @classmethod
    def from_regs(cls, bit: int, regs: CpuidRegs) -> Component:
        eax, ebx, ecx, _ = regs
        return cls(bit, eax, ebx, bool(ecx & 1), bool(ecx & 2), bool(ecx & 4))


class XsaveLayout:
    """Where each state component sits, for one host."""

    def __init__(self, components: Iterable[Component], user_mask: int, supervisor_mask: int):
        self.components: Mapping[int, Component] = {c.bit: c for c in components}
        self.user_mask = user_mask            # CPUID.(0DH,0).EDX:EAX
        self.supervisor_mask = supervisor_mask  # CPUID.(0DH,1).EDX:ECX
        self._compacted: dict[int, tuple[dict[int, int], int]] = {}
        self._standard_sizes: dict[int, int] = {}

    @classmethod
    def from_leaf_d(cls, subleaf: Callable[[int], CpuidRegs]) -> XsaveLayout:
        """Build from a function returning CPUID.(EAX=0DH,ECX=n) as (eax, ebx, ecx, edx).

        Only subleaves of components the host reports as supported are read: Zen 2
        reports a size for subleaf 9 (PKRU) without supporting PKU, which must not count.
        """
        eax0, _, _, edx0 = subleaf(0)
        _, _, ecx1, edx1 = subleaf(1)
        user = eax0 | edx0 << 32
        sup = ecx1 | edx1 << 32
        comps = [Component.from_regs(b, subleaf(b))
                 for b in bits((user | sup) & ~LEGACY_BITS & ~XCOMP_COMPACTED)]
        return cls(comps, user, sup)

    @property
    def supported_mask(self) -> int:
        return self.user_mask | self.supervisor_mask

    def component(self, bit: int) -> Component:
        try:
            return self.components[bit]
        except KeyError:
            raise KeyError(f"component {name_of(bit)} (bit {bit}) is not on this host") from None

    def size(self, bit: int) -> int:
        return self.component(bit).size

    def standard_offset(self, bit: int) -> int:
        comp = self.component(bit)
        if comp.supervisor:
            raise ValueError(f"{name_of(bit)} is a supervisor component: compacted format only")
        return comp.offset

    def standard_size(self, mask: int) -> int:
        """Bytes of a standard-format area holding ``mask`` (KVM xstate_required_size(.., false))."""
        mask &= self.user_mask & ~LEGACY_BITS
        try:
            return self._standard_sizes[mask]
        except KeyError:
            pass
        end = legacy.EXTENDED
        for b in bits(mask):
            c = self.components[b]
            end = max(end, c.offset + c.size)
        self._standard_sizes[mask] = end
        return end

    def compacted(self, xcomp_bv: int) -> tuple[dict[int, int], int]:
        """Offsets of every component in XCOMP_BV[62:2], and the total size."""
        key = xcomp_bv & ~XCOMP_COMPACTED
        try:
            return self._compacted[key]
        except KeyError:
            pass
        offsets: dict[int, int] = {}
        end = legacy.EXTENDED
        for b in bits(key & ~LEGACY_BITS):
            c = self.components.get(b)
            if c is None:
                raise KeyError(f"component {name_of(b)} (bit {b}) is not on this host")
            if c.align64:
                end = (end + 63) & ~63
            offsets[b] = end
            end += c.size
        self._compacted[key] = (offsets, end)
        return offsets, end

    def compacted_offset(self, xcomp_bv: int, bit: int) -> int:
        return self.compacted(xcomp_bv)[0][bit]

    def compacted_size(self, mask: int) -> int:
        """KVM xstate_required_size(mask, true); CPUID.(0DH,1).EBX for mask = XCR0|XSS."""
        return self.compacted(mask & self.supported_mask)[1]

    def __repr__(self) -> str:
        parts = [f"{name_of(b)}@{c.offset:#x}+{c.size:#x}" for b, c in sorted(self.components.items())]
        return f"XsaveLayout({', '.join(parts)})"
