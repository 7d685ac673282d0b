"""Seed 001: the Zen 1/2 XSAVES erratum and what KVM offers guests.

b0563468eeac ("x86/CPU/AMD: Disable XSAVES on AMD family 0x17", 6.3; stable 6.2.7,
6.1.20, 5.15.103) clears X86_FEATURE_XSAVES on family 17h (erratum 1386). KVM's CPUID caps
come from the kernel's, so from then on KVM_GET_SUPPORTED_CPUID offers XSAVEC without
XSAVES, the configuration in which Hyper-V-enabled Windows Server 2016 SMP guests fail to
boot. The patch in the seed (report XSAVES from the raw CPU) was rejected; upstream only
added a notice (d52734d00b8e, 6.8, kvm_hv_xsaves_xsavec_maybe_warn). So there is no fixed
release: the replay shows the behaviour before the erratum commit and after it.

The second half asks what happens when userspace stuffs XSAVES into the guest CPUID, as
the maintainer suggested: KVM_SET_CPUID2 takes it (KVM does not filter guest CPUID),
the guest executes XSAVES natively (SVM cannot intercept it; svm_vcpu_after_set_cpuid),
IA32_XSS accepts 0, and KVM does not switch XSS because the host no longer uses XSAVES.
Whether the guest then trips erratum 1386 is up to the guest.
"""

from __future__ import annotations

from kvmfpu.arch import xfeatures as xf
from kvmfpu.core import msrs as msr
from kvmfpu.kvm.caps import D1_XSAVEC, D1_XSAVES
from kvmfpu.kvm.cpuid import CpuidEntry
from kvmfpu.kvm.profiles import erratum_1386_fixed_by_microcode
from kvmfpu.kvm.system import Kvm
from kvmfpu.scenarios.replay import NotApplicable, Recorder, Replay, settable_xcr0

SEED = "001_9a265d5787f64c5b.txt"
ALL = (1 << 64) - 1
SAVE_GPA = 0x1000


def _d1(entries: list[CpuidEntry]) -> CpuidEntry:
    return next(e for e in entries if e.function == 0xD and e.index == 1)


def _why_not_applied(kvm: Kvm) -> str:
    """Why init_amd_zen1/2 (b0563468eeac) left XSAVES on: the real reason for this host."""
    host = kvm.host
    family = host.signature[0]
    if host.vendor != "AuthenticAMD":
        return f"{host.name} is not an AMD part ({host.vendor}); erratum 1386 is AMD family 17h's"
    if family != 0x17:
        return (f"{host.name} is AMD family {family:#x}; erratum 1386 (and b0563468eeac) is "
                "family 17h's (Zen 1/2) only")
    return (f"{kvm.kernel.name} predates b0563468eeac (6.3; stable 6.2.7, 6.1.20, 5.15.103), "
            "so the kernel still uses XSAVES on this family 17h part")


