"""How VMMs save a vCPU's xsave state and put it back: which ioctls, in which order, and
what travels between the hosts, per VMM version.

Two ways to carry the state:

- by field (QEMU): kvm_get_xsave parses the buffer into CPUX86State at the source host's
  offsets (x86_cpu_xrstor_all_areas), the stream carries registers, and kvm_put_xsave
  lays them out again at the destination host's offsets (x86_cpu_xsave_all_areas);
  kvm_arch_put_registers then issues KVM_SET_SREGS, KVM_SET_XSAVE, KVM_SET_XCRS and one
  KVM_SET_MSRS (IA32_XSS when KVM lists it, XFD/XFD_ERR when the guest has XFD, CET MSRs
  when it has SHSTK/IBT, in that order; a short count trips an assert in
  kvm_buf_set_msrs). qemu/qemu target/i386/kvm/kvm.c @b775eff300f4 (QEMU 11.0 cycle).
  What each release does differently: kvmfpu.qemu.versions.
- raw (snapshot VMMs): the KVM_GET_XSAVE{2} buffer is stored verbatim and handed to the
  destination's KVM_SET_XSAVE, with the saved KVM_GET_CPUID2 table and MSR values.
  Firecracker restore_state (firecracker src/vmm/src/arch/x86_64/vcpu.rs @0962fe03, the
  same order in v1.4.0 src/vmm/src/vstate/vcpu/x86_64.rs) and Cloud Hypervisor set_state
  (hypervisor/src/kvm/mod.rs @01b90534, the same order in v30.0): CPUID, MP state, regs,
  sregs, XSAVE, XCRS, ..., MSRs. crosvm (hypervisor/src/x86_64.rs @013f64ac) puts XCRS
  and MSRs before XSAVE.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from kvmfpu.blob.errors import InputError
from kvmfpu.core import msrs as msr
from kvmfpu.kvm.cpuid import CpuidEntry
from kvmfpu.kvm.errors import KvmError
from kvmfpu.kvm.vcpu import SRegs, Vcpu
from kvmfpu.qemu import versions as qv
from kvmfpu.qemu.env import OffsetMode, QemuEnv, buffer_size, xrstor_all_areas, xsave_all_areas
from kvmfpu.qemu.guest_cpuid import QemuCpu
from kvmfpu.uapi import KVM_CAP_XCRS, KVM_CAP_XSAVE2

CET_MSRS_IBT: Final = (msr.IA32_U_CET, msr.IA32_S_CET)
CET_MSRS_SHSTK: Final = (
    msr.IA32_PL0_SSP,
    msr.IA32_PL1_SSP,
    msr.IA32_PL2_SSP,
    msr.IA32_PL3_SSP,
    msr.IA32_INT_SSP_TAB,
)


@dataclass(frozen=True)
class Vmm:
    name: str
    title: str
    by_field: bool  # QEMU's re-laying transport; False: the buffer verbatim
    xsave2: bool  # KVM_GET_XSAVE2 where KVM_CAP_XSAVE2 is non-zero
    asks_amx_perm: bool  # ARCH_REQ_XCOMP_GUEST_PERM before creating vCPUs
    cpuid_from_source: bool  # KVM_SET_CPUID2 with the source's saved KVM_GET_CPUID2
    msrs: str  # "qemu", "index-list" or "allow-list"
    put_order: tuple[str, ...]
    source: str
    version: str | None = None  # None: a generic VMM behaviour, not one product's release
    #: QEMU: where x86_ext_save_areas[].offset comes from (kvmfpu.qemu.env.OffsetMode).
    leaf_d_offsets: OffsetMode = "host-cpuid"
    xfd_msrs: bool = True  # QEMU: XFD/XFD_ERR in kvm_put_msrs (7.0)
    cet_msrs: bool = True  # QEMU: the CET MSRs in kvm_put_msrs (11.0)
    #: The xstate MSRs an allow-list VMM saves (Firecracker's SERIALIZABLE_MSR_RANGES).
    allow_list: frozenset[int] = frozenset()
    #: What a short KVM_SET_MSRS count does: "fatal" (QEMU's assert, Firecracker's
    #: VcpuSetMsrsIncomplete) or "skip" (Cloud Hypervisor retries past the faulty MSR).
    msr_short_count: str = "fatal"
    #: KVM_SET_XCRS only where the host has XSAVE: QEMU's has_xcrs (KVM_CAP_XCRS), Cloud
    #: Hypervisor from v53.0 (4b671954a 'Support pre-XSAVE x86 CPUs'). False: called
    #: always, so -EINVAL on a pre-XSAVE host (kvm_vcpu_ioctl_x86_set_xcrs).
    xcrs_gated: bool = True

    @property
    def label(self) -> str:
        return f"{self.name}@{self.version}" if self.version else self.name

    @property
    def qemu(self) -> qv.QemuRelease | None:
        """The QEMU release, for a by-field VMM with a version."""
        return qv.release(self.version) if self.by_field and self.version else None

    def msr_list(self, kvm_list: tuple[int, ...], cpuid_has: Callable[[str], bool]) -> list[int]:
        """The xstate MSRs this VMM saves and puts, on a kernel listing ``kvm_list``."""
        if self.msrs == "index-list":
            return list(kvm_list)
        if self.msrs == "allow-list":
            return [i for i in kvm_list if i in self.allow_list]
        out = []
        if msr.IA32_XSS in kvm_list:  # has_msr_xss
            out.append(msr.IA32_XSS)
        if self.xfd_msrs and cpuid_has("xfd"):  # has_msr_xfd (7.0)
            out += [msr.IA32_XFD, msr.IA32_XFD_ERR]
        if self.cet_msrs and (cpuid_has("shstk") or cpuid_has("ibt")):  # 11.0: CET MSRs last
            out += list(CET_MSRS_IBT)
            if cpuid_has("shstk"):
                out += list(CET_MSRS_SHSTK)
        return out


_RAW_ORDER = ("cpuid", "sregs", "xsave", "xcrs", "msrs")


def qemu(version: str = qv.NEWEST) -> Vmm:
    """QEMU ``version`` (kvmfpu.qemu.versions.release accepts "7.2", "7.2.1")."""
    r = qv.release(version)
    what = [
        ("KVM_GET_XSAVE2" if r.has_xsave2 else "KVM_GET_XSAVE only"),
        ("AMX permission" if r.asks_amx_perm else "no AMX permission"),
        f"leaf 0xD offsets: {r.leaf_d_offsets}",
    ] + (["CET MSRs"] if r.cet_msrs else [])
    return Vmm(
        "qemu",
        f"QEMU {r.version} ({', '.join(what)})",
        True,
        r.has_xsave2,
        r.asks_amx_perm,
        False,
        "qemu",
        ("cpuid", "sregs", "xsave", "xcrs", "msrs"),
        "kvm_arch_put_registers / kvm_arch_get_registers, target/i386/kvm/kvm.c; "
        "release facts: kvmfpu.qemu.versions",
        r.version,
        r.leaf_d_offsets,
        xfd_msrs=r.xfd_msrs,
        cet_msrs=r.cet_msrs,
    )


#: Firecracker's x86_64 releases (git tags of firecracker-microvm/firecracker).
FIRECRACKER_RELEASES: Final[tuple[str, ...]] = (
    "1.0.0",
    "1.0.1",
    "1.0.2",
    "1.1.0",
    "1.1.1",
    "1.1.2",
    "1.1.3",
    "1.1.4",
    "1.2.0",
    "1.2.1",
    "1.3.0",
    "1.3.1",
    "1.3.2",
    "1.3.3",
    "1.4.0",
    "1.4.1",
    "1.5.0",
    "1.5.1",
    "1.6.0",
    "1.7.0",
    "1.8.0",
    "1.9.0",
    "1.9.1",
    "1.10.0",
    "1.10.1",
    "1.11.0",
    "1.12.0",
    "1.12.1",
    "1.13.0",
    "1.13.1",
    "1.13.2",
    "1.14.0",
    "1.14.1",
    "1.14.2",
    "1.14.3",
    "1.14.4",
    "1.15.0",
    "1.15.1",
    "1.16.0",
    "1.16.1",
)
#: KVM_GET_XSAVE2 and the AMX guest permission: PR #5065 (803140d82 'Use structs and
#: methods for KVM_CAP_XSAVE2', d44732df5 'Request permission for Intel AMX'), CHANGELOG
#: v1.12.0 ("users need to regenerate snapshots").
FC_XSAVE2: Final = "1.12.0"
#: IA32_XSS in SERIALIZABLE_MSR_RANGES (src/vmm/src/arch/x86_64/msr.rs): main PR #5972
#: (490577590), backport PR #5973 as 14e18e41b 'x86: snapshot: save IA32_XSS to preserve
#: supervisor XSTATE' in v1.16.1 (not in its CHANGELOG). No XFD or CET MSR is in the list.
FC_XSS: Final = "1.16.1"
#: Cloud Hypervisor's releases (git tags vNN.M of cloud-hypervisor/cloud-hypervisor).
CH_RELEASES: Final[tuple[str, ...]] = (
    "15.0",
    "16.0",
    "17.0",
    "18.0",
    "19.0",
    "20.0",
    "20.1",
    "20.2",
    "21.0",
    "21.1",
    "22.0",
    "22.1",
    "23.0",
    "23.1",
    "24.0",
    "25.0",
    "26.0",
    "27.0",
    "28.0",
    "28.1",
    "28.2",
    "28.3",
    "28.4",
    "29.0",
    "30.0",
    "30.1",
    "31.0",
    "31.1",
    "31.2",
    "32.0",
    "32.1",
    "33.0",
    "34.0",
    "35.0",
    "35.1",
    "36.0",
    "36.1",
    "37.0",
    "37.1",
    "38.0",
    "39.0",
    "40.0",
    "41.0",
    "42.0",
    "43.0",
    "44.0",
    "45.0",
    "46.0",
    "47.0",
    "48.0",
    "49.0",
    "50.0",
    "50.1",
    "50.2",
    "51.0",
    "51.1",
    "51.2",
    "52.0",
    "53.0",
)
#: KVM_GET_XSAVE2 with the data past 4 KiB kept in XsaveState.extra: PR #7534 (4b4954ff8
#: 'hypervisor: AMX state snapshot and restore support', Fixes #7533), release notes
#: v50.0 "Fix live migration (and snapshot/restore) with AMX state (#7534)".
CH_XSAVE2: Final = "50.0"
#: ARCH_REQ_XCOMP_GUEST_PERM with --cpus features=amx: 6b0df31e5 'vmm: Add support for
#: enabling AMX in vm guests' (2022-03-01), first in v23.0.
CH_AMX_PERM: Final = "23.0"
#: XCRS skipped on hosts without XSAVE: 4b671954a 'hypervisor: kvm: Support pre-XSAVE x86
#: CPUs', first in v53.0.
CH_XCRS_GATED: Final = "53.0"


def _vkey(v: str) -> tuple[int, ...]:
    return tuple(int(p) for p in v.split("."))


def firecracker(version: str = FIRECRACKER_RELEASES[-1]) -> Vmm:
    """Firecracker ``version``: the restore order is the same in every release read (v1.4.0,
    v1.10.0, v1.12.0, v1.16.1: cpuid2, mp_state, regs, sregs, xsave, xcrs, debug regs,
    lapic, msrs, vcpu events); what changes is KVM_GET_XSAVE2 and the MSR list. Its static
    CPU templates (cpu_config/x86_64/static_cpu_templates) clear XCR0 bits in CPUID.(0xD,0)
    EAX and XSAVEC/XGETBV1/XSAVES in (0xD,1) EAX but never touch the per-component sizes
    and offsets (subleaves >= 2): the layout stays the host's."""
    v = _vkey(version)
    x2, xss = v >= _vkey(FC_XSAVE2), v >= _vkey(FC_XSS)
    what = "KVM_GET_XSAVE2, AMX permission" if x2 else "KVM_GET_XSAVE only, no AMX permission"
    return Vmm(
        "firecracker",
        f"Firecracker {version} ({what}; MSR allow-list {'with' if xss else 'without'} IA32_XSS)",
        False,
        x2,
        x2,
        True,
        "allow-list",
        _RAW_ORDER,
        "firecracker src/vmm/src/arch/x86_64/vcpu.rs restore_state @0962fe03; msr.rs SERIALIZABLE_MSR_RANGES",
        version,
        allow_list=frozenset({msr.IA32_XSS}) if xss else frozenset(),
        xcrs_gated=False,  # restore_state calls set_xcrs unconditionally
    )


