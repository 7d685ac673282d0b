"""Seed 004: which xstate INIT zeroes and which it keeps (kvm_xstate_reset).

INIT leaves most xstate alone (SDM Vol. 3 §10.1, "Initialization overview": x87/SSE/AVX
state is unchanged by INIT), but KVM zeroes the components a real INIT resets: MPX
(BNDREGS, BNDCSR) and, from 6.18, CET (CET_USER, CET_KERNEL) when KVM supports them.
RESET happens only at vCPU creation and the guest FPU is zero-allocated, so the state a new
vCPU reports is the initial one. Before 6.18 KVM cleared MPX on INIT and (redundantly) on
RESET; XCR0 is kept on INIT, and IA32_XSS too since be4f3b3f8227 (5.17).

The bug: in 6.18-rc1..rc5 kvm_xstate_reset put and reloaded the guest FPU unconditionally,
while KVM_GET_MP_STATE (which emulates a latched INIT through kvm_apic_accept_events)
loaded it only when KVM supports MPX. On a host with CET but no MPX (Sapphire Rapids,
Zen 3 and later), an INIT processed by KVM_GET_MP_STATE put an FPU that was never loaded:
the syzkaller/KASAN crash fixed by 8819a49f9ff8 ("KVM: x86: Unload "FPU" state on INIT if
and only if its currently in-use", 6.18-rc6).
"""

from __future__ import annotations

from kvmfpu.arch import xfeatures as xf
from kvmfpu.core import msrs as msr
from kvmfpu.core.regfile import area_register
from kvmfpu.kvm.system import Kvm
from kvmfpu.kvm.vcpu import MP_NAMES
from kvmfpu.scenarios.replay import NotApplicable, Recorder, Replay, settable_xcr0

SEED = "004_428856640d3bad84.txt"
USER_REGS = {"fcw": (xf.FP, 0x027F), "st0": (xf.FP, (0x4000 << 64) | 1 << 63),
             "xmm2": (xf.SSE, 0x1111_2222), "ymm1": (xf.YMM, 0xAB << 200),
             "k1": (xf.OPMASK, 0xF0F0), "zmm20": (xf.HI16_ZMM, 0x55 << 400),
             "pkru": (xf.PKRU, 0x0000_000C), "bnd0": (xf.BNDREGS, (5 << 64) | 3),
             "bndcfgu": (xf.BNDCSR, 0x1001)}
CET_REGS = {msr.IA32_U_CET: 1, msr.IA32_PL3_SSP: 0x7FFF_F000, msr.IA32_PL0_SSP: 0xFFFF_8000_0010_0000}
ZEROED_ON_INIT = xf.MPX | xf.CET


def run(version: str = "6.18-rc5", *, host: str = "sapphirerapids") -> Replay:
    kvm = Kvm(host, version)
    if not kvm.hk.cfg.has_xsave:
        raise NotApplicable(f"init-xstate needs XSAVE state: {kvm.host.name} has no XSAVE")
    replay = Replay("init-xstate", SEED, kvm.kernel.name, kvm.host.name, kvm.flavor)
    rec = Recorder(replay)
    vm = kvm.create_vm()
    vm.create_irqchip()           # INIT is delivered through the in-kernel LAPIC
    vcpu = vm.create_vcpu()
    ev, fresh = rec.step("KVM_GET_XSAVE of a new vCPU (RESET)", vcpu.get_xsave)
    layout = kvm.host.layout
    if fresh is not None:
        ev.values.update(xstate_bv=int.from_bytes(fresh[512:520], "little"),
                         fcw=area_register(fresh, layout, "fcw"),
                         mxcsr=area_register(fresh, layout, "mxcsr"))
    rec.step("KVM_SET_CPUID2 (KVM_GET_SUPPORTED_CPUID)",
             lambda: vcpu.set_cpuid2(kvm.get_supported_cpuid()))
    xcr0 = settable_xcr0(vcpu.gsx)
    rec.step("KVM_SET_XCRS (every supported user feature)", lambda: vcpu.set_xcrs([(0, xcr0)]))
    cet = vcpu.gss & xf.CET == xf.CET
    if cet:
        rec.step(f"KVM_SET_MSRS IA32_XSS <- {vcpu.gss:#x}",
                 lambda: vcpu.set_msrs([(msr.IA32_XSS, vcpu.gss)]))
    vcpu.set_sregs(cr4_osxsave=True, cr4_pke=bool(xcr0 & xf.PKRU))
    regs = {n: v for n, (bit, v) in USER_REGS.items() if xcr0 & bit}
    cet_msrs = CET_REGS if cet else {}
    with vcpu.guest() as g:
        def load() -> None:
            for name, value in regs.items():
                g.set_reg(name, value)
            for index, value in cet_msrs.items():
                g.wrmsr(index, value)
        rec.step("guest writes " + ", ".join([*regs, *(msr.name(i) for i in cet_msrs)]), load)

    def snapshot(tag: str) -> dict[str, int] | None:
        ev, buf = rec.step(f"KVM_GET_XSAVE {tag} INIT", vcpu.get_xsave)
        if buf is None:
            return None
        ev.values["xstate_bv"] = int.from_bytes(buf[512:520], "little")
        for name in regs:
            ev.values[name] = area_register(buf, layout, name)
        if cet_msrs:
            got = dict(vcpu.get_msrs(cet_msrs))
            for index in cet_msrs:
                ev.values[msr.name(index).lower()] = got.get(index, -1)
        ev.values["xcr0"] = vcpu.get_xcrs()[0][1]
        ev.values["ia32_xss"] = vcpu.ia32_xss
        return ev.values

    before = snapshot("before")
    vcpu.send_init()
    ev_init, state = rec.step("INIT (latched), emulated by KVM_GET_MP_STATE", vcpu.get_mp_state)
    if ev_init.ok:
        ev_init.values["cr4_osxsave"] = int(vcpu.get_sregs().cr4_osxsave)   # INIT clears CR4
    if state is not None:
        ev_init.detail = f"mp_state {MP_NAMES.get(state, state)}"
    if not ev_init.ok:
        replay.bug = ev_init.outcome == "host-oops"
        replay.verdict = f"host crash on INIT: {ev_init.detail}"
        return replay
    after = snapshot("after")
    if before is None or after is None:
        replay.verdict = "KVM_GET_XSAVE failed"
        return replay
    zeroed = [k for k in before if k not in ("xstate_bv",) and before[k] != after[k] and after[k] == 0]
    changed = [k for k in before if k != "xstate_bv" and before[k] != after[k] and k not in zeroed]
    kept = [k for k in before if k != "xstate_bv" and before[k] == after[k]]
    replay.events[-1].detail = (f"zeroed: {', '.join(zeroed) or 'none'}; kept: {', '.join(kept)}"
                                + (f"; changed: {', '.join(changed)}" if changed else ""))
    wrongly = [k for k in zeroed if not _zeroed_by_init(k)]
    replay.bug = bool(changed or wrongly)
    replay.verdict = (f"INIT zeroed {', '.join(zeroed) or 'nothing'}; kept the rest"
                      if not replay.bug else f"INIT changed {', '.join(changed + wrongly)}")
    return replay


def _zeroed_by_init(name: str) -> bool:
    """Registers a real INIT resets and KVM zeroes: MPX and CET state."""
    return name.startswith(("bnd", "ia32_u_cet", "ia32_pl"))
