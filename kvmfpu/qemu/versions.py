"""QEMU releases: what each one does with a vCPU's xsave state under KVM, and what its
migration stream carries of it.

Each fact is one ``_Fact`` (the first release that has it and where that was read);
a ``QemuRelease`` derives its flags from them, so a fact is stated once.

- KVM_GET_XSAVE2 (kvm_init_xsave / kvm_get_xsave) and the guest AMX permission
  (kvm_request_xsave_components: ARCH_REQ_XCOMP_GUEST_PERM) came with the AMX series in
  7.0; so did reading the guest's leaf 0xD offsets from the raw host CPUID (host_cpuid in
  kvm_cpu_xsave_init). 6.1-6.2 read them from KVM_GET_SUPPORTED_CPUID (fea4500841);
  older releases used the Intel layout of struct X86XSaveArea whatever the host.
- The ``cpu`` device (target/i386/machine.c vmstate_x86_cpu) carries x87/SSE, XCR0,
  XSTATE_BV and the YMM halves in its main section and the rest in subsections, each sent
  only when its ``.needed`` holds. A destination that meets a subsection it does not know
  fails the load: vmstate_subsection_load returns -ENOENT (migration/vmstate.c).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from typing import Final

from kvmfpu.qemu.env import OffsetMode, QemuEnv
from kvmfpu.qemu.models import SYNONYMS

#: The releases modelled, oldest first.
RELEASES: Final[tuple[str, ...]] = (
    "6.0",
    "6.1",
    "6.2",
    "7.0",
    "7.1",
    "7.2",
    "8.0",
    "8.1",
    "8.2",
    "9.0",
    "9.1",
    "9.2",
    "10.0",
    "10.1",
    "10.2",
    "11.0",
)
NEWEST: Final = RELEASES[-1]

_PULL_7_0 = "qemu-devel [PULL] of 2022-03-08 for 7.0 (Paolo Bonzini), "
_PULL_11_0 = "qemu-devel [PULL] of 2025-12-27 for 11.0 (Paolo Bonzini), "


@dataclass(frozen=True)
class _Fact:
    since: str
    source: str


_XSAVE2: Final = _Fact(
    "7.0",
    _PULL_7_0 + "'x86: Use new XSAVE ioctls handling' (Jing Liu; "
    "series <20220217060434.52460-*-yang.zhong@intel.com>)",
)
_AMX_PERM: Final = _Fact(
    "7.0",
    _PULL_7_0 + "15/22 'x86: Grant AMX permission for guest' "
    "<20220217060434.52460-4-yang.zhong@intel.com>: kvm_request_xsave_components",
)
#: Still host_cpuid in 11.0: the CET series' v4 06/23 'i386/kvm: Initialize
#: x86_ext_save_areas[] based on KVM support' is absent from the v5 the 11.0 pull took.
_HOST_CPUID: Final = _Fact(
    "7.0",
    _AMX_PERM.source + " (kvm_cpu_xsave_init: host_cpuid(0xd, i)); unchanged in kvm-cpu.c "
    "@12d1a768 (10.1 era) and in 11.0 (v5 <20251211060801.3600039-*> has no v4 06/23)",
)
_KVM_SUPPORTED: Final = _Fact(
    "6.1",
    "fea4500841024195ec701713e05b92ebf667f192 'target/i386: Populate "
    "x86_ext_save_areas offsets using cpuid where possible' (D. Edmondson, "
    "[PULL 14/40] <20210706100141.303960-15-pbonzini@redhat.com>)",
)
_CET_MSRS: Final = _Fact(
    "11.0",
    _PULL_11_0 + "CET series (Zhao Liu, Yang Weijiang, Chao Gao): "
    "kvm_put_msrs/kvm_get_msrs add IA32_U_CET/S_CET/PL0-3_SSP/INT_SSP_TAB",
)
#: From 10.2 the load path reports through Error objects (Arun Menon's conversion of
#: vmstate_load_state/qemu_loadvm_state): one chained line instead of two.
_ERROR_CHAIN: Final = _Fact(
    "10.2",
    "migration/vmstate.c vmstate_subsection_load error_setg "
    "\"VM subsection '%s' in '%s' does not exist\", savevm.c error_prepend "
    "(series 2025, UNVERIFIED: the release that merged it)",
)

FACTS: Final[dict[str, _Fact]] = {
    "xsave2": _XSAVE2,
    "amx-perm": _AMX_PERM,
    "leaf-d-host-cpuid": _HOST_CPUID,
    "leaf-d-kvm-supported": _KVM_SUPPORTED,
    "cet-msrs": _CET_MSRS,
    "error-chain": _ERROR_CHAIN,
}


@dataclass(frozen=True)
class Subsection:
    """One subsection of the ``cpu`` device that carries xstate, in stream order."""

    name: str
    since: str
    needed: str  # the .needed function and the guest state that makes it true
    source: str


_OLD = "present long before 6.0 (target/i386/machine.c, e.g. @06b43e082c6b)"
SUBSECTIONS: Final[tuple[Subsection, ...]] = (
    Subsection(
        "cpu/mpx",
        RELEASES[0],
        "mpx_needed: a BND register, BNDCFGU/BNDSTATUS or MSR_BNDCFGS is non-zero",
        _OLD,
    ),
    Subsection(
        "cpu/avx512",
        RELEASES[0],
        "avx512_needed: an opmask register, a ZMM_Hi256 or a Hi16_ZMM half is non-zero",
        _OLD,
    ),
    Subsection("cpu/xss", RELEASES[0], "xss_needed: IA32_XSS is non-zero", _OLD),
    Subsection("cpu/pkru", RELEASES[0], "pkru_needed: PKRU is non-zero", _OLD),
    Subsection(
        "cpu/msr_xfd",
        "7.0",
        "xfd_msrs_needed: the guest CPUID has XFD (CPUID.(0xD,1).EAX[4])",
        _PULL_7_0 + "19/22 'x86: Support XFD and AMX xsave data "
        "migration' <20220308113445.859669-20-pbonzini@redhat.com>",
    ),
    Subsection(
        "cpu/intel_amx_xtile",
        "7.0",
        "amx_xtile_needed: the guest CPUID has AMX-TILE (CPUID.(7,0).EDX[24])",
        _PULL_7_0 + "19/22 (same patch)",
    ),
    Subsection(
        "cpu/msr_pl0_ssp",
        "11.0",
        "pl0_ssp_needed: IA32_PL0_SSP is non-zero",
        _PULL_11_0 + "088/153 'i386/cpu: Migrate MSR_IA32_PL0_SSP for FRED and CET-SHSTK' "
        "<20251227094759.35658-14-pbonzini@redhat.com>",
    ),
    Subsection(
        "cpu/cet",
        "11.0",
        "cet_needed: the guest CPUID has CET-SS or CET-IBT (sub-subsection cpu/cet_shstk with CET-SS)",
        _PULL_11_0 + "089/153 'i386/machine: "
        "Add vmstate for cet-shstk and cet-ibt' <20251227094759.35658-15-pbonzini@redhat.com>",
    ),
    Subsection(
        "cpu/apx",
        "11.0",
        "apx_needed: the guest CPUID has APX-F (CPUID.(7,1).EDX[21])",
        _PULL_11_0 + "101/153 'i386/cpu: Add APX migration support' "
        "<20251227094759.35658-27-pbonzini@redhat.com>",
    ),
)
_BY_NAME: Final = {s.name: s for s in SUBSECTIONS}


class UnknownVersion(ValueError):
    """A QEMU version this model does not know."""


def series(version: str) -> tuple[int, int]:
    """``"7.2.1"`` -> (7, 2): the release series, for ordering."""
    major, minor = version.split(".")[:2]
    return int(major), int(minor)


@dataclass(frozen=True)
class QemuRelease:
    version: str  # "7.2" (the patch level does not change what is modelled)

    def _has(self, fact: _Fact | Subsection) -> bool:
        return series(self.version) >= series(fact.since)

    @property
    def has_xsave2(self) -> bool:
        return self._has(_XSAVE2)

    @property
    def asks_amx_perm(self) -> bool:
        return self._has(_AMX_PERM)

    @property
    def xfd_msrs(self) -> bool:
        """kvm_put_msrs/kvm_get_msrs carry IA32_XFD and IA32_XFD_ERR (same patch as
        cpu/msr_xfd)."""
        return "cpu/msr_xfd" in self.subsections

    @property
    def cet_msrs(self) -> bool:
        return self._has(_CET_MSRS)

    @property
    def leaf_d_offsets(self) -> OffsetMode:
        """Where x86_ext_save_areas[].offset comes from, so where QEMU lays the buffer."""
        if self._has(_HOST_CPUID):
            return "host-cpuid"
        return "kvm-supported" if self._has(_KVM_SUPPORTED) else "intel-fixed"

    @property
    def subsections(self) -> frozenset[str]:
        """The xstate subsections this release knows (can send and can load)."""
        return frozenset(s.name for s in SUBSECTIONS if self._has(s))

    @property
    def chained_errors(self) -> bool:
        return self._has(_ERROR_CHAIN)

    def __str__(self) -> str:
        return f"QEMU {self.version}"


_VERSION = re.compile(r"(\d+)\.(\d+)(?:\.(\d+))?")


@cache
def release(text: str) -> QemuRelease:
    """``"7.2"``, ``"7.2.1"`` or ``"8.2.0"``: the modelled release of that series."""
    m = _VERSION.fullmatch(text.strip())
    series = f"{int(m[1])}.{int(m[2])}" if m else None
    if series not in RELEASES:
        raise UnknownVersion(
            f"unknown QEMU version {text!r} (modelled: {', '.join(RELEASES)}; "
            "a patch level such as 7.2.1 is accepted)"
        )
    return QemuRelease(series)


def _feature(name: str) -> str:
    return SYNONYMS.get(name, name)


@dataclass(frozen=True)
class GuestState:
    """What a source QEMU's .needed functions look at: the guest CPUID's QEMU feature names
    (``xfd``, ``amx-tile``, ``cet-ss``, ``cet-ibt``, ``apxf``; Linux spellings accepted) and
    the register values QEMU holds in CPUX86State."""

    features: frozenset[str] = frozenset()
    xss: int = 0
    pkru: int = 0
    pl0_ssp: int = 0
    avx512_live: bool = False  # an opmask, ZMM_Hi256 or Hi16_ZMM value is non-zero
    mpx_live: bool = False  # a BND register, BNDCSR or MSR_BNDCFGS is non-zero

    def __post_init__(self) -> None:
        object.__setattr__(self, "features", frozenset(_feature(f) for f in self.features))

    @classmethod
    def of(
        cls,
        features: frozenset[str] | set[str],
        env: QemuEnv | None = None,
        pl0_ssp: int = 0,
        bndcfgs: int = 0,
    ) -> GuestState:
        """From QEMU's fields (kvm_arch_get_registers filled ``env``) and the guest CPUID."""
        if env is None:
            return cls(frozenset(features), pl0_ssp=pl0_ssp, mpx_live=bool(bndcfgs))
        avx512 = any(env.opmask) or any(z >> 256 for z in env.zmm[:16]) or any(env.zmm[16:])
        mpx = any(lb or ub for lb, ub in env.bnd) or bool(env.bndcfgu or env.bndstatus or bndcfgs)
        return cls(frozenset(features), env.xss, env.pkru, pl0_ssp, avx512, mpx)

    def needs(self, name: str) -> bool:
        """The subsection's .needed function on this state."""
        has = self.features.__contains__
        return {
            "cpu/mpx": self.mpx_live,
            "cpu/avx512": self.avx512_live,
            "cpu/xss": self.xss != 0,
            "cpu/pkru": self.pkru != 0,
            "cpu/msr_xfd": has("xfd"),
            "cpu/intel_amx_xtile": has("amx-tile"),
            "cpu/msr_pl0_ssp": self.pl0_ssp != 0,
            "cpu/cet": has("cet-ss") or has("cet-ibt"),
            "cpu/apx": has("apxf"),
        }[name]


