"""Can a guest's xsave state taken on host A (kernel X) be restored on host B (kernel Y)?

The answer comes from running the path on the models, not from rules: the guest runs on
the source (workload), the VMM saves its state (vmm.save), the state travels by field or
raw, the destination VMM builds its vCPU and puts the state in its order (vmm.put), and
then what the destination holds is compared with what left: registers (register_diff of
the two buffers decoded at their hosts' layouts), XCR0, the xstate MSRs, and the guest's
own restore of a task context it saved on the source. Every failure is a Finding that
carries the kernel function, condition and commit of the KvmError or fault behind it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Final

from kvmfpu import cpus
from kvmfpu.arch import xfeatures as xf
from kvmfpu.arch.xfeatures import describe_mask
from kvmfpu.blob import sources
from kvmfpu.blob.compare import Difference, register_diff
from kvmfpu.blob.decode import Decoded, decode
from kvmfpu.blob.errors import InputError
from kvmfpu.core import msrs as msr
from kvmfpu.core.faults import Fault
from kvmfpu.kvm.cpuid import intern, pack_entries
from kvmfpu.kvm.errors import HostOops, KvmError
from kvmfpu.kvm.profiles import NEWEST, profile
from kvmfpu.kvm.system import ARCH_REQ_XCOMP_GUEST_PERM, Kvm
from kvmfpu.kvm.vcpu import SRegs, Vcpu
from kvmfpu.migrate import guest_cpu, vmm_msrs, workload
from kvmfpu.migrate.guest_cpu import QEMU_ENFORCE
from kvmfpu.migrate.report import (
    COMPATIBLE,
    CONDITIONS,
    INCOMPATIBLE,
    Advice,
    Endpoint,
    Finding,
    Report,
    Scope,
)

__all__ = ["COMPATIBLE", "CONDITIONS", "INCOMPATIBLE", "Advice", "Endpoint", "Finding", "Report",
           "SourceRun", "check", "endpoint", "guest_findings", "read_blob", "run_destination",
           "run_source", "vmm_of"]
from kvmfpu.migrate.vmm import (
    Saved,
    Vmm,
    guest_state,
    put,
    save,
    stream_error,
    unknown_subsections,
    vmm_of,
)
from kvmfpu.qemu import guest_cpuid, host_cpu, models
from kvmfpu.qemu import versions as qemu_versions
from kvmfpu.qemu.env import xrstor_all_areas
from kvmfpu.qemu.guest_cpuid import QemuCpu
from kvmfpu.qemu.models import GuestModel, UnknownModel, resolve

#: The xstate MSRs whose guest values must survive (read on both sides by the host).
STATE_MSRS: Final = (msr.IA32_XSS, msr.IA32_XFD, msr.IA32_XFD_ERR, msr.IA32_U_CET,
                     msr.IA32_S_CET, msr.IA32_PL0_SSP, msr.IA32_PL1_SSP, msr.IA32_PL2_SSP,
                     msr.IA32_PL3_SSP, msr.IA32_INT_SSP_TAB)


def endpoint(text: str | Endpoint, default_kernel: str = NEWEST) -> Endpoint:
    """``HOST[@KERNEL]``: a packaged host model or a dump file, and a kernel release. Without
    ``@KERNEL``: the host description's own kernel (a Firecracker fingerprint's, this
    machine's), else ``default_kernel``."""
    if isinstance(text, Endpoint):
        return text
    host, kernel = text, None
    if "@" in text and not Path(text).exists():
        host, kernel = text.rsplit("@", 1)
    if not host:
        raise InputError(f"{text!r}: no host before '@'")
    model = cpus.load(host)
    kernel = kernel or model.kernel or default_kernel
    profile(kernel)                           # UnknownKernel (ValueError) for bad input
    return Endpoint(model, kernel)


