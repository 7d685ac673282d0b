"""How VMMs save a vCPU's xsave state and put it back: which ioctls, in which order, and
what travels between the hosts.

Two ways to carry the state:

- by field (QEMU): kvm_get_xsave parses the buffer into CPUX86State at the source host's
  offsets (x86_cpu_xrstor_all_areas), the stream carries registers, and kvm_put_xsave
  lays them out again at the destination host's offsets (x86_cpu_xsave_all_areas);
  kvm_arch_put_registers then issues KVM_SET_SREGS, KVM_SET_XSAVE, KVM_SET_XCRS and one
  KVM_SET_MSRS (IA32_XSS when KVM lists it, XFD/XFD_ERR when the guest has XFD, CET MSRs
  when it has SHSTK/IBT, in that order; a short count trips an assert in
  kvm_buf_set_msrs). qemu/qemu target/i386/kvm/kvm.c @b775eff300f4 (QEMU 11.0 cycle).
- raw (snapshot VMMs): the KVM_GET_XSAVE{2} buffer is stored verbatim and handed to the
  destination's KVM_SET_XSAVE, with the saved KVM_GET_CPUID2 table and MSR values.
  Firecracker restore_state (firecracker src/vmm/src/arch/x86_64/vcpu.rs @0962fe03) and
  Cloud Hypervisor set_state (hypervisor/src/kvm/mod.rs @01b90534): CPUID, MP state,
  regs, sregs, XSAVE, XCRS, ..., MSRs. crosvm (hypervisor/src/x86_64.rs @013f64ac) puts
  XCRS and MSRs before XSAVE.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from kvmfpu.core import msrs as msr
from kvmfpu.kvm.cpuid import CpuidEntry
from kvmfpu.kvm.errors import KvmError
from kvmfpu.kvm.vcpu import SRegs, Vcpu
from kvmfpu.qemu.env import QemuEnv, buffer_size, xrstor_all_areas, xsave_all_areas
from kvmfpu.qemu.guest_cpuid import QemuCpu
from kvmfpu.uapi import KVM_CAP_XCRS, KVM_CAP_XSAVE2

CET_MSRS_IBT: Final = (msr.IA32_U_CET, msr.IA32_S_CET)
CET_MSRS_SHSTK: Final = (msr.IA32_PL0_SSP, msr.IA32_PL1_SSP, msr.IA32_PL2_SSP,
                         msr.IA32_PL3_SSP, msr.IA32_INT_SSP_TAB)
#: Firecracker's MSR allow-list has no xstate MSR (msr.rs; IA32_XSS absent, UNVERIFIED for
#: its newest version).
_ALLOW_LIST: Final[frozenset[int]] = frozenset()


@dataclass(frozen=True)
class Vmm:
    name: str
    title: str
    by_field: bool               # QEMU's re-laying transport; False: the buffer verbatim
    xsave2: bool                 # KVM_GET_XSAVE2 where KVM_CAP_XSAVE2 is non-zero
    asks_amx_perm: bool          # ARCH_REQ_XCOMP_GUEST_PERM before creating vCPUs
    cpuid_from_source: bool      # KVM_SET_CPUID2 with the source's saved KVM_GET_CPUID2
    msrs: str                    # "qemu", "index-list" or "allow-list"
    put_order: tuple[str, ...]
    source: str

    def msr_list(self, kvm_list: tuple[int, ...],
                 cpuid_has: Callable[[str], bool]) -> list[int]:
        """The xstate MSRs this VMM saves and puts, on a kernel listing ``kvm_list``."""
        if self.msrs == "index-list":
            return list(kvm_list)
        if self.msrs == "allow-list":
            return [i for i in kvm_list if i in _ALLOW_LIST]
        out = []
        if msr.IA32_XSS in kvm_list:                      # has_msr_xss
            out.append(msr.IA32_XSS)
        if cpuid_has("xfd"):                              # has_msr_xfd
            out += [msr.IA32_XFD, msr.IA32_XFD_ERR]
        if cpuid_has("shstk") or cpuid_has("ibt"):        # QEMU 11: CET MSRs last
            out += list(CET_MSRS_IBT)
            if cpuid_has("shstk"):
                out += list(CET_MSRS_SHSTK)
        return out


_RAW_ORDER = ("cpuid", "sregs", "xsave", "xcrs", "msrs")
VMMS: Final[dict[str, Vmm]] = {v.name: v for v in (
    Vmm("qemu", "QEMU (>= 7.0; CET MSRs from 11.0)", True, True, True, False, "qemu",
        ("cpuid", "sregs", "xsave", "xcrs", "msrs"),
        "kvm_arch_put_registers / kvm_arch_get_registers, target/i386/kvm/kvm.c"),
    Vmm("raw", "a snapshot VMM that stores KVM_GET_XSAVE2 buffers verbatim", False, True, True,
        True, "index-list", _RAW_ORDER,
        "Cloud Hypervisor set_state (>= #7534) and Firecracker restore_state (>= #5065) order"),
    Vmm("firecracker", "Firecracker (KVM_GET_XSAVE2, AMX permission; MSR allow-list)", False,
        True, True, True, "allow-list", _RAW_ORDER,
        "firecracker src/vmm/src/arch/x86_64/vcpu.rs restore_state @0962fe03"),
    Vmm("cloud-hypervisor", "Cloud Hypervisor (KVM_GET_XSAVE2 since #7534; every listed MSR)",
        False, True, True, True, "index-list", _RAW_ORDER,
        "cloud-hypervisor hypervisor/src/kvm/mod.rs set_state @01b90534"),
    Vmm("crosvm", "crosvm (XCRS and MSRs before XSAVE)", False, True, True, True, "index-list",
        ("cpuid", "sregs", "xcrs", "msrs", "xsave"),
        "crosvm hypervisor/src/x86_64.rs restore order @013f64ac (UNVERIFIED for its newest)"),
    Vmm("raw-xsave", "a snapshot VMM that saves with KVM_GET_XSAVE (Cloud Hypervisor before "
        "#7534, Firecracker before #5065)", False, False, True, True, "index-list", _RAW_ORDER,
        "cloud-hypervisor issue #7533 (KVM_GET_XSAVE -EINVAL with AMX)"),
    Vmm("raw-noperm", "a snapshot VMM that never asks ARCH_REQ_XCOMP_GUEST_PERM", False, True,
        False, True, "index-list", _RAW_ORDER,
        "Cloud Hypervisor without --cpus features=amx (hypervisor/src/arch/x86/mod.rs)"),
)}


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
    fatal: bool = False          # the VMM stops (an error, or QEMU's assert on MSRs)

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
        env = xrstor_all_areas(buf, kvm.host.layout)
        env.xcr0 = xcrs.get(0, env.xcr0)
        values = dict(got)
        env.xss = values.get(msr.IA32_XSS, 0)
        env.xfd = values.get(msr.IA32_XFD, 0)
        env.xfd_err = values.get(msr.IA32_XFD_ERR, 0)
    return Saved(buf, "KVM_GET_XSAVE2" if use2 else "KVM_GET_XSAVE", xcrs.get(0, 1), dict(got),
                 vcpu.get_cpuid2() if vmm.cpuid_from_source else cpu.entries, env,
                 vcpu.last_msr_failure if len(got) < len(msr_ids) else None)


def buffer_for(vmm: Vmm, saved: Saved, vcpu: Vcpu) -> bytes:
    """The buffer handed to the destination's KVM_SET_XSAVE."""
    if not vmm.by_field or saved.env is None:
        return saved.buf
    kvm = vcpu.kvm
    cap = kvm.check_extension(KVM_CAP_XSAVE2) if vmm.xsave2 else 0
    size = buffer_size(cap) if cap else 4096          # kvm_init_xsave
    return xsave_all_areas(saved.env, kvm.host.layout, size)


def put(vmm: Vmm, vcpu: Vcpu, saved: Saved, cpuid: list[CpuidEntry],
        msr_values: list[tuple[int, int]], sregs: dict[str, bool]) -> list[Step]:
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
            if not vcpu.kvm.check_extension(KVM_CAP_XCRS):        # has_xcrs
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
                detail = (f"KVM set {n} of {len(pairs)} MSRs; {msr.name(bad[0])}={bad[1]:#x}: "
                          f"{why}")
                if vmm.by_field:
                    detail += " — QEMU aborts (assert in kvm_buf_set_msrs)"
                steps.append(Step("KVM_SET_MSRS", detail=detail, fatal=True))
                return steps
            steps.append(Step("KVM_SET_MSRS", detail=names))
            ok = True
        if not ok:
            return steps
    return steps