def run(version: str = "6.3", *, host: str = "zen2") -> Replay:
    kvm = Kvm(host, version)
    replay = Replay("zen-xsaves", SEED, kvm.kernel.name, kvm.host.name, kvm.flavor)
    rec = Recorder(replay)
    if not kvm.hk.cfg.has_xsave:
        raise NotApplicable(f"zen-xsaves needs XSAVE: {kvm.host.name} has no XSAVE")
    hw = kvm.host.cpuid(0xD, 1)[0]
    supported: list[CpuidEntry] = []

    def get_supported() -> None:
        supported.extend(kvm.get_supported_cpuid())
    ev, _ = rec.step("KVM_GET_SUPPORTED_CPUID", get_supported)
    d1 = _d1(supported).eax
    ev.values.update(hw_d1_eax=hw, kvm_d1_eax=d1)
    ev.detail = (f"the CPU enumerates {'XSAVES' if hw & D1_XSAVES else 'no XSAVES'}; KVM offers "
                 f"{'XSAVEC' if d1 & D1_XSAVEC else 'no XSAVEC'} and "
                 f"{'XSAVES' if d1 & D1_XSAVES else 'no XSAVES'}; the host kernel saves with "
                 f"{kvm.hk.save_insn.upper()}")
    hidden = bool(hw & D1_XSAVES) and not d1 & D1_XSAVES
    replay.bug = hidden
    if hidden and kvm.kernel.has("zen_erratum_microcode"):
        fam, model, step = kvm.host.signature
        rev = getattr(kvm.host, "microcode", None)
        fixed = erratum_1386_fixed_by_microcode(fam, model, step, rev)
        replay.notes.append(
            f"from 29ba89f18952 (6.10) the kernel keeps XSAVES when the microcode has the fix "
            f"(erratum_1386_microcode[]); {kvm.host.name} is {fam:#x}/{model:#x}/{step}, "
            f"microcode {rev or 'not recorded'}"
            + (": fixed, yet the model still applies the erratum (kvmfpu.linux.config does "
               "not read the revision yet)" if fixed else ": not a fixed revision"))
    if hidden and d1 & D1_XSAVEC:
        replay.notes.append("guest CPUID from KVM_GET_SUPPORTED_CPUID has XSAVEC without XSAVES: "
                            "Hyper-V-enabled Windows Server 2016 SMP guests fail to boot "
                            "(HV_STATUS_CPUID_XSAVE_FEATURE_VALIDATION_ERROR); workaround: drop "
                            "XSAVEC from the guest CPUID"
                            + ("; KVM logs a notice (d52734d00b8e)" if kvm.kernel.at_least(6, 8)
                               else ""))

    # Userspace asks for XSAVES anyway.
    vcpu = kvm.create_vm().create_vcpu()
    wanted = [e._replace(eax=e.eax | D1_XSAVES) if (e.function, e.index) == (0xD, 1) else e
              for e in supported]
    ev, _ = rec.step("KVM_SET_CPUID2 with CPUID.(0DH,1).EAX[3] (XSAVES) set by userspace",
                     lambda: vcpu.set_cpuid2(wanted))
    ev, back = rec.step("KVM_GET_CPUID2", vcpu.get_cpuid2)
    if back is not None:
        ev.values["guest_d1_eax"] = _d1(back).eax
    vcpu.set_sregs(cr4_osxsave=True)
    vcpu.set_xcrs([(0, settable_xcr0(vcpu.gsx))])
    with vcpu.guest() as g:
        g.set_reg("xmm3", 0x5A5A_0000_1386)
        ev, _ = rec.step("guest XSAVES", lambda: g.xsaves(SAVE_GPA, ALL))
        area = vcpu.vm.memory[SAVE_GPA:SAVE_GPA + 1024]
        ev.values["xcomp_bv"] = int.from_bytes(area[520:528], "little")
        ev.values["saved_xmm3"] = int.from_bytes(area[160 + 48:160 + 64], "little")
        ev.detail = ("executed natively: SVM cannot hide XSAVES"
                     + ("" if g._xsaves_enabled() else "; KVM does not switch IA32_XSS (the host "
                        "kernel does not use XSAVES)"))
        rec.step("guest WRMSR IA32_XSS <- 0", lambda: g.wrmsr(msr.IA32_XSS, 0))
        rec.step(f"guest WRMSR IA32_XSS <- {xf.CET_U:#x} (CET_U)",
                 lambda: g.wrmsr(msr.IA32_XSS, xf.CET_U))
    ev, got = rec.step("KVM_GET_MSRS IA32_XSS", lambda: vcpu.get_msrs([msr.IA32_XSS]))
    if got:
        ev.values["ia32_xss"] = got[0][1]
    if hidden:
        replay.verdict = ("XSAVES is hidden from KVM_GET_SUPPORTED_CPUID although the CPU has it "
                          "(b0563468eeac); a guest given XSAVES by userspace runs it natively")
    elif hw & D1_XSAVES:
        replay.verdict = f"KVM offers XSAVES: {_why_not_applied(kvm)}"
    else:
        replay.verdict = "the CPU has no XSAVES"
    return replay