@dataclass
class SourceRun:
    """The source half, reusable for every destination (the matrix caches it)."""

    endpoint: Endpoint
    guest: GuestModel
    vmm: Vmm
    cpu: QemuCpu
    findings: list[Finding]
    steps: list[str] = field(default_factory=list)
    saved: Saved | None = None
    regs: Decoded | None = None            # the guest's registers, as it saved them itself
    source_lost: set[str] = field(default_factory=set)
    truth: dict[int, int] = field(default_factory=dict)   # guest MSR values, read by the host
    ctx: workload.GuestContext | None = None
    #: The QEMU feature names the source's KVM offers (host_cpu.supported_features).
    supported: frozenset[str] = frozenset()
    #: The source's KVM_GET_MSR_INDEX_LIST (the whole list, for snapshot VMMs' MSRs).
    msr_list: tuple[int, ...] = ()
    sregs: dict[str, bool] = field(default_factory=dict)
    #: What ``regs`` was decoded from (the buffer and its host): the register comparison's
    #: cache key (None: not cached).
    regs_key: tuple[bytes, cpus.HostModel] | None = None
    #: The source's /dev/kvm (host passthrough compares the vendors with it).
    kvm: Kvm | None = None
    #: stream_error for each destination VMM: a function of this run's saved state.
    stream_errors: dict[Vmm, str | None] = field(default_factory=dict)

    @property
    def failed(self) -> bool:
        return self.saved is None

    def stream_error(self, vmm: Vmm) -> str | None:
        """What ``vmm`` on the destination prints when it cannot load this run's stream."""
        if vmm not in self.stream_errors:
            saved = self.saved
            assert saved is not None and saved.env is not None
            state = guest_state(saved.env, self.cpu.features, saved.msrs)
            self.stream_errors[vmm] = stream_error(self.vmm, vmm, state)
        return self.stream_errors[vmm]


def _kvm(e: Endpoint) -> Kvm:
    return Kvm(e.host, e.kernel, e.flavor)


def _host_msrs(vcpu: Vcpu) -> dict[int, int]:
    """The guest's xstate MSR values as the host reads them one by one (those KVM has)."""
    out = {}
    for i in STATE_MSRS:
        got = vcpu.get_msrs([i])
        if got:
            out[i] = got[0][1]
    return out


