"""Fingerprint the running KVM and find the model profile that behaves like it.

Each probe is a short ioctl sequence written once against the shared Kvm/Vm/Vcpu
interface; it runs on the real /dev/kvm and on candidate models (this machine's CPUID,
each named profile and the running release, the loaded vendor module's flavour). The model
whose answers agree most is the match, ties going to the release nearest the running one.
"""

from __future__ import annotations

import contextlib
import platform
import re
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kvmfpu import uapi
from kvmfpu.arch import xfeatures as xf
from kvmfpu.core import msrs as msr
from kvmfpu.cpus.model import HostModel
from kvmfpu.kvm.cpuid import CpuidEntry
from kvmfpu.kvm.errors import KvmError
from kvmfpu.kvm.profiles import NAMED, UnknownKernel, parse_version, profile
from kvmfpu.kvm.system import Kvm

Answer = object
KvmLike = Any

XSTATE_MSRS = (msr.IA32_XSS, msr.IA32_XFD, msr.IA32_XFD_ERR, msr.IA32_U_CET, msr.IA32_S_CET,
               msr.IA32_PL0_SSP, msr.IA32_PL3_SSP, msr.IA32_INT_SSP_TAB)
MODULES = (("kvm_pvm", "pvm"), ("kvm_intel", "vmx"), ("kvm_amd", "svm"))


class ProbeUnavailable(RuntimeError):
    """No usable /dev/kvm or no way to read this machine's CPUID."""


def _outcome(fn: Callable[[], Answer]) -> Answer:
    try:
        return fn()
    except KvmError as exc:
        return exc.errno_name


def _leaf(entries: list[CpuidEntry], fn: int, idx: int = 0) -> CpuidEntry | None:
    return next((e for e in entries if (e.function, e.index) == (fn, idx)), None)


def _supported_xcr0(kvm: KvmLike) -> int:
    d0 = _leaf(kvm.get_supported_cpuid(), 0xD)
    return 0 if d0 is None else d0.eax | d0.edx << 32


def _with_cpuid_d0(kvm: KvmLike, eax: int) -> list[CpuidEntry]:
    return [e._replace(eax=eax, edx=0) if (e.function, e.index) == (0xD, 0) else e
            for e in kvm.get_supported_cpuid()]


def _blob(bv: int, dwords: dict[int, int] | None = None) -> bytearray:
    """A 4096-byte standard-format buffer: FCW 037F, MXCSR 1F80, XSTATE_BV ``bv`` and the
    given dwords at their offsets."""
    b = bytearray(4096)
    struct.pack_into("<H", b, 0, 0x37F)
    struct.pack_into("<I", b, 24, 0x1F80)
    struct.pack_into("<Q", b, 512, bv)
    for off, value in (dwords or {}).items():
        struct.pack_into("<I", b, off, value)
    return b


def _vcpu(kvm: KvmLike, *, irqchip: bool = False) -> tuple[Any, Any]:
    vm = kvm.create_vm()
    if irqchip:
        vm.create_irqchip()
    return vm, vm.create_vcpu(0)


# -- the probes ----------------------------------------------------------------------------------

def p_leaf_0xd(kvm: KvmLike) -> Answer:
    return [e.values() for e in kvm.get_supported_cpuid() if e.function == 0xD]


def p_caps(kvm: KvmLike) -> Answer:
    return [kvm.check_extension(c) for c in (uapi.KVM_CAP_XSAVE, uapi.KVM_CAP_XCRS,
                                             uapi.KVM_CAP_XSAVE2)]


def p_msr_list(kvm: KvmLike) -> Answer:
    listed = set(kvm.get_msr_index_list())
    return [m for m in XSTATE_MSRS if m in listed]


def p_device_attr(kvm: KvmLike) -> Answer:
    return _outcome(lambda: kvm.get_device_attr(0, 0))


def p_xsave_before_cpuid(kvm: KvmLike) -> Answer:
    vm, v = _vcpu(kvm)
    try:
        return _outcome(lambda: v.set_xsave(_blob(_supported_xcr0(kvm) & ~xf.DYNAMIC_MASK)))
    finally:
        vm.close()


def p_fpsse_empty_cpuid(kvm: KvmLike) -> Answer:
    """Seed 002: FP/SSE into a vCPU with an empty CPUID (5.17-5.19.11: -EINVAL)."""
    vm, v = _vcpu(kvm)
    try:
        v.set_cpuid2([])
        return _outcome(lambda: v.set_xsave(_blob(xf.FPSSE)))
    finally:
        vm.close()


def p_xsave_beyond_cpuid(kvm: KvmLike) -> Answer:
    """YMM state into a vCPU whose CPUID offers FP/SSE only (5.17-6.5: -EINVAL)."""
    if not _supported_xcr0(kvm) & xf.YMM:
        return "n/a"
    vm, v = _vcpu(kvm)
    try:
        v.set_cpuid2(_with_cpuid_d0(kvm, xf.FPSSE))
        return _outcome(lambda: v.set_xsave(_blob(xf.FPSSE | xf.YMM)))
    finally:
        vm.close()


