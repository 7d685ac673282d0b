"""The guest CPUID QEMU gives KVM_SET_CPUID2 for a ``-cpu`` model on one host and kernel.

Sources (qemu/qemu target/i386/cpu.c @5cb89cad7f30 and kvm/kvm.c, QEMU 7.0 to 11.0):

- x86_cpu_expand_features -> x86_cpu_enable_xsave_components: the components the model's
  features enable (models.SAVE_AREAS); the first vCPU asks for AMX with
  kvm_request_xsave_components, whose failure is only a warning.
- x86_cpu_filter_features: every requested bit KVM does not report is dropped with
  "host doesn't support requested feature" (check=on, the default) or stops the VM
  (enforce). What KVM reports comes from KVM_GET_SUPPORTED_CPUID, except CPUID.(0xD,0)
  EDX:EAX, read from KVM_GET_DEVICE_ATTR(KVM_X86_XCOMP_GUEST_SUPP) where that exists
  (kvm_arch_get_supported_cpuid) and which is not limited by the process's permission.
- cpu_x86_cpuid leaf 0xD: subleaf 0 EAX/EDX = XCR0 components, EBX = ECX = their standard
  size; subleaf 1 EAX = the model's XSAVE instructions, EBX = compacted size of
  XCR0|XSS components, ECX/EDX = XSS components; subleaf i = the host's size, offset and
  flags (kvm_cpu_xsave_init reads the host's CPUID.(0xD,i)).

Leaves other than the XSAVE-relevant bits are the host's (KVM_GET_SUPPORTED_CPUID): QEMU's
model values for vendor, family or cache leaves do not change what KVM does with xsave
state and are not modelled.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cache, lru_cache

from kvmfpu.arch import xfeatures as xf
from kvmfpu.arch.xfeatures import bits, describe_mask
from kvmfpu.kvm.cpuid import KVM_CPUID_FLAG_SIGNIFCANT_INDEX, CpuidEntry, xstate_required_size
from kvmfpu.kvm.errors import KvmError
from kvmfpu.kvm.system import ARCH_REQ_XCOMP_GUEST_PERM, KVM_X86_XCOMP_GUEST_SUPP, Kvm
from kvmfpu.qemu import host_cpu
from kvmfpu.qemu.models import FEATURES, GuestModel, components_of, describe_feature

_REGS = ("eax", "ebx", "ecx", "edx")


@dataclass
class QemuCpu:
    """What QEMU's realize produced for one vCPU model on one host: the CPUID table, the
    XSAVE components the guest may use and every warning QEMU printed on the way."""

    model: GuestModel
    entries: list[CpuidEntry]
    features: frozenset[str]
    xcr0: int                       # guest CPUID.(0xD,0) EDX:EAX
    xss: int                        # guest CPUID.(0xD,1) EDX:ECX
    filtered: list[str] = field(default_factory=list)        # "host doesn't support ..."
    perm_requested: bool = False
    perm_error: KvmError | None = None

    def has(self, feature: str) -> bool:
        return feature in self.features

    @property
    def runs_with_enforce(self) -> bool:
        """-cpu MODEL,enforce fails realize when anything was filtered."""
        return not self.filtered


_Loc = tuple[int, int, int]          # (leaf, subleaf, register)


@cache
def _named_bits() -> dict[_Loc, tuple[int, tuple[tuple[int, str], ...]]]:
    """Per CPUID register: the mask of the bits QEMU names, and (bit, name) for each."""
    out: dict[_Loc, list[tuple[int, str]]] = {}
    for name, b in FEATURES.items():
        out.setdefault((b.leaf, b.subleaf, b.reg), []).append((b.bit, name))
    return {k: (sum(1 << bit for bit, _ in v), tuple(v)) for k, v in out.items()}


@lru_cache(maxsize=512)
def _wanted(feats: frozenset[str]) -> dict[_Loc, int]:
    """The register bits a feature set turns on."""
    out: dict[_Loc, int] = {}
    for f in feats:
        b = FEATURES.get(f)
        if b is not None:
            key = (b.leaf, b.subleaf, b.reg)
            out[key] = out.get(key, 0) | 1 << b.bit
    return out


def features_in(entries: Iterable[CpuidEntry]) -> frozenset[str]:
    """The QEMU feature names a CPUID table sets (KVM_GET_SUPPORTED_CPUID, a saved
    KVM_GET_CPUID2, a guest table)."""
    named = _named_bits()
    out = []
    for e in entries:
        for r, value in enumerate((e.eax, e.ebx, e.ecx, e.edx)):
            hit = named.get((e.function, e.index, r))
            if hit is not None and value & hit[0]:
                out += [name for bit, name in hit[1] if value >> bit & 1]
    return frozenset(out)


def xcomp_guest_supp(kvm: Kvm, supported: list[CpuidEntry]) -> int:
    """kvm_arch_get_supported_cpuid(0xD, 0, EAX/EDX): the device attribute where KVM has it
    (5.17+), else KVM_GET_SUPPORTED_CPUID's value."""
    try:
        return kvm.get_device_attr(0, KVM_X86_XCOMP_GUEST_SUPP)
    except KvmError:
        d0 = next((e for e in supported if (e.function, e.index) == (0xD, 0)), None)
        return 0 if d0 is None else d0.eax | d0.edx << 32