def cloud_hypervisor(version: str = CH_RELEASES[-1]) -> Vmm:
    """Cloud Hypervisor ``version`` (with --cpus features=amx where AMX matters). set_state
    puts CPUID, MP state, regs, sregs, XSAVE, XCRS, LAPIC, FPU (KVM_SET_FPU, not modelled),
    MSRs; a short KVM_SET_MSRS count is logged ("Detected faulty MSR") and the rest set.
    Before v53.0 it calls KVM_SET_XCRS even on a host without XSAVE."""
    v = _vkey(version)
    x2 = v >= _vkey(CH_XSAVE2)
    return Vmm(
        "cloud-hypervisor",
        f"Cloud Hypervisor v{version} ("
        + ("KVM_GET_XSAVE2, extra XSAVE data kept" if x2 else "KVM_GET_XSAVE only")
        + "; every listed MSR)",
        False,
        x2,
        v >= _vkey(CH_AMX_PERM),
        True,
        "index-list",
        _RAW_ORDER,
        "cloud-hypervisor hypervisor/src/kvm/mod.rs set_state @01b90534, v30.0, v49.0",
        version,
        msr_short_count="skip",
        xcrs_gated=v >= _vkey(CH_XCRS_GATED),
    )


VMMS: Final[dict[str, Vmm]] = {
    v.name: v
    for v in (
        qemu(),
        Vmm(
            "raw",
            "a snapshot VMM that stores KVM_GET_XSAVE2 buffers verbatim",
            False,
            True,
            True,
            True,
            "index-list",
            _RAW_ORDER,
            "Cloud Hypervisor set_state (>= #7534) and Firecracker restore_state (>= #5065) order",
        ),
        firecracker(),
        cloud_hypervisor(),
        Vmm(
            "crosvm",
            "crosvm (XCRS and MSRs before XSAVE)",
            False,
            True,
            True,
            True,
            "index-list",
            ("cpuid", "sregs", "xcrs", "msrs", "xsave"),
            "crosvm hypervisor/src/x86_64.rs restore order @013f64ac (UNVERIFIED for its newest)",
        ),
        Vmm(
            "raw-xsave",
            "a snapshot VMM that saves with KVM_GET_XSAVE (Cloud Hypervisor before "
            "#7534, Firecracker before #5065)",
            False,
            False,
            True,
            True,
            "index-list",
            _RAW_ORDER,
            "cloud-hypervisor issue #7533 (KVM_GET_XSAVE -EINVAL with AMX)",
        ),
        Vmm(
            "raw-noperm",
            "a snapshot VMM that never asks ARCH_REQ_XCOMP_GUEST_PERM",
            False,
            True,
            False,
            True,
            "index-list",
            _RAW_ORDER,
            "Cloud Hypervisor without --cpus features=amx (hypervisor/src/arch/x86/mod.rs)",
        ),
    )
}
_VERSIONED: Final[dict[str, tuple[Callable[[str], Vmm], tuple[str, ...]]]] = {
    "qemu": (qemu, qv.RELEASES),
    "firecracker": (firecracker, FIRECRACKER_RELEASES),
    "cloud-hypervisor": (cloud_hypervisor, CH_RELEASES),
}
_NUM = re.compile(r"v?(\d+)(?:\.(\d+))?(?:\.(\d+))?")