def p_get_masks(kvm: KvmLike) -> Answer:
    """XSTATE_BV of KVM_GET_XSAVE after YMM state and a CPUID without YMM (6.6: masked)."""
    if not _supported_xcr0(kvm) & xf.YMM:
        return "n/a"
    vm, v = _vcpu(kvm)
    try:
        v.set_xsave(_blob(xf.FPSSE | xf.YMM))
        v.set_cpuid2(_with_cpuid_d0(kvm, xf.FPSSE))
        return struct.unpack_from("<Q", v.get_xsave(), 512)[0]
    finally:
        vm.close()


def p_xcrs_before_cpuid(kvm: KvmLike) -> Answer:
    vm, v = _vcpu(kvm)
    try:
        return _outcome(lambda: v.set_xcrs([(0, _supported_xcr0(kvm) & (xf.FPSSE | xf.YMM))]))
    finally:
        vm.close()


def p_mp_state_invalid(kvm: KvmLike) -> Answer:
    vm, v = _vcpu(kvm, irqchip=True)
    try:
        return _outcome(lambda: v.set_mp_state(42))
    finally:
        vm.close()


def p_xss_write_zero(kvm: KvmLike) -> Answer:
    vm, v = _vcpu(kvm)
    try:
        v.set_cpuid2(kvm.get_supported_cpuid())
        return v.set_msrs([(msr.IA32_XSS, 0)])
    finally:
        vm.close()


def p_xfd_write_zero(kvm: KvmLike) -> Answer:
    vm, v = _vcpu(kvm)
    try:
        v.set_cpuid2(kvm.get_supported_cpuid())
        return v.set_msrs([(msr.IA32_XFD, 0)])
    finally:
        vm.close()


def p_pkru_bv9_clear(kvm: KvmLike) -> Answer:
    """The PKRU slot of KVM_GET_XSAVE after XSTATE_BV[9] was cleared (b15888840207)."""
    if not _supported_xcr0(kvm) & xf.PKRU:
        return "n/a"
    d9 = _leaf(kvm.get_supported_cpuid(), 0xD, 9)
    if d9 is None:
        return "n/a"
    vm, v = _vcpu(kvm)
    try:
        v.set_cpuid2(kvm.get_supported_cpuid())
        v.set_xsave(_blob(xf.FPSSE | xf.PKRU, {d9.ebx: 0xC}))
        v.set_xsave(_blob(xf.FPSSE))
        return struct.unpack_from("<I", v.get_xsave(), d9.ebx)[0]
    finally:
        vm.close()


def p_init_keeps(kvm: KvmLike) -> Answer:
    """After INIT: MP state, XCR0 and the YMM byte written before."""
    vm, v = _vcpu(kvm, irqchip=True)
    try:
        v.set_cpuid2(kvm.get_supported_cpuid())
        xcr0 = _supported_xcr0(kvm) & (xf.FPSSE | xf.YMM)
        v.set_xcrs([(0, xcr0)])
        v.set_xsave(_blob(xcr0, {576: 0x5A}))
        v.send_init()
        state = v.get_mp_state()
        return [state, v.get_xcrs(), v.get_xsave()[576], v.get_sregs().cr4_osxsave]
    finally:
        vm.close()


def p_xsave2(kvm: KvmLike) -> Answer:
    vm, v = _vcpu(kvm)
    try:
        return _outcome(lambda: len(v.get_xsave2()))
    finally:
        vm.close()


def p_sw_reserved(kvm: KvmLike) -> Answer:
    vm, v = _vcpu(kvm)
    try:
        return struct.unpack_from("<Q", v.get_xsave(), 464)[0]
    finally:
        vm.close()


PROBES: dict[str, tuple[str, Callable[[KvmLike], Answer]]] = {
    "leaf_0xd": ("KVM_GET_SUPPORTED_CPUID leaf 0xD", p_leaf_0xd),
    "caps": ("KVM_CAP_XSAVE, KVM_CAP_XCRS, KVM_CAP_XSAVE2", p_caps),
    "msr_list": ("xstate MSRs in KVM_GET_MSR_INDEX_LIST", p_msr_list),
    "device_attr": ("KVM_GET_DEVICE_ATTR(KVM_X86_XCOMP_GUEST_SUPP)", p_device_attr),
    "xsave_before_cpuid": ("KVM_SET_XSAVE of all non-dynamic features before KVM_SET_CPUID2",
                           p_xsave_before_cpuid),
    "fpsse_empty_cpuid": ("KVM_SET_XSAVE of FP/SSE after an empty KVM_SET_CPUID2",
                          p_fpsse_empty_cpuid),
    "xsave_beyond_cpuid": ("KVM_SET_XSAVE of YMM into a CPUID with FP/SSE only",
                           p_xsave_beyond_cpuid),
    "get_masks": ("KVM_GET_XSAVE XSTATE_BV with YMM set, CPUID without YMM", p_get_masks),
    "xcrs_before_cpuid": ("KVM_SET_XCRS with AVX before KVM_SET_CPUID2", p_xcrs_before_cpuid),
    "mp_state_invalid": ("KVM_SET_MP_STATE(42)", p_mp_state_invalid),
    "xss_write_zero": ("KVM_SET_MSRS IA32_XSS = 0 (count)", p_xss_write_zero),
    "xfd_write_zero": ("KVM_SET_MSRS IA32_XFD = 0 (count)", p_xfd_write_zero),
    "pkru_bv9_clear": ("KVM_GET_XSAVE PKRU slot after XSTATE_BV[9] cleared", p_pkru_bv9_clear),
    "init_keeps": ("INIT: MP state, XCRs, YMM byte, CR4.OSXSAVE", p_init_keeps),
    "xsave2": ("KVM_GET_XSAVE2 length", p_xsave2),
    "sw_reserved": ("KVM_GET_XSAVE bytes 464-471", p_sw_reserved),
}