def request_perm(kvm: Kvm, model: GuestModel) -> tuple[bool, KvmError | None]:
    """kvm_request_xsave_components: ARCH_REQ_XCOMP_GUEST_PERM for each dynamic component
    the model enables and KVM supports; a failure is a warning, not an error."""
    wanted = model.components & xf.DYNAMIC_MASK
    if not wanted:
        return False, None
    try:
        offered = kvm.get_device_attr(0, KVM_X86_XCOMP_GUEST_SUPP)
    except KvmError:
        return False, None        # before 5.17: no dynamic features, no prctl
    err = None
    for b in bits(wanted & offered):
        try:
            kvm.arch_prctl(ARCH_REQ_XCOMP_GUEST_PERM, b)
        except KvmError as exc:
            err = exc
    return bool(wanted & offered), err


#: What realize computes after the permission request, by host_cpu.model_key and model.
_Realized = tuple[tuple[CpuidEntry, ...], frozenset[str], int, int, tuple[str, ...]]
_BUILT: dict[tuple[object, ...], _Realized] = {}


def build(kvm: Kvm, model: GuestModel, *, ask_perm: bool = True) -> QemuCpu:
    """QEMU's realize of ``model`` on ``kvm``'s host (ask_perm=False: a VMM that never asks
    for AMX permission).

    The permission request runs on every call (it is the VMM process's own action); the
    rest is a function of the modelled /dev/kvm (host_cpu.model_key, which includes the
    permission it left) and the model, so the same destination's table is built once for
    every cell of a matrix and every row of an audit."""
    asked, perm_error = request_perm(kvm, model) if ask_perm else (False, None)
    key = host_cpu.model_key(kvm)
    done = None if key is None else _BUILT.get(key := (*key, model))
    if done is None:
        done = _realize(kvm, model)
        if key is not None:
            host_cpu.remember(_BUILT, key, done)
    entries, feats, xcr0, xss, filtered = done
    return QemuCpu(model, list(entries), feats, xcr0, xss, list(filtered), asked, perm_error)