def run_source(src: Endpoint, guest: GuestModel, vmm: Vmm, blob: bytes | None = None) -> SourceRun:
    kvm = _kvm(src)
    cpu = guest_cpuid.build(kvm, guest, ask_perm=vmm.asks_amx_perm)
    run = SourceRun(src, guest, vmm, cpu, [],
                    supported=host_cpu.supported_features(kvm),
                    msr_list=tuple(kvm.msr_index_list_all()), kvm=kvm)
    who = "QEMU" if vmm.by_field else "the VMM"
    if cpu.filtered and getattr(guest, "enforce", False) and vmm.by_field:
        run.findings.append(Finding("error", "source", f"QEMU refuses to start the guest on "
                                    f"{src.label}: \"{QEMU_ENFORCE}\" (enforce): "
                                    f"{'; '.join(cpu.filtered)}"))
        return run
    if cpu.filtered:
        run.findings.append(Finding("info", "source", f"{who} on {src.label} drops "
                                    f"{'; '.join(cpu.filtered)}: host doesn't support requested "
                                    "feature (the guest runs without them from the start)"))
    if cpu.perm_error is not None:
        run.findings.append(Finding.of("info", "source", "ARCH_REQ_XCOMP_GUEST_PERM failed and "
                                       f"{who} only warns", cpu.perm_error))
    vcpu = kvm.create_vm(memory_size=workload.MEMORY).create_vcpu()
    try:
        vcpu.set_cpuid2(cpu.entries)
        run.steps.append("KVM_SET_CPUID2")
        run.sregs = {"cr4_osxsave": cpu.has("xsave"), "cr4_pke": cpu.has("pku")}
        vcpu.set_sregs(SRegs(**run.sregs))
    except KvmError as exc:
        run.findings.append(Finding.of("error", "source", f"the guest cannot start on "
                                       f"{src.label}", exc))
        return run
    try:
        guest_state = workload.run_source(vcpu, cpu.xcr0, cpu.xss)
    except Fault as fault:
        run.findings.append(Finding("error", "source", f"the guest faults on {src.label}: "
                                    f"{fault}"))
        return run
    except HostOops as oops:
        run.findings.append(Finding("error", "source", f"the host kernel on {src.label} "
                                    f"oopses while the guest runs: {oops}"))
        return run
    run.ctx = guest_state.ctx
    run.regs = decode(guest_state.registers, kvm.host.layout, host=src.host.name)
    run.regs_key = (bytes(guest_state.registers), kvm.host)
    run.truth = _host_msrs(vcpu)
    ids = vmm.msr_list(kvm.msr_index_list(), vcpu.cpuid.has.__getitem__)
    try:
        saved = save(vmm, vcpu, cpu, ids)
    except KvmError as exc:
        run.findings.append(Finding.of("error", "source", f"{vmm.label} cannot save the state on "
                                       f"{src.label}", exc))
        return run
    except HostOops as oops:
        run.findings.append(Finding("error", "source", f"saving the state oopses the host "
                                    f"kernel on {src.label}: {oops}"))
        return run
    run.steps.append(f"{saved.ioctl} ({len(saved.buf)} bytes), KVM_GET_XCRS, KVM_GET_MSRS "
                     f"({', '.join(msr.name(i) for i in saved.msrs) or 'none'})")
    if saved.msr_failure:
        run.findings.append(Finding("info", "source", f"KVM_GET_MSRS stopped early: "
                                    f"{saved.msr_failure}"))
    if blob is not None:
        saved.buf = blob
        if saved.env is not None:
            saved.env = xrstor_all_areas(blob, kvm.host.layout, saved.env)
    run.saved = saved
    out = decode(saved.buf, kvm.host.layout, host=src.host.name)
    lost = [d for d in register_diff(run.regs, out) if d[0] != "XSTATE_BV"]
    if lost and blob is None:
        run.source_lost = {d[0] for d in lost}
        run.findings.append(Finding("error", "source", f"{saved.ioctl} on {src.label} does not "
                                    f"return {len(lost)} register(s) the guest holds "
                                    f"({_names(lost)})"))
    if blob is not None:
        run.regs = out         # the given state is what left the source
        run.regs_key = (bytes(saved.buf), kvm.host)
    return run


#: register_diff of (source buffer, its host, destination buffer, its host): a function of
#: the two buffers and the two hosts' layouts, the same for every kernel pair that gives
#: the same bytes (a matrix's cells under each of its kernels).
_DIFFS: dict[tuple[bytes, cpus.HostModel, bytes, cpus.HostModel], tuple[Difference, ...]] = {}
_DIFFS_MAX: Final = 2048


def _register_diff(run: SourceRun, out: bytes, dst: cpus.HostModel) -> list[Difference]:
    assert run.regs is not None
    if run.regs_key is None:
        return register_diff(run.regs, decode(out, dst.layout, host=dst.name))
    key = (*run.regs_key, out, dst)
    diff = _DIFFS.get(key)
    if diff is None:
        diff = tuple(register_diff(run.regs, decode(out, dst.layout, host=dst.name)))
        if len(_DIFFS) >= _DIFFS_MAX:
            _DIFFS.clear()
        _DIFFS[key] = diff
    return list(diff)


def _names(diff: Sequence[tuple[str, str, str]]) -> str:
    return ", ".join(d[0] for d in diff[:6]) + (", ..." if len(diff) > 6 else "")