def subsections_sent(rel: QemuRelease | str, guest: GuestState) -> list[str]:
    """The xstate subsections ``rel`` writes for vCPU 0, in stream order (vmstate_x86_cpu's
    .subsections array; vmstate_subsection_save skips those whose .needed is false)."""
    r = release(rel) if isinstance(rel, str) else rel
    known = r.subsections
    return [s.name for s in SUBSECTIONS if s.name in known and guest.needs(s.name)]


def load_error(dst: QemuRelease | str, subsections: list[str]) -> str | None:
    """What a destination QEMU prints when the stream holds ``subsections`` (in stream
    order), or None when it loads them all. The first unknown one stops the load:
    vmstate_subsection_load -> -ENOENT, qemu_loadvm_section_start_full reports the
    device instance (vCPU 0 is instance 0x0), process_incoming_migration_co the errno."""
    r = release(dst) if isinstance(dst, str) else dst
    unknown = [s for s in subsections if s not in r.subsections]
    if not unknown:
        return None
    first = unknown[0]
    dev = "error while loading state for instance 0x0 of device 'cpu'"
    if r.chained_errors:
        return (
            f"qemu-system-x86_64: load of migration failed: No such file or directory: {dev}: "
            f"VM subsection '{first}' in 'cpu' does not exist"
        )
    return (
        f"qemu-system-x86_64: {dev}\nqemu-system-x86_64: load of migration failed: No such file or directory"
    )


def subsection(name: str) -> Subsection:
    return _BY_NAME[name]
