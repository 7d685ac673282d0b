"""QEMU's view of what KVM supports, and its ``host`` CPU model, over a :class:`Kvm`.

Functions of a :class:`kvmfpu.kvm.system.Kvm` (the model) or of ``kvmfpu.open_kvm()`` (the
real /dev/kvm, same methods), following QEMU's target/i386 code (qemu/qemu @00001a22d183,
read for this module):

- :func:`supported_words` is ``x86_cpu_get_supported_feature_word`` for every CPUID feature
  word: ``kvm_arch_get_supported_cpuid`` (target/i386/kvm/kvm.c), i.e. the register of
  KVM_GET_SUPPORTED_CPUID plus QEMU's fix-ups, listed in :data:`FIXUPS`;
- :func:`host_expansion` is ``query-cpu-model-expansion`` of model ``host`` (the
  ``max_features`` path of ``x86_cpu_expand_features``): every feature property is on when
  its bits are supported, not ``no_autoenable``, and -- with ``migratable=on``, the default of
  ``host`` -- migratable; then one pass over ``feature_dependencies[]`` clears what lost a
  feature it needs. A property that owns several bits ("kvmclock") is on when all are set
  (x86_cpu_get_bit_prop).

Not modelled, on purpose and said so:

- the MSR feature words (FEAT_ARCH_CAPABILITIES, FEAT_CORE_CAPABILITY,
  FEAT_PERF_CAPABILITIES, FEAT_VMX_*): QEMU reads them with a system-level KVM_GET_MSRS
  (``kvm_arch_get_supported_msr_feature``), which neither the model nor the real backend
  here offers. They are absent from :func:`supported_words`, and their properties
  (``vmx-*``, ``rdctl-no``, ``taa-no``, ...) are absent from :func:`host_expansion`;
- the MONITOR fix-up of ``-overcommit cpu-pm=on`` and confidential guests (SEV/TDX masks).

KVM_CAP_TSC_DEADLINE_TIMER is an answer the model's check_extension does not give: for the
model it is taken as 1 (every kernel modelled, 5.15 on, has the in-kernel LAPIC's deadline
timer, KVM_CAP 72 of Linux 3.2); the real device is asked. QEMU's has_msr_arch_capabs
(MSR_IA32_ARCH_CAPABILITIES in KVM_GET_MSR_INDEX_LIST; without it leaf 7 EDX
arch-capabilities is cleared) reads the model's whole list, ``msr_index_list_all()``
(``get_msr_index_list()`` there lists only the xstate MSRs). KVM_CAP_SYS_ATTRIBUTES is taken
from whether KVM_GET_DEVICE_ATTR(KVM_X86_XCOMP_GUEST_SUPP) answers (both 5.17).
"""

from __future__ import annotations

import errno
from collections.abc import Callable, Mapping
from functools import cache
from typing import Any, Final, Protocol

from kvmfpu.qemu.features import FEATURES, WORDS, FeatureWord, apply_dependencies

#: Most answers kept per cache below (one per host x kernel x permission in use).
CACHE_SIZE: Final = 4096

KVM_CAP_TSC_DEADLINE_TIMER: Final = 72
KVM_CAP_SYS_ATTRIBUTES: Final = 209
KVM_X86_XCOMP_GUEST_SUPP: Final = 0
MSR_IA32_ARCH_CAPABILITIES: Final = 0x10A
KVM_CPUID_FEATURES: Final = 0x4000_0001

# Register numbers as in kvmfpu.cpus.features / FeatureWord.reg.
EAX, EBX, ECX, EDX = 0, 1, 2, 3

IRQCHIP_MODES: Final = ("on", "split", "off")

#: kvm_arch_get_supported_cpuid's fix-ups, in its order: (leaf, subleaf or None, reg, what).
FIXUPS: Final[tuple[tuple[int, int | None, int, str], ...]] = (
    (1, None, EDX, "|= MTRR | PAT | MCE | MCA"),
    (
        1,
        None,
        ECX,
        "|= HYPERVISOR; |= TSC_DEADLINE with the in-kernel irqchip and "
        "KVM_CAP_TSC_DEADLINE_TIMER; &= ~X2APIC without the in-kernel irqchip",
    ),
    (6, None, EAX, "|= ARAT"),
    (7, 0, EBX, "|= host ERMS; &= ~(RTM | HLE) where host_tsx_broken()"),
    (7, 0, EDX, "|= host FSRM; &= ~ARCH_CAPABILITIES without MSR 0x10a in KVM_GET_MSR_INDEX_LIST"),
    (7, 1, EAX, "|= host FZRM | FSRS | FSRC"),
    (7, 2, EDX, "|= host MCDT_NO"),
    (0xD, 0, EAX, "= KVM_GET_DEVICE_ATTR(KVM_X86_XCOMP_GUEST_SUPP) bits 0-31 (KVM_CAP_SYS_ATTRIBUTES)"),
    (0xD, 0, EDX, "= KVM_GET_DEVICE_ATTR(KVM_X86_XCOMP_GUEST_SUPP) bits 32-63"),
    (0x8000_0001, None, ECX, "|= TOPOEXT"),
    (0x8000_0001, None, EDX, "|= supported leaf 1 EDX & CPUID_EXT2_AMD_ALIASES"),
    (0x8000_0007, None, EBX, "|= host OVERFLOW_RECOV | SUCCOR (UNVERIFIED: see supported_words)"),
    (
        KVM_CPUID_FEATURES,
        None,
        EAX,
        "&= ~PV_UNHALT without the in-kernel irqchip; |= MSI_EXT_DEST_ID with kernel-irqchip=split",
    ),
    (KVM_CPUID_FEATURES, None, EDX, "|= KVM_HINTS_REALTIME"),
)