def _dst_cpuid(run: SourceRun, vmm: Vmm, kvm: Kvm,
               findings: list[Finding]) -> list[Any] | None:
    saved = run.saved
    assert saved is not None
    if vmm.cpuid_from_source:
        table = intern(pack_entries(saved.cpuid), len(saved.cpuid))
        if vmm.asks_amx_perm and table.gsx_raw & xf.XTILEDATA:
            try:
                kvm.arch_prctl(ARCH_REQ_XCOMP_GUEST_PERM, int(xf.XFeature.XTILEDATA))
            except KvmError as exc:
                findings.append(Finding.of("info", "destination", "ARCH_REQ_XCOMP_GUEST_PERM "
                                           "failed", exc))
        # The saved CPUID goes back verbatim: what the guest sees and the destination's KVM
        # cannot provide (bits the source's KVM really offered; runtime bits aside). Both
        # sides as a VMM sees them: KVM's table plus the bits a VMM sets itself whatever KVM
        # reports (hypervisor, tsc-deadline with the in-kernel LAPIC: host_cpu.FIXUPS).
        seen = guest_cpuid.features_in(saved.cpuid) & run.supported
        lost = seen - host_cpu.supported_features(kvm)
        if lost:
            findings.append(guest_cpu.lost_features(lost, run.guest, vmm, kvm, "the destination"))
        return list(saved.cpuid)
    try:
        dguest = guest_at(run.guest, vmm)
    except UnknownModel as exc:
        also = []
        if run.cpu.xcr0 & xf.XTILE and not vmm.asks_amx_perm:
            also.append(f"{vmm.label} has no AMX (ARCH_REQ_XCOMP_GUEST_PERM and KVM_GET_XSAVE2 "
                        "came with QEMU 7.0)")
        if saved.env is not None:
            err = run.stream_error(vmm)
            if err is not None:
                also.append("the stream would not load either: " + " / ".join(err.splitlines()))
        findings.append(Finding("error", "destination", f"{vmm.label} cannot start the guest: "
                                f"{exc}" + "".join(f"; {a}" for a in also)))
        return None
    dcpu = guest_cpuid.build(kvm, dguest, ask_perm=vmm.asks_amx_perm)
    lost, gained = run.cpu.features - dcpu.features, dcpu.features - run.cpu.features
    if dcpu.filtered and getattr(run.guest, "enforce", False):
        findings.append(Finding("error", "destination", f"QEMU refuses to start on the "
                                f"destination: \"{QEMU_ENFORCE}\" (enforce, x86_cpu_realizefn): "
                                f"{'; '.join(dcpu.filtered)}", features=tuple(sorted(lost))))
    elif dcpu.filtered:
        findings.append(Finding("info", "destination", f"QEMU on the destination drops "
                                f"{'; '.join(dcpu.filtered)}: host doesn't support requested "
                                "feature"))
    if lost:
        findings.append(guest_cpu.lost_features(lost, run.guest, vmm, kvm, "the destination"))
    if gained:
        findings.append(Finding("info", "cpu", f"the guest's CPUID gains {', '.join(sorted(gained))} "
                                "on the destination (a running guest keeps what it read at boot)"))
    if run.guest.passthrough:
        change = guest_cpu.vendor_change(run.kvm or _kvm(run.endpoint), kvm)
        if change is not None:
            findings.append(change)
    if dcpu.perm_error is not None:
        findings.append(Finding.of("info", "destination", "ARCH_REQ_XCOMP_GUEST_PERM failed and "
                                   "QEMU only warns", dcpu.perm_error))
    return dcpu.entries


def run_destination(run: SourceRun, dst: Endpoint, kvm: Kvm | None = None,
                    blob_name: str | None = None, vmm: Vmm | None = None) -> Report:
    """The destination half: ``vmm`` (default: the source's) builds the vCPU and puts the
    state the source's VMM saved."""
    vmm = vmm or run.vmm
    if vmm.by_field != run.vmm.by_field:
        raise InputError(f"{run.vmm.label} and {vmm.label} carry the state differently (by field "
                         "vs raw buffer): one cannot restore what the other saved")
    report = Report(run.endpoint, dst, run.guest, run.vmm, list(run.findings),
                    [("source", s, "ok") for s in run.steps], blob=blob_name,
                    dst_vmm=vmm if vmm != run.vmm else None,
                    guest_xcr0=run.cpu.xcr0, guest_xss=run.cpu.xss,
                    guest_features=run.cpu.features)
    try:
        return _run_destination(run, dst, kvm, vmm, report)
    finally:
        report.lost_features = tuple(sorted({f for x in report.findings if x.level == "error"
                                             for f in x.features}))
        report.scope = _scope(run, vmm, report)