def _version_in(text: str, known: tuple[str, ...], parts: int) -> str | None:
    """``text`` normalised to one of ``known`` (missing trailing parts read as 0)."""
    m = _NUM.fullmatch(text.strip())
    if not m:
        return None
    nums = [int(g) if g is not None else 0 for g in m.groups()][:parts]
    v = ".".join(str(n) for n in nums)
    return v if v in known else None


def vmm_of(text: str | Vmm) -> Vmm:
    """``NAME`` or ``NAME@VERSION``: ``qemu@7.2``, ``firecracker@1.10`` (= 1.10.0),
    ``cloud-hypervisor@50`` (= v50.0). NAME alone is the newest modelled release."""
    if isinstance(text, Vmm):
        return text
    name, _, version = text.partition("@")
    if name not in VMMS:
        raise InputError(
            f"unknown VMM {name!r} (one of {', '.join(VMMS)}; {', '.join(_VERSIONED)} take @VERSION)"
        )
    if not version:
        return VMMS[name]
    if name not in _VERSIONED:
        raise InputError(
            f"{name} has no modelled versions ({text!r}); versions exist for {', '.join(_VERSIONED)}"
        )
    make, known = _VERSIONED[name]
    if name == "qemu":
        try:
            return make(qv.release(version).version)
        except qv.UnknownVersion as exc:
            raise InputError(str(exc)) from None
    v = _version_in(version, known, 3 if name == "firecracker" else 2)
    if v is None:
        raise InputError(
            f"unknown {name} version {version!r} (modelled: {known[0]} to {known[-1]}: {', '.join(known)})"
        )
    return make(v)