def _realize(kvm: Kvm, model: GuestModel) -> _Realized:
    supported = kvm.get_supported_cpuid()
    by_key = {(e.function, e.index): e for e in supported}
    offered_xcr0 = xcomp_guest_supp(kvm, supported)
    d1 = by_key.get((0xD, 1))
    offered_xss = 0 if d1 is None else d1.ecx | d1.edx << 32
    filtered: list[str] = []
    # x86_cpu_filter_features compares with x86_cpu_get_supported_feature_word: KVM's table
    # plus QEMU's own fix-ups (hypervisor, tsc-deadline, arat ...: host_cpu.FIXUPS).
    offered = host_cpu.supported_features(kvm)
    if model.passthrough:
        # -cpu host: query-cpu-model-expansion's view (supported, autoenabled, migratable).
        feats = {f for f, on in host_cpu.host_expansion(kvm).items() if on}
        for f, on in model.options:
            if on and f not in offered:
                filtered.append(describe_feature(f))
            (feats.add if on and f in offered else feats.discard)(f)
        # the same x86_cpu_enable_xsave_components as for a named model
        requested = components_of(feats) & (offered_xcr0 | offered_xss | xf.FPSSE)
    else:
        feats = set()
        for f in sorted(model.features):
            if f in offered or f not in FEATURES:
                # MSR-word features (IA32_ARCH_CAPABILITIES, VMX) are not checked here.
                feats.add(f)
            else:
                filtered.append(describe_feature(f))
        requested = model.components
    if "xsave" not in feats:
        # feature_dependencies: XSAVE -> every FEAT_XSAVE bit; enable_xsave_components
        # zeroes the XCR0/XSS words.
        feats -= {"xsaveopt", "xsavec", "xgetbv1", "xsaves", "xfd"}
        requested = 0
    xcr0 = requested & ~xf.SUPERVISOR_MASK & (offered_xcr0 | xf.FPSSE) if requested else 0
    xss = requested & xf.SUPERVISOR_MASK & offered_xss
    if not model.passthrough:
        missing = requested & ~(xcr0 | xss)
        if missing:
            filtered.append(f"XSAVE components {describe_mask(missing)} (CPUID[eax=dh,ecx="
                            f"{'0' if missing & ~xf.SUPERVISOR_MASK else '1'}h])")
    entries = _entries(kvm, supported, frozenset(feats), xcr0, xss)
    return tuple(entries), frozenset(feats), xcr0, xss, tuple(filtered)


def _entries(kvm: Kvm, supported: list[CpuidEntry], feats: frozenset[str], xcr0: int,
             xss: int) -> list[CpuidEntry]:
    named, wanted = _named_bits(), _wanted(feats)
    out: list[CpuidEntry] = []
    for e in supported:
        if e.function == 0xD:
            continue
        regs = [e.eax, e.ebx, e.ecx, e.edx]
        for r in range(4):
            hit = named.get((e.function, e.index, r))
            if hit is not None:
                regs[r] = (regs[r] & ~hit[0]) | wanted.get((e.function, e.index, r), 0)
        out.append(CpuidEntry(e.function, e.index, e.flags, *regs))
    if "xsave" in feats:
        out.extend(_leaf_d(kvm, supported, feats, xcr0, xss))
    out.sort(key=lambda e: (e.function, e.index))
    return out


def _leaf_d(kvm: Kvm, supported: list[CpuidEntry], feats: frozenset[str], xcr0: int,
            xss: int) -> list[CpuidEntry]:
    sig = KVM_CPUID_FLAG_SIGNIFCANT_INDEX
    layout = kvm.host.layout
    std = xstate_required_size(layout, xcr0, False, True)
    out = [CpuidEntry(0xD, 0, sig, xcr0 & 0xFFFF_FFFF, std, std, xcr0 >> 32)]
    eax = sum(1 << FEATURES[f].bit for f in ("xsaveopt", "xsavec", "xgetbv1", "xsaves", "xfd")
              if f in feats)
    out.append(CpuidEntry(0xD, 1, sig, eax, xstate_required_size(layout, xcr0 | xss, True, True),
                          xss & 0xFFFF_FFFF, xss >> 32))
    host_d = {e.index: e for e in supported if e.function == 0xD}
    for b in bits((xcr0 | xss) & ~xf.FPSSE):
        e = host_d.get(b)
        if e is not None:
            out.append(CpuidEntry(0xD, b, sig, e.eax, e.ebx, e.ecx, 0))
        else:
            a, bb, c, _ = kvm.host.cpuid(0xD, b)
            out.append(CpuidEntry(0xD, b, sig, a, bb, c, 0))
    return out