def _scope(run: SourceRun, vmm: Vmm, report: Report) -> Scope:
    saved = run.saved
    msr_names = sorted({msr.name(i) for i in saved.msrs}) if saved is not None else []
    compared = len(run.cpu.features) if vmm.by_field or saved is None else \
        len(guest_cpuid.features_in(saved.cpuid) & run.supported)
    restore = run.ctx.restore.upper() if run.ctx is not None else None
    others = len(set(vmm_msrs.saved_msrs(run.vmm, run.msr_list)) - set(STATE_MSRS))
    scope = guest_cpu.scope(vmm, compared, msr_names, restore, vmm.by_field, others)
    # What each kernel profile assumes (a distro kernel's unknown backports, an LTS modelled
    # on 5.15's KVM tables) bounds the verdict too.
    for e in (run.endpoint, report.dst):
        scope.not_checked += [f"{e.label}: {n}" for n in profile(e.kernel).notes]
    return scope


def _run_destination(run: SourceRun, dst: Endpoint, kvm: Kvm | None, vmm: Vmm,
                     report: Report) -> Report:
    if run.failed:
        return report
    saved = run.saved
    assert saved is not None and run.regs is not None
    kvm = kvm or _kvm(dst)
    # Each incoming migration is a new destination VMM process: a reused Kvm (the matrix,
    # the audit) must not carry one run's guest permissions, or their lock once a vCPU
    # existed (fpu_init_guest_permissions), into the next run.
    kvm.process = kvm.hk.new_process()
    findings = report.findings
    # The destination QEMU starts with the guest's -cpu first (_dst_cpuid), then loads the
    # stream (every cpu subsection), then kvm_arch_put_registers puts the state.
    cpuid = _dst_cpuid(run, vmm, kvm, findings)
    if cpuid is None:
        return report
    if saved.env is not None:
        err = run.stream_error(vmm)
        if err is not None:
            state = guest_state(saved.env, run.cpu.features, saved.msrs)
            unknown = ", ".join(unknown_subsections(run.vmm, vmm, state))
            findings.append(Finding("error", "transport", f"{vmm.label} on the destination cannot "
                                    f"load what {run.vmm.label} sent (the cpu device's {unknown}, "
                                    f"unknown to it): {' / '.join(err.splitlines())}"))
            return report
    if not vmm.by_field:
        saved_all = vmm_msrs.saved_msrs(run.vmm, run.msr_list)
        bad = vmm_msrs.restore_finding(vmm, saved_all, kvm.msr_index_list_all(), dst.label)
        if bad is not None:
            findings.append(bad)
    vm = kvm.create_vm(memory_size=workload.MEMORY)
    try:
        vcpu = vm.create_vcpu()
        _put_and_compare(run, vmm, kvm, vcpu, cpuid, report)
    except HostOops as oops:
        findings.append(Finding("error", "destination", f"the host kernel on {dst.label} "
                                f"oopses: {oops}"))
    except KvmError as exc:
        findings.append(Finding.of("error", "destination", "reading the state back fails", exc))
    finally:
        vm.close()
    return report


def _put_and_compare(run: SourceRun, vmm: Vmm, kvm: Kvm, vcpu: Vcpu, cpuid: list[Any],
                     report: Report) -> None:
    saved, findings = run.saved, report.findings
    assert saved is not None and run.regs is not None
    if vmm.by_field:
        has = intern(pack_entries(cpuid), len(cpuid)).has
        ids = vmm.msr_list(kvm.msr_index_list(), has.__getitem__)
        values = [(i, saved.msrs.get(i, 0)) for i in ids]
    else:
        values = list(saved.msrs.items())
    steps = put(vmm, vcpu, saved, cpuid, values, run.sregs)
    put_ids = {i for i, _ in values}
    for st in steps:
        outcome = "ok" if st.ok else (f"-{st.error.errno_name}" if st.error else "failed")
        report.steps.append(("destination", st.name, outcome + (f": {st.detail}" if st.detail
                                                                  else "")))
        if st.error is not None:
            findings.append(Finding.of("error", "destination", st.name, st.error))
        elif st.fatal:
            findings.append(Finding("error", "destination", f"{st.name}: {st.detail}"))
    if not all(st.ok for st in steps):
        return
    _compare(run, kvm, vcpu, report, put_ids)
    _notes(run, kvm, report)