def guest_state(env: QemuEnv, features: frozenset[str], msrs: dict[int, int]) -> qv.GuestState:
    """The state a source QEMU's subsection .needed functions see: QEMU's fields, the guest
    CPUID's feature names (QemuCpu.features) and the MSR values it read."""
    return qv.GuestState.of(features, env, pl0_ssp=msrs.get(msr.IA32_PL0_SSP, 0))


def unknown_subsections(src: Vmm, dst: Vmm, guest: qv.GuestState) -> list[str]:
    """The cpu subsections the source QEMU sends for ``guest`` that the destination QEMU
    does not know, each with the release that brought it."""
    if not (src.by_field and dst.by_field):
        return []
    s, d = src.qemu or qv.release(qv.NEWEST), dst.qemu or qv.release(qv.NEWEST)
    return [f"{n} (QEMU {qv.subsection(n).since})" for n in qv.subsections_sent(s, guest)
            if n not in d.subsections]


def stream_error(src: Vmm, dst: Vmm, guest: qv.GuestState) -> str | None:
    """What the destination QEMU prints when it cannot load the ``cpu`` device the source
    QEMU sends for ``guest`` (an unknown subsection), or None when it loads it."""
    if not (src.by_field and dst.by_field):
        return None
    s, d = src.qemu or qv.release(qv.NEWEST), dst.qemu or qv.release(qv.NEWEST)
    return qv.load_error(d, qv.subsections_sent(s, guest))