_MTRR, _PAT, _MCE, _MCA = 1 << 12, 1 << 16, 1 << 7, 1 << 14
_HYPERVISOR, _TSC_DEADLINE, _X2APIC = 1 << 31, 1 << 24, 1 << 21
_ARAT = 1 << 2
_ERMS, _RTM, _HLE = 1 << 9, 1 << 11, 1 << 4
_FSRM, _ARCH_CAPABILITIES = 1 << 4, 1 << 29
_FZRM, _FSRS, _FSRC = 1 << 10, 1 << 11, 1 << 12
_MCDT_NO = 1 << 5
_TOPOEXT = 1 << 22
_AMD_ALIASES = 0x0183_F3FF  # CPUID_EXT2_AMD_ALIASES
_OVERFLOW_RECOV, _SUCCOR = 1 << 0, 1 << 1
_PV_UNHALT, _MSI_EXT_DEST_ID = 1 << 7, 1 << 15
_HINTS_REALTIME = 1 << 0


class KvmLike(Protocol):
    """What this module needs of /dev/kvm (kvmfpu.kvm.system.Kvm, kvmfpu.real.RealKvm)."""

    def get_supported_cpuid(self) -> list[Any]: ...
    def check_extension(self, cap: int) -> int: ...
    def get_msr_index_list(self) -> list[int]: ...
    def get_device_attr(self, group: int, attr: int) -> int: ...


def _host_cpuid(kvm: KvmLike) -> Callable[[int, int], tuple[int, int, int, int]]:
    """host_cpuid(): the model's host, or this machine's CPUID for the real device."""
    host = getattr(kvm, "host", None)
    if host is not None:
        return lambda leaf, sub: tuple(host.cpuid(leaf, sub))
    from kvmfpu.native.xsave_probe import cpuid

    def real(leaf: int, sub: int) -> tuple[int, int, int, int]:
        top = cpuid(leaf & 0x8000_0000)[0]
        if leaf > top:
            return (0, 0, 0, 0)
        a, b, c, d = cpuid(leaf, sub)
        return (a, b, c, d)

    return real


def _is_model(kvm: KvmLike) -> bool:
    from kvmfpu.kvm.system import Kvm

    return isinstance(kvm, Kvm)


def _tsc_deadline_cap(kvm: KvmLike) -> bool:
    return _is_model(kvm) or bool(kvm.check_extension(KVM_CAP_TSC_DEADLINE_TIMER))


def _has_msr_arch_capabs(kvm: KvmLike) -> bool:
    """kvm_get_supported_msrs: MSR_IA32_ARCH_CAPABILITIES in KVM_GET_MSR_INDEX_LIST."""
    if _is_model(kvm):
        full = getattr(kvm, "msr_index_list_all", None)
        if full is None:  # an older model without the whole list: Linux 5.0 on has the MSR
            return True
        return MSR_IA32_ARCH_CAPABILITIES in full()
    return MSR_IA32_ARCH_CAPABILITIES in kvm.get_msr_index_list()


def _xcomp_guest_supp(kvm: KvmLike) -> int | None:
    """KVM_GET_DEVICE_ATTR(KVM_X86_XCOMP_GUEST_SUPP), None without KVM_CAP_SYS_ATTRIBUTES."""
    if not _is_model(kvm) and not kvm.check_extension(KVM_CAP_SYS_ATTRIBUTES):
        return None
    try:
        return kvm.get_device_attr(0, KVM_X86_XCOMP_GUEST_SUPP)
    except OSError as e:  # KvmError is an OSError; the model before 5.17
        if e.errno in (errno.EINVAL, errno.ENXIO, errno.ENOTTY):
            return None
        raise