def _compare(run: SourceRun, kvm: Kvm, vcpu: Vcpu, report: Report, put_ids: set[int]) -> None:
    saved, findings = run.saved, report.findings
    assert saved is not None and run.regs is not None
    out = vcpu.get_xsave2() if kvm.kernel.has("xsave2") else vcpu.get_xsave()
    diff = _register_diff(run, bytes(out), kvm.host)
    report.lost = [d for d in diff if d[0] != "XSTATE_BV"]
    new = [d for d in report.lost if d[0] not in run.source_lost]
    if new:
        names = _names(new)
        how = ("the buffer is taken verbatim at the destination's offsets"
               if not run.vmm.by_field else "the destination does not hold them")
        findings.append(Finding("error", "destination", f"{len(new)} register(s) differ "
                                f"after the restore ({names}): {how}"))
    elif diff and not report.lost:
        _, a, b = diff[0]
        findings.append(Finding("info", "destination", f"XSTATE_BV {a} on the source, {b} on the "
                                "destination; the components in question hold their initial "
                                "values"))
    xcr0 = dict(vcpu.get_xcrs()).get(0, 1)
    if xcr0 != saved.xcr0:
        findings.append(Finding("error", "destination", f"XCR0 is {saved.xcr0:#x} on the source "
                                f"and {xcr0:#x} on the destination"))
    after = _host_msrs(vcpu)
    gone = []
    for i, value in run.truth.items():
        if after.get(i, 0) != value:
            got = f"{after[i]:#x}" if i in after else "no such MSR"
            why = ("not saved" if i not in saved.msrs else "not put" if i not in put_ids
                   else "changed")
            gone.append(f"{msr.name(i)} {value:#x} -> {got} ({why})")
            report.lost_msrs.add(i)
    if gone:
        findings.append(Finding("error", "destination", f"xstate MSRs not restored: "
                                f"{'; '.join(gone)}"))
    if run.ctx is not None:
        fault = workload.resume(vcpu, run.ctx)
        report.steps.append(("guest", f"{run.ctx.restore.upper()} of a task context saved on "
                             "the source", "ok" if fault is None else fault.label))
        if fault is not None:
            findings.append(Finding("error", "guest", f"the guest's {run.ctx.restore.upper()} of "
                                    f"a context it saved with {run.ctx.insn.upper()} on the "
                                    f"source (RFBM {run.ctx.mask:#x}) faults: {fault}"))


def _notes(run: SourceRun, kvm: Kvm, report: Report) -> None:
    """Conditions and harmless differences worth knowing."""
    saved, findings = run.saved, report.findings
    assert saved is not None
    src_lay, dst_lay = run.endpoint.host.layout, kvm.host.layout
    moved = [f"{xf.name_of(b)} {src_lay.components[b].offset:#x}->{dst_lay.components[b].offset:#x}"
             for b in xf.bits(saved.xcr0 & ~xf.FPSSE)
             if b in src_lay.components and b in dst_lay.components
             and src_lay.components[b].offset != dst_lay.components[b].offset]
    if moved and run.vmm.by_field:
        findings.append(Finding("info", "transport", f"standard-format offsets differ "
                                f"({', '.join(moved)}); QEMU re-lays the registers "
                                "(kvm_cpu_xsave_init reads each host's CPUID.(0xD,i))"))
    if saved.xcr0 & xf.XTILEDATA or len(saved.buf) > 4096:
        findings.append(Finding("condition", "transport", f"the state takes "
                                f"{src_lay.standard_size(saved.xcr0)} bytes: both VMMs must "
                                "request ARCH_REQ_XCOMP_GUEST_PERM before creating vCPUs and "
                                "use KVM_GET_XSAVE2 (KVM_GET_XSAVE fails with -EINVAL above "
                                "4096 bytes; QEMU >= 7.0 does both)"))
    xss = run.truth.get(msr.IA32_XSS, 0)
    dst_vmm = report.dst_vmm or run.vmm
    if (xss and msr.IA32_XSS not in report.lost_msrs
            and dst_vmm.put_order.index("msrs") > dst_vmm.put_order.index("xsave")):
        findings.append(Finding("info", "destination", f"IA32_XSS ({describe_mask(xss)}) is put "
                                "after KVM_SET_XSAVE: harmless on KVM, whose KVM_SET_XSAVE "
                                "carries user components only and keeps supervisor state "
                                "(fpu_copy_uabi_to_guest_fpstate), and which checks XSS "
                                "against guest CPUID alone (kvm_set_msr_common, 338543cbe033)"))
    xfd = run.truth.get(msr.IA32_XFD)
    if xfd is not None and run.cpu.has("xfd"):
        findings.append(Finding("info", "destination", f"IA32_XFD {xfd:#x} and IA32_XFD_ERR "
                                f"{run.truth.get(msr.IA32_XFD_ERR, 0):#x} restored"))