@dataclass
class Saved:
    """What leaves the source: the buffer KVM returned, the registers a field-by-field VMM
    extracted from it, XCR0, the MSRs read and the guest CPUID the VMM saved."""

    buf: bytes
    ioctl: str
    xcr0: int
    msrs: dict[int, int]
    cpuid: list[CpuidEntry]
    env: QemuEnv | None = None
    msr_failure: str | None = None


@dataclass
class Step:
    name: str
    error: KvmError | None = None
    detail: str = ""
    fatal: bool = False  # the VMM stops (an error, or QEMU's assert on MSRs)

    @property
    def ok(self) -> bool:
        return self.error is None and not self.fatal


def save(vmm: Vmm, vcpu: Vcpu, cpu: QemuCpu, msr_ids: list[int]) -> Saved:
    """kvm_arch_get_registers (or a snapshot VMM's save): XSAVE{2}, XCRS, MSRS."""
    kvm = vcpu.kvm
    use2 = vmm.xsave2 and kvm.check_extension(KVM_CAP_XSAVE2) > 0
    buf = vcpu.get_xsave2() if use2 else vcpu.get_xsave()
    xcrs = dict(vcpu.get_xcrs())
    got = vcpu.get_msrs(msr_ids)
    env = None
    if vmm.by_field:
        env = xrstor_all_areas(
            buf, kvm.host.layout, mode=vmm.leaf_d_offsets, kvm_xcr0=kvm.caps.supported_xcr0
        )
        env.xcr0 = xcrs.get(0, env.xcr0)
        values = dict(got)
        env.xss = values.get(msr.IA32_XSS, 0)
        env.xfd = values.get(msr.IA32_XFD, 0)
        env.xfd_err = values.get(msr.IA32_XFD_ERR, 0)
    return Saved(
        buf,
        "KVM_GET_XSAVE2" if use2 else "KVM_GET_XSAVE",
        xcrs.get(0, 1),
        dict(got),
        vcpu.get_cpuid2() if vmm.cpuid_from_source else cpu.entries,
        env,
        vcpu.last_msr_failure if len(got) < len(msr_ids) else None,
    )