def _host_tsx_broken(host_cpuid: Callable[[int, int], tuple[int, int, int, int]]) -> bool:
    """host_tsx_broken(): Haswell parts whose TSX microcode erratum QEMU knows."""
    _, b, c, d = host_cpuid(0, 0)
    if (b, d, c) != (0x756E_6547, 0x4965_6E69, 0x6C65_746E):  # GenuineIntel
        return False
    eax = host_cpuid(1, 0)[0]
    family = (eax >> 8) & 0xF
    if family == 0xF:
        family += (eax >> 20) & 0xFF
    model = ((eax >> 4) & 0xF) | ((eax >> 12) & 0xF0)
    stepping = eax & 0xF
    return family == 6 and ((model == 63 and stepping < 4) or model in (60, 69, 70))


class _Supported:
    """kvm_arch_get_supported_cpuid for one Kvm (KVM_GET_SUPPORTED_CPUID read once)."""

    def __init__(self, kvm: KvmLike, irqchip: str):
        if irqchip not in IRQCHIP_MODES:
            raise ValueError(f"irqchip {irqchip!r} is not one of {', '.join(IRQCHIP_MODES)}")
        self.kvm = kvm
        self.in_kernel = irqchip != "off"
        self.split = irqchip == "split"
        self.entries: dict[tuple[int, int], tuple[int, int, int, int]] = {}
        for e in kvm.get_supported_cpuid():
            # cpuid_find_entry: the first entry with this function and index (QEMU asks for
            # index 0 of the leaves that take none, which is what KVM fills in).
            self.entries.setdefault((e.function, e.index), (e.eax, e.ebx, e.ecx, e.edx))
        self.host_cpuid = _host_cpuid(kvm)

    def raw(self, leaf: int, sub: int, reg: int) -> int:
        regs = self.entries.get((leaf, sub))
        return regs[reg] if regs else 0

    def get(self, leaf: int, sub: int, reg: int) -> int:
        ret = self.raw(leaf, sub, reg)
        host = self.host_cpuid
        if leaf == 1 and reg == EDX:
            ret |= _MTRR | _PAT | _MCE | _MCA
        elif leaf == 1 and reg == ECX:
            ret |= _HYPERVISOR
            if self.in_kernel and _tsc_deadline_cap(self.kvm):
                ret |= _TSC_DEADLINE
            if not self.in_kernel:
                ret &= ~_X2APIC
        elif leaf == 6 and reg == EAX:
            ret |= _ARAT
        elif leaf == 7 and sub == 0 and reg == EBX:
            ret |= host(7, 0)[EBX] & _ERMS
            if _host_tsx_broken(host):
                ret &= ~(_RTM | _HLE)
        elif leaf == 7 and sub == 0 and reg == EDX:
            ret |= host(7, 0)[EDX] & _FSRM
            if not _has_msr_arch_capabs(self.kvm):
                ret &= ~_ARCH_CAPABILITIES
        elif leaf == 7 and sub == 1 and reg == EAX:
            ret |= host(7, 1)[EAX] & (_FZRM | _FSRS | _FSRC)
        elif leaf == 7 and sub == 2 and reg == EDX:
            ret |= host(7, 2)[EDX] & _MCDT_NO
        elif leaf == 0xD and sub == 0 and reg in (EAX, EDX):
            xcr0 = _xcomp_guest_supp(self.kvm)
            if xcr0 is not None:
                ret = xcr0 & 0xFFFF_FFFF if reg == EAX else xcr0 >> 32
        elif leaf == 0x8000_0001 and reg == ECX:
            ret |= _TOPOEXT
        elif leaf == 0x8000_0001 and reg == EDX:
            ret |= self.get(1, 0, EDX) & _AMD_ALIASES
        elif leaf == 0x8000_0007 and reg == EBX:
            ret |= host(0x8000_0007, 0)[EBX] & (_OVERFLOW_RECOV | _SUCCOR)
        elif leaf == KVM_CPUID_FEATURES and reg == EAX:
            if not self.in_kernel:
                ret &= ~_PV_UNHALT
            if self.split:
                ret |= _MSI_EXT_DEST_ID
        elif leaf == KVM_CPUID_FEATURES and reg == EDX:
            ret |= _HINTS_REALTIME
        return ret


def _cpuid_words() -> tuple[FeatureWord, ...]:
    return tuple(w for w in WORDS if w.leaf is not None)


def model_key(kvm: Any) -> tuple[Any, ...] | None:
    """Everything a modelled /dev/kvm's answers here are a function of: the host model
    (immutable, shared by identity), the kernel profile, the vendor module, KVM's caps and
    FPU configuration, and the process's guest permission (KVM_GET_SUPPORTED_CPUID's leaf
    0xD follows it since 5.17). None for anything else (the real device, test doubles):
    those are always asked."""
    from kvmfpu.kvm.system import Kvm

    if type(kvm) is not Kvm:
        return None
    return (kvm.host, kvm.kernel, kvm.flavor, kvm.caps, kvm.hk.cfg, kvm.process.guest_perm.state_perm)


