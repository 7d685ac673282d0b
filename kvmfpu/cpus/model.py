"""A host CPU model: a real CPUID dump plus what kvmfpu derives from it."""

from __future__ import annotations

import struct
from collections.abc import Mapping
from functools import cached_property
from typing import Any

from kvmfpu.arch.layout import XsaveLayout
from kvmfpu.arch.xfeatures import bits, describe_mask
from kvmfpu.cpus.behaviour import CoreBehaviour, behaviour_for
from kvmfpu.cpus.dumps import CpuidKey, CpuidRegs
from kvmfpu.cpus.features import FEATURES, INDEXED_LEAVES


class HostModel:
    """One processor as its CPUID describes it. Immutable; share freely."""

    def __init__(self, table: Mapping[CpuidKey, CpuidRegs], *, name: str, title: str | None = None,
                 source: Mapping[str, Any] | None = None, mxcsr_mask: int | None = None):
        self.name = name
        self._table = dict(table)
        self.source: dict[str, Any] = dict(source or {})
        self._mxcsr_override = mxcsr_mask
        self._indexed = INDEXED_LEAVES | {leaf for (leaf, sub) in self._table if sub}
        self.title = title or self.brand or name

    # -- raw CPUID -------------------------------------------------------------------------
    def cpuid(self, leaf: int, subleaf: int = 0) -> CpuidRegs:
        """The dumped CPUID output (all zero for leaves the dump lacks)."""
        if leaf not in self._indexed:
            subleaf = 0
        return self._table.get((leaf, subleaf), (0, 0, 0, 0))

    @property
    def table(self) -> Mapping[CpuidKey, CpuidRegs]:
        return self._table

    def has(self, feature: str) -> bool:
        fb = FEATURES[feature]
        return bool(self.cpuid(fb.leaf, fb.subleaf)[fb.reg] >> fb.bit & 1)

    @cached_property
    def features(self) -> frozenset[str]:
        return frozenset(n for n in FEATURES if self.has(n))

    # -- identity --------------------------------------------------------------------------
    @cached_property
    def vendor(self) -> str:
        _, b, c, d = self.cpuid(0)
        return struct.pack("<III", b, d, c).decode("latin-1").rstrip("\0")

    @cached_property
    def signature(self) -> tuple[int, int, int]:
        """(family, model, stepping) with the extended fields folded in (SDM CPUID leaf 1)."""
        eax = self.cpuid(1)[0]
        base_family = eax >> 8 & 0xF
        family = base_family + (eax >> 20 & 0xFF if base_family == 0xF else 0)
        model = eax >> 4 & 0xF
        if base_family in (0x6, 0xF):
            model |= (eax >> 16 & 0xF) << 4
        return family, model, eax & 0xF

    @cached_property
    def brand(self) -> str:
        raw = b"".join(struct.pack("<IIII", *self.cpuid(leaf))
                       for leaf in (0x8000_0002, 0x8000_0003, 0x8000_0004))
        return raw.decode("latin-1").replace("\0", "").strip()

    # -- XSAVE -----------------------------------------------------------------------------
    @cached_property
    def layout(self) -> XsaveLayout:
        if not self.has("xsave"):
            return XsaveLayout([], 0, 0)
        return XsaveLayout.from_leaf_d(lambda sub: self.cpuid(0xD, sub))

    @property
    def supported_xcr0(self) -> int:
        """CPUID.(EAX=0DH,ECX=0):EDX:EAX — the XCR0 bits XSETBV accepts."""
        return self.layout.user_mask

    @property
    def supported_xss(self) -> int:
        """CPUID.(EAX=0DH,ECX=1):EDX:ECX — the IA32_XSS bits WRMSR accepts."""
        return self.layout.supervisor_mask if self.has("xsaves") else 0

    @cached_property
    def xfd_capable(self) -> int:
        """Components IA32_XFD may arm: CPUID.(0DH,i):ECX[2], when XFD itself is enumerated."""
        if not self.has("xfd"):
            return 0
        return sum(1 << b for b, c in self.layout.components.items() if c.xfd)

    @cached_property
    def behaviour(self) -> CoreBehaviour:
        beh = behaviour_for(self.vendor, misalignsse=self.has("misalignsse"),
                            zero_fcs_fds=self.has("zero_fcs_fds"))
        if self._mxcsr_override is not None:
            from dataclasses import replace
            beh = replace(beh, mxcsr_mask=self._mxcsr_override)
        return beh

    def describe(self) -> dict[str, Any]:
        """A JSON-ready summary (``kvmfpu cpus --json``)."""
        fam, mod, step = self.signature
        lay = self.layout
        return {
            "name": self.name,
            "title": self.title,
            "vendor": self.vendor,
            "family": fam,
            "model": mod,
            "stepping": step,
            "feature_words": {
                "leaf1": {"ecx": f"{self.cpuid(1)[2]:#010x}", "edx": f"{self.cpuid(1)[3]:#010x}"},
                "leaf7.0": {r: f"{v:#010x}" for r, v in zip(("ebx", "ecx", "edx"),
                                                             self.cpuid(7, 0)[1:], strict=True)},
                "leaf7.1": {"eax": f"{self.cpuid(7, 1)[0]:#010x}", "edx": f"{self.cpuid(7, 1)[3]:#010x}"},
                "leaf0xd.1": {"eax": f"{self.cpuid(0xD, 1)[0]:#010x}"},
            },
            "leaf_0xd": {str(sub): [f"{v:#010x}" for v in self.cpuid(0xD, sub)]
                         for (leaf, sub) in sorted(self._table) if leaf == 0xD},
            "xsave": self.has("xsave"),
            "supported_xcr0": f"{self.supported_xcr0:#x}",
            "supported_xss": f"{self.supported_xss:#x}",
            "xsave_features": sorted(n for n in ("xsaveopt", "xsavec", "xgetbv1", "xsaves", "xfd")
                                     if self.has(n)),
            "standard_size": lay.standard_size(self.supported_xcr0) if lay.user_mask else 512,
            "compacted_size": (lay.compacted_size(self.supported_xcr0 | self.supported_xss)
                               if lay.user_mask else 512),
            "components": {
                str(b): {"size": c.size, "offset": c.offset, "supervisor": c.supervisor,
                         "align64": c.align64, "xfd": c.xfd}
                for b, c in sorted(lay.components.items())
            },
            "source": self.source,
        }

    def __repr__(self) -> str:
        return (f"HostModel({self.name!r}, {self.vendor}, xcr0={describe_mask(self.supported_xcr0)},"
                f" xss={self.supported_xss:#x})")

    def components_in(self, mask: int) -> list[int]:
        return [b for b in bits(mask) if b in self.layout.components or b < 2]