def buffer_for(vmm: Vmm, saved: Saved, vcpu: Vcpu) -> bytes:
    """The buffer handed to the destination's KVM_SET_XSAVE."""
    if not vmm.by_field or saved.env is None:
        return saved.buf
    kvm = vcpu.kvm
    cap = kvm.check_extension(KVM_CAP_XSAVE2) if vmm.xsave2 else 0
    size = buffer_size(cap) if cap else 4096  # kvm_init_xsave
    return xsave_all_areas(saved.env, kvm.host.layout, size, vmm.leaf_d_offsets, kvm.caps.supported_xcr0)


def put(
    vmm: Vmm,
    vcpu: Vcpu,
    saved: Saved,
    cpuid: list[CpuidEntry],
    msr_values: list[tuple[int, int]],
    sregs: dict[str, bool],
) -> list[Step]:
    """The destination's put sequence in the VMM's order; stops where the VMM stops."""
    steps: list[Step] = []
    buf = buffer_for(vmm, saved, vcpu)

    def run(name: str, fn: Callable[[], object]) -> bool:
        try:
            fn()
        except KvmError as exc:
            steps.append(Step(name, exc, fatal=True))
            return False
        steps.append(Step(name))
        return True

    for what in vmm.put_order:
        if what == "cpuid":
            ok = run("KVM_SET_CPUID2", lambda: vcpu.set_cpuid2(cpuid))
        elif what == "sregs":
            ok = run("KVM_SET_SREGS", lambda: vcpu.set_sregs(SRegs(**sregs)))
        elif what == "xsave":
            ok = run(f"KVM_SET_XSAVE ({len(buf)}-byte buffer)", lambda: vcpu.set_xsave(buf))
        elif what == "xcrs":
            if vmm.xcrs_gated and not vcpu.kvm.check_extension(KVM_CAP_XCRS):  # has_xcrs
                steps.append(Step("KVM_SET_XCRS", detail="skipped: no KVM_CAP_XCRS"))
                continue
            ok = run("KVM_SET_XCRS", lambda: vcpu.set_xcrs([(0, saved.xcr0)]))
        else:
            pairs = msr_values
            if not pairs:
                steps.append(Step("KVM_SET_MSRS", detail="no xstate MSRs to put"))
                continue
            n = vcpu.set_msrs(pairs)
            names = ", ".join(f"{msr.name(i)}={v:#x}" for i, v in pairs)
            if n < len(pairs):
                bad = pairs[n]
                why = vcpu.last_msr_failure or "rejected"
                detail = f"KVM set {n} of {len(pairs)} MSRs; {msr.name(bad[0])}={bad[1]:#x}: {why}"
                if vmm.msr_short_count == "skip":
                    skipped = _set_msrs_skipping(vcpu, pairs[n + 1 :])
                    steps.append(
                        Step(
                            "KVM_SET_MSRS",
                            detail=detail + " — skipped with a warning "
                            '("Detected faulty MSR"), the rest set'
                            + (f"; also skipped {skipped}" if skipped else ""),
                        )
                    )
                    continue
                if vmm.by_field:
                    detail += " — QEMU aborts (assert in kvm_buf_set_msrs)"
                steps.append(Step("KVM_SET_MSRS", detail=detail, fatal=True))
                return steps
            steps.append(Step("KVM_SET_MSRS", detail=names))
            ok = True
        if not ok:
            return steps
    return steps


def _set_msrs_skipping(vcpu: Vcpu, pairs: list[tuple[int, int]]) -> str:
    """Cloud Hypervisor set_state's retry loop: set what follows each faulty MSR."""
    skipped = []
    while pairs:
        n = vcpu.set_msrs(pairs)
        if n == len(pairs):
            break
        skipped.append(msr.name(pairs[n][0]))
        pairs = pairs[n + 1 :]
    return ", ".join(skipped)
