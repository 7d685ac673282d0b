"""A host CPU model: a real CPUID dump plus what kvmfpu derives from it.

Whose CPUID (``cpuid_view``):

* ``"host"``: the processor as the host kernel sees it (``cpuid -r``, libvirt cputestdata,
  ``--host this``). Inside a virtual machine that is the CPUID its hypervisor presents, which
  is also what a KVM running there builds KVM_GET_SUPPORTED_CPUID from.
* ``"firecracker-guest"``: a Firecracker fingerprint's CPUID, i.e. the GUEST's CPUID under
  Firecracker on that host: KVM_GET_SUPPORTED_CPUID of the host's kernel (already the host's
  CPUID masked by what that KVM virtualises, kvm_set_cpu_caps) after Firecracker's
  normalisation (src/vmm/src/cpu_config/x86_64/cpuid/{normalize,amd/normalize,intel/normalize}.rs
  at 81b38b9dad60). The host's raw CPUID is unknown. What follows for verdicts:
  a bit set here is set on the host too (KVM reports no XSAVE component or feature the host
  lacks, apart from the bits it emulates and those Firecracker forces: hypervisor,
  tsc-deadline, Intel FDP_EXCPTN_ONLY/ZERO_FCS_FDS, AMD TOPOEXT); a bit clear here may still be
  on the host, hidden by that kernel's KVM or by Firecracker (e.g. IA32_XSS components a 6.1
  KVM does not support, WAITPKG, ARCH_CAPABILITIES on AMD). Verdicts at the fingerprint's own
  kernel are as faithful as the fingerprint; at another kernel they can miss what only that
  kernel would expose. Leaf 0xD subleaf 0/1 EBX and leaf 1 OSXSAVE are the vCPU's values at
  dump time (XCR0, CR4), not capabilities; kvmfpu derives sizes from the components.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from functools import cached_property
from typing import Any

from kvmfpu.arch.layout import XsaveLayout
from kvmfpu.arch.xfeatures import bits, describe_mask
from kvmfpu.cpus.behaviour import CoreBehaviour, behaviour_for
from kvmfpu.cpus.dumps import FORMAT, CpuidKey, CpuidRegs, cpuid_rows, msrs_json
from kvmfpu.cpus.features import FEATURES, INDEXED_LEAVES


class HostModel:
    """One processor as its CPUID describes it. Immutable; share freely."""

    def __init__(self, table: Mapping[CpuidKey, CpuidRegs], *, name: str, title: str | None = None,
                 source: Mapping[str, Any] | None = None, mxcsr_mask: int | None = None,
                 kernel: str | None = None, microcode: str | None = None,
                 cpuid_view: str = "host", msrs: Mapping[int, int] | None = None):
        self.name = name
        #: `uname -r` of the kernel the description was read under (a capture, a Firecracker
        #: fingerprint's kernel_version), else None: the default kernel for HOST[@KERNEL].
        self.kernel = kernel
        #: The microcode revision as /proc/cpuinfo prints it ("0xa101158"), when recorded.
        self.microcode = microcode
        #: Whose CPUID the table is: "host" or "firecracker-guest" (see the module docstring).
        self.cpuid_view = cpuid_view
        #: MSR values the description recorded (a fingerprint's guest MSRs at boot), by index.
        self.msrs: Mapping[int, int] = dict(msrs or {})
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
                            zero_fcs_fds=self.has("zero_fcs_fds"), la57=self.has("la57"))
        if self._mxcsr_override is not None:
            from dataclasses import replace
            beh = replace(beh, mxcsr_mask=self._mxcsr_override)
        return beh

    def describe(self) -> dict[str, Any]:
        """A JSON-ready summary (``kvmfpu cpus --json``)."""
        fam, mod, step = self.signature
        lay = self.layout
        return {
            "format": FORMAT,
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
            "cpuid_view": self.cpuid_view,
            "kernel": self.kernel,
            "microcode": self.microcode,
            **({"mxcsr_mask": f"{self._mxcsr_override:#x}"} if self._mxcsr_override is not None
               else {}),
            **({"msrs": msrs_json(self.msrs)} if self.msrs else {}),
            # The table itself, so that this object loads back (kvmfpu.cpus.load).
            "cpuid": cpuid_rows(self._table),
        }

    def __repr__(self) -> str:
        return (f"HostModel({self.name!r}, {self.vendor}, xcr0={describe_mask(self.supported_xcr0)},"
                f" xss={self.supported_xss:#x})")

    def components_in(self, mask: int) -> list[int]:
        return [b for b in bits(mask) if b in self.layout.components or b < 2]