def remember(cache: dict[Any, Any], key: Any, value: Any) -> None:
    if len(cache) >= CACHE_SIZE:
        cache.clear()  # a bound on memory; the answers are recomputed exactly
    cache[key] = value


_WORDS_CACHE: dict[tuple[Any, ...], dict[str, int]] = {}
_FEATURES_CACHE: dict[tuple[Any, ...], frozenset[str]] = {}
_EXPANSION_CACHE: dict[tuple[Any, ...], dict[str, bool]] = {}


def supported_words(kvm: KvmLike, *, migratable: bool = False, irqchip: str = "on") -> dict[str, int]:
    """FeatureWord.word -> x86_cpu_get_supported_feature_word(cpu, w) for the CPUID words.

    ``migratable`` masks with x86_cpu_get_migratable_flags (named, not unmigratable bits),
    as for a CPU with ``migratable=on``; False (the default) is the bare KVM answer.
    ``irqchip`` is the machine's kernel-irqchip: "on" (the in-kernel irqchip; what
    ``-machine none``, libvirt's probe, gets), "split" or "off". MSR words are left out.

    UNVERIFIED: leaf 0x8000_0007 EBX. The kvm.c read (@00001a22d183) ORs OVERFLOW_RECOV and
    SUCCOR in unconditionally; every libvirt capture of an Intel host from a QEMU that names
    them (up to the 10.2 names) has both off, the AMD ones on, as a fix-up masked by the
    host's CPUID gives (a posted change to host_cpuid() & bits). This follows the captures."""
    key = model_key(kvm)
    if key is not None:
        key = (*key, migratable, irqchip)
        hit = _WORDS_CACHE.get(key)
        if hit is None:
            hit = _supported_words(kvm, migratable, irqchip)
            remember(_WORDS_CACHE, key, hit)
        return dict(hit)  # callers change their copy (expanded_words)
    return _supported_words(kvm, migratable, irqchip)


def _supported_words(kvm: KvmLike, migratable: bool, irqchip: str) -> dict[str, int]:
    sup = _Supported(kvm, irqchip)
    out: dict[str, int] = {}
    for w in _cpuid_words():
        assert w.leaf is not None
        r = sup.get(w.leaf, w.subleaf, w.reg)
        if migratable:
            r &= ~w.unmigratable
        out[w.word] = r
    return out


@cache
def _prop_masks() -> dict[str, tuple[FeatureWord, int]]:
    out: dict[str, tuple[FeatureWord, int]] = {}
    for name, (w, _) in FEATURES.items():
        if w.leaf is None:
            continue
        out[name] = (w, sum(1 << i for i, n in enumerate(w.names) if n == name))
    return out


def _props(words: Mapping[str, int]) -> dict[str, bool]:
    return {name: words[w.word] & m == m for name, (w, m) in _prop_masks().items()}


def supported_features(kvm: KvmLike, *, irqchip: str = "on") -> frozenset[str]:
    """Canonical QEMU names of the CPUID-word features KVM (with QEMU's fix-ups) supports."""
    key = model_key(kvm)
    hit = None if key is None else _FEATURES_CACHE.get(key := (*key, irqchip))
    if hit is None:
        hit = frozenset(n for n, on in _props(supported_words(kvm, irqchip=irqchip)).items() if on)
        if key is not None:
            remember(_FEATURES_CACHE, key, hit)
    return hit


def expanded_words(kvm: KvmLike, migratable: bool = True, *, irqchip: str = "on") -> dict[str, int]:
    """env->features[] of ``-cpu host`` after x86_cpu_expand_features (CPUID words only)."""
    words = supported_words(kvm, migratable=migratable, irqchip=irqchip)
    for w in _cpuid_words():
        words[w.word] &= ~w.no_autoenable
    on = {n for n, v in _props(words).items() if v}
    for name in apply_dependencies(on):
        w, m = _prop_masks()[name]
        words[w.word] &= ~m
    return words


def host_expansion(kvm: KvmLike, migratable: bool = True, *, irqchip: str = "on") -> dict[str, bool]:
    """query-cpu-model-expansion of ``host``: every CPUID-word feature property -> on/off.

    MSR-word properties (``vmx-*``, ARCH_CAPABILITIES bits, ...) are not included: see the
    module docstring."""
    key = model_key(kvm)
    hit = None if key is None else _EXPANSION_CACHE.get(key := (*key, migratable, irqchip))
    if hit is None:
        hit = _props(expanded_words(kvm, migratable, irqchip=irqchip))
        if key is not None:
            remember(_EXPANSION_CACHE, key, hit)
    return dict(hit)