def run_probes(kvm: KvmLike) -> dict[str, Answer]:
    out: dict[str, Answer] = {}
    for name, (_, fn) in PROBES.items():
        try:
            out[name] = fn(kvm)
        except KvmError as exc:      # a set-up step failed: that is an answer too
            out[name] = f"set-up failed: {exc.errno_name}"
    return out


# -- the running system ------------------------------------------------------------------------

def vendor_module() -> tuple[str, str]:
    mods = Path("/sys/module")
    for mod, flavor in MODULES:
        if (mods / mod).exists():
            return mod, flavor
    raise ProbeUnavailable("no KVM vendor module (kvm_intel, kvm_amd, kvm_pvm) is loaded")


def running_release() -> str:
    """The running kernel as a version kvmfpu parses ("6.18.44" from "6.18.44-fc-v657")."""
    m = re.match(r"(\d+)\.(\d+)(?:\.(\d+))?", platform.release())
    if not m:
        raise ProbeUnavailable(f"cannot read a version from {platform.release()!r}")
    return ".".join(g for g in m.groups() if g)


@dataclass
class Candidate:
    kernel: str
    flavor: str
    agree: list[str] = field(default_factory=list)
    disagree: list[tuple[str, Answer, Answer]] = field(default_factory=list)

    @property
    def score(self) -> int:
        return len(self.agree)


@dataclass
class Fingerprint:
    release: str
    module: str
    flavor: str
    host: HostModel
    answers: dict[str, Answer]
    candidates: list[Candidate]

    @property
    def best(self) -> Candidate:
        return self.candidates[0]

    def to_json(self) -> dict[str, Any]:
        def cand(c: Candidate) -> dict[str, Any]:
            return {"kernel": c.kernel, "flavor": c.flavor, "agree": len(c.agree),
                    "of": len(PROBES), "disagree": [
                        {"probe": n, "real": repr(r), "model": repr(m)} for n, r, m in c.disagree]}
        return {"release": self.release, "module": self.module, "flavor": self.flavor,
                "host": self.host.describe(), "answers": {k: repr(v) for k, v in self.answers.items()},
                "match": cand(self.best), "candidates": [cand(c) for c in self.candidates]}


def candidate_kernels(release: str) -> list[str]:
    names = list(NAMED)
    with contextlib.suppress(UnknownKernel):
        names.append(profile(release).name)
    return list(dict.fromkeys(names))


def _distance(kernel: str, release: str) -> tuple[int, int, int]:
    a, b = parse_version(kernel), parse_version(release)
    return abs(a[0] - b[0]), abs(a[1] - b[1]), abs(a[2] - b[2])


def fingerprint(path: str = "/dev/kvm") -> Fingerprint:
    """Probe the running KVM and rank the model candidates against it."""
    from kvmfpu.native.hostcpuid import this_host
    from kvmfpu.native.xsave_probe import probe_unavailable
    from kvmfpu.real import open_kvm

    module, flavor = vendor_module()
    reason = probe_unavailable()
    if reason:
        raise ProbeUnavailable(f"cannot read this machine's CPUID: {reason}")
    try:
        real = open_kvm(path)
    except KvmError as exc:
        raise ProbeUnavailable(str(exc)) from None
    with real:
        answers = run_probes(real)
    host = this_host()
    release = running_release()
    candidates = []
    for kernel in candidate_kernels(release):
        model = run_probes(Kvm(host, kernel, flavor))
        c = Candidate(kernel, flavor)
        for name, value in answers.items():
            if model[name] == value:
                c.agree.append(name)
            else:
                c.disagree.append((name, value, model[name]))
        candidates.append(c)
    candidates.sort(key=lambda c: (-c.score, _distance(c.kernel, release)))
    return Fingerprint(release, module, flavor, host, answers, candidates)


def model_of_running_host(path: str = "/dev/kvm") -> Kvm:
    """The model that behaves like this machine's KVM: its CPUID, the best-matching profile
    and the loaded module's flavour."""
    fp = fingerprint(path)
    return Kvm(fp.host, fp.best.kernel, fp.best.flavor)