def model_release(vmm: Vmm) -> str | None:
    """The QEMU release whose CPU models a versioned QEMU has (the newest modelled one at or
    below it; models.RELEASES starts at 6.2); None for other VMMs."""
    if not vmm.by_field or vmm.version is None:
        return None
    older = [r for r in models.RELEASES
             if qemu_versions.series(r) <= qemu_versions.series(vmm.version)]
    return older[-1] if older else models.RELEASES[0]


def guest_at(guest: str | GuestModel, vmm: Vmm, host: Any = None) -> GuestModel:
    """``guest`` as the VMM's QEMU release resolves it (UnknownModel when that release lacks
    the model version or a feature). A string is anything migrate.guest_spec takes (a -cpu
    value, a libvirt mode, a domain XML or expansion file; InputError when bad); ``host``
    (a Kvm or a function making one) is the host libvirt's host-model is computed on."""
    rel = model_release(vmm)
    if isinstance(guest, str):
        from kvmfpu.migrate.guest_spec import resolve_guest
        return resolve_guest(guest, host=host, qemu=rel)
    if rel is None or guest.qemu == rel or guest.passthrough or guest.version is None:
        return guest        # version None: an expansion's feature set, taken verbatim
    again = resolve(guest.spec, qemu=rel)
    # keep what was said about the guest's origin (libvirt's -cpu line, its check=)
    return replace(again, notes=tuple(dict.fromkeys((*guest.notes, *again.notes))))


def guest_findings(g: GuestModel) -> list[Finding]:
    """What resolving the guest CPU said (libvirt's -cpu line, what is approximated), as
    notes that lead the verdict's findings."""
    return [Finding("info", "guest", f"guest CPU: {n}") for n in g.notes]


def check(src: str | Endpoint, dst: str | Endpoint, guest: str | GuestModel, *,
          vmm: str | Vmm = "qemu", dst_vmm: str | Vmm | None = None, blob: bytes | None = None,
          blob_name: str | None = None, advise: bool = True) -> Report:
    """One migration: the source runs ``guest``, ``vmm`` saves its state and ``dst_vmm``
    (default: the same) restores it on ``dst``."""
    s, d = endpoint(src), endpoint(dst)
    v = vmm_of(vmm)
    dv = vmm_of(dst_vmm) if dst_vmm is not None else v
    g = guest_at(guest, v, host=lambda: _kvm(s))
    report = run_destination(run_source(s, g, v, blob), d, blob_name=blob_name, vmm=dv)
    report.findings[:0] = guest_findings(g)
    if advise and report.verdict != COMPATIBLE:
        from kvmfpu.migrate.advice import advise as _advise
        report.advice = _advise(report, blob)
    return report


def read_blob(path: str | os.PathLike[str]) -> bytes:
    """The xsave buffer in a capture file (kvm_xsave dump, core file, QEMU stream...): the
    first vCPU's when the file holds several."""
    caps = sources.read(path, None, sources.MAX_SIZE)
    if not caps:
        raise InputError(f"{os.fspath(path)}: no xsave image found")
    return bytes(caps[0].data)
