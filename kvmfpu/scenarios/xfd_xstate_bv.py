"""Seed 003: XFD[18]=1 with XSTATE_BV[18]=1 in the guest's saved state.

The kernel restores guest state with XRSTOR[S] under the guest's XFD; a saved XSTATE_BV
with an XFD-armed bit makes that XRSTOR raise #NM in the host (exc_device_not_available
WARN, then death). Two ways to get there before b45f72177594 ("x86/fpu: Clear XSTATE_BV[i]
in guest XSAVE state whenever XFD[i]=1", 6.19; 6.18.7, 6.12.67, 6.6.122, 6.1.162):

A. the guest writes XFD[18]=1 while its tiles are live and a host interrupt runs
   kernel_fpu_begin() between the VM exit and fpu_update_guest_xfd(): the interrupt saves
   the guest registers under the old XFD (XSTATE_BV[18]=1), the handler arms XFD, and the
   re-entry's switch_fpu_return XRSTORs and faults;
B. userspace KVM_SET_XSAVE with XSTATE_BV[18]=1 while the vCPU's XFD[18]=1; the next
   KVM_RUN's kvm_load_guest_fpu faults.

After the fix both paths clear the armed bits, so KVM_GET_XSAVE2 reports XSTATE_BV[18]=0
for an XFD-disabled component, which is what XSAVE itself does (SDM §13.14), and the
guest sees the architectural #NM (with IA32_XFD_ERR) on its next TILELOADD.
"""

from __future__ import annotations

from kvmfpu.arch import xfeatures as xf
from kvmfpu.core import msrs as msr
from kvmfpu.kvm.system import ARCH_REQ_XCOMP_GUEST_PERM, Kvm
from kvmfpu.kvm.vcpu import Vcpu
from kvmfpu.scenarios.replay import Recorder, Replay
from kvmfpu.testing.areas import component_data

SEED = "003_066aac38d6ca7040.txt"
TILE = bytes(range(256)) * 4          # one 1 KiB tile register


def _amx_vcpu(kvm: Kvm, rec: Recorder, tag: str) -> Vcpu:
    rec.step(f"{tag} arch_prctl(ARCH_REQ_XCOMP_GUEST_PERM, XTILEDATA)",
             lambda: kvm.arch_prctl(ARCH_REQ_XCOMP_GUEST_PERM, xf.XFeature.XTILEDATA))
    vcpu = kvm.create_vm().create_vcpu()
    ev, _ = rec.step(f"{tag} KVM_SET_CPUID2 (KVM_GET_SUPPORTED_CPUID, AMX included)",
                     lambda: vcpu.set_cpuid2(kvm.get_supported_cpuid()))
    ev.values["guest_xcr0"] = vcpu.gsx
    return vcpu


def _bv(buf: bytes | bytearray) -> int:
    return int.from_bytes(buf[512:520], "little")


def run(version: str = "6.18", *, host: str = "sapphirerapids") -> Replay:
    kvm = Kvm(host, version)
    replay = Replay("xfd-xstate-bv", SEED, kvm.kernel.name, kvm.host.name, kvm.flavor)
    rec = Recorder(replay)
    if not kvm.caps.xfd:
        replay.verdict = f"{kvm.host.name} on {kvm.kernel.name} offers no XFD: nothing to replay"
        return replay

    # A: WRMSR(XFD) racing with an interrupt's kernel_fpu_begin.
    vcpu = _amx_vcpu(kvm, rec, "A.")
    vcpu.set_sregs(cr4_osxsave=True)
    with vcpu.guest() as g:
        def load_tiles() -> None:
            g.xsetbv(0, vcpu.gsx)
            g.set_reg("tilecfg", component_data(xf.XFeature.XTILECFG, 64))
            g.set_reg("tmm0", TILE)
        rec.step("A. guest XSETBV(AMX), LDTILECFG, TILELOADD tmm0", load_tiles)
        vcpu.inject("irq_window", "kernel_fpu_begin")
        ev_a, _ = rec.step("A. guest WRMSR IA32_XFD <- 0x40000 (host IRQ runs kernel_fpu_begin "
                           "before fpu_update_guest_xfd)",
                           lambda: g.wrmsr(msr.IA32_XFD, xf.XTILEDATA))
        if ev_a.ok:
            ev, _ = rec.step("A. guest TILELOADD tmm0 with XFD[18]=1",
                             lambda: g.use(xf.XTILEDATA, "TILELOADD"))
            ev.values["guest_xfd_err"] = vcpu.gfpu.xfd_err
            rec.step("A. guest WRMSR IA32_XFD <- 0", lambda: g.wrmsr(msr.IA32_XFD, 0))
            ev, tmm0 = rec.step("A. guest reads tmm0", lambda: g.reg("tmm0"))
            ev.values["tmm0_intact"] = int(tmm0 == int.from_bytes(TILE, "little"))
    if ev_a.ok:
        ev, out = rec.step("A. KVM_GET_XSAVE2", vcpu.get_xsave2)
        if out is not None:
            ev.values["xstate_bv"] = _bv(out)

    # B: KVM_SET_XSAVE with XSTATE_BV[18]=1 while XFD[18]=1.
    kvm_b = Kvm(host, version)
    vcpu = _amx_vcpu(kvm_b, rec, "B.")
    rec.step("B. KVM_SET_XCRS XCR0 (AMX included)", lambda: vcpu.set_xcrs([(0, vcpu.gsx)]))
    ev, n = rec.step("B. KVM_SET_MSRS IA32_XFD <- 0x40000",
                     lambda: vcpu.set_msrs([(msr.IA32_XFD, xf.XTILEDATA)]))
    ev.values["written"] = n or 0
    blob = bytearray(vcpu.get_xsave2())
    layout = kvm_b.host.layout
    cfg, data = layout.components[17], layout.components[18]
    blob[cfg.offset:cfg.offset + cfg.size] = component_data(17, cfg.size)
    blob[data.offset:data.offset + data.size] = TILE * (data.size // len(TILE))
    blob[512:520] = (_bv(blob) | xf.XTILE).to_bytes(8, "little")
    rec.step("B. KVM_SET_XSAVE with XSTATE_BV[17:18]=1", lambda: vcpu.set_xsave(blob))
    ev_c, out = rec.step("C. KVM_GET_XSAVE2", vcpu.get_xsave2)
    if out is not None:
        ev_c.values["xstate_bv"] = _bv(out)

    def run_once() -> None:
        with vcpu.guest():
            pass
    rec.step("B. KVM_RUN", run_once)

    oopses = [e for e in replay.events if e.outcome == "host-oops" and e.vector == 7]
    replay.bug = bool(oopses)
    stale = out is not None and _bv(out) & xf.XTILEDATA
    if oopses:
        replay.verdict = ("host #NM in restore_fpregs_from_fpstate: "
                          + "; ".join(e.step.split(" ", 1)[0] + " " + (e.function or "")
                                      for e in oopses))
    else:
        replay.verdict = ("no host #NM: XFD-armed components are cleared from XSTATE_BV; "
                          "KVM_GET_XSAVE2 reports XSTATE_BV[18]="
                          + ("1" if stale else "0"))
    return replay
