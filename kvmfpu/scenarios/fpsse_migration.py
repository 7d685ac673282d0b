"""Seed 002: migrating a guest from a pre-XSAVE (Nehalem-era) host to a newer one.

QEMU calls KVM_GET_XSAVE/KVM_SET_XSAVE whenever KVM_CHECK_EXTENSION(KVM_CAP_XSAVE) is 1,
which it always is, so the source hands over an FP/SSE-only xsave buffer (XSTATE_BV = 3)
even on a host without XSAVE. On the destination the guest CPUID (a Nehalem model) has no
XSAVE and no leaf 0xD. ad856280ddea (5.17; 5.16.15) set fpstate->user_xfeatures from that
CPUID, i.e. to 0, and validate_user_xstate_header then rejects XSTATE_BV 3 with -EINVAL
(Red Hat bz 2079311). a1020a25e697 (6.0; 5.19.12) always allows FP and SSE; from 6.6
(8647c52e9504) user_xfeatures no longer follows CPUID at all.

The guest CPUID on the destination is the source host's KVM_GET_SUPPORTED_CPUID: what a
guest started with "-cpu host" on the Nehalem source sees, and no more than a Nehalem
model offers.
"""

from __future__ import annotations

from kvmfpu import uapi
from kvmfpu.core.regfile import area_register
from kvmfpu.kvm.cpuid import CpuidEntry
from kvmfpu.kvm.system import Kvm
from kvmfpu.scenarios.replay import Recorder, Replay

SEED = "002_5b4bf5985fb131d8.txt"
#: The guest's x87/SSE registers on the source (st0 = 2.0, st1 = -1.5).
STATE = {"fcw": 0x027F, "st0": (0x4000 << 64) | 1 << 63, "st1": (0xBFFF << 64) | 3 << 62,
         "xmm0": 0x3FF0_0000_0000_0000_0000_0000_0000_0001, "xmm7": 0xFEED_FACE << 64,
         "xmm15": (1 << 127) | 0x2079311, "mxcsr": 0x1FA0}


def run(version: str = "5.17", *, src: str = "nehalem", host: str = "skylake-sp",
        src_kernel: str | None = None) -> Replay:
    source = Kvm(src, src_kernel or version)
    dest = Kvm(host, version)
    replay = Replay("fpsse-migration", SEED, dest.kernel.name, f"{source.host.name}->{dest.host.name}",
                    dest.flavor)
    rec = Recorder(replay)

    ev, cap = rec.step(f"source ({source.host.name}, {source.kernel.name}): "
                       "KVM_CHECK_EXTENSION(KVM_CAP_XSAVE)",
                       lambda: source.check_extension(uapi.KVM_CAP_XSAVE))
    ev.values["cap_xsave"] = cap or 0
    ev.detail = f"the host {'has' if source.hk.cfg.has_xsave else 'has no'} XSAVE"
    guest_cpuid: list[CpuidEntry] = source.get_supported_cpuid()
    svcpu = source.create_vm().create_vcpu()
    svcpu.set_cpuid2(guest_cpuid)
    with svcpu.guest() as g:
        for name, value in STATE.items():
            g.set_reg(name, value)
    ev, blob = rec.step("source: KVM_GET_XSAVE", svcpu.get_xsave)
    if blob is None:
        replay.verdict = f"the source cannot save: {ev.detail}"
        return replay
    ev.values["xstate_bv"] = int.from_bytes(blob[512:520], "little")
    src_layout = source.host.layout

    dvcpu = dest.create_vm().create_vcpu()
    has_xsave = any(e.function == 1 and e.ecx >> 26 & 1 for e in guest_cpuid)
    has_d = any(e.function == 0xD for e in guest_cpuid)
    ev, _ = rec.step(f"destination ({dest.host.name}, {dest.kernel.name}): KVM_SET_CPUID2 "
                     f"(guest CPUID {'with' if has_xsave else 'without'} XSAVE, "
                     f"{'with' if has_d else 'no'} leaf 0xD)", lambda: dvcpu.set_cpuid2(guest_cpuid))
    ev.values["user_xfeatures"] = dvcpu.gfpu.fpstate.user_xfeatures
    ev, _ = rec.step("destination: KVM_SET_XSAVE (the source's buffer)",
                     lambda: dvcpu.set_xsave(blob))
    replay.bug = ev.errno == "EINVAL"
    if not ev.ok:
        replay.verdict = f"migration fails: KVM_SET_XSAVE -{ev.outcome}: {ev.detail}"
        return replay
    ev, out = rec.step("destination: KVM_GET_XSAVE", dvcpu.get_xsave)
    if out is None:
        replay.verdict = f"KVM_GET_XSAVE failed: {ev.detail}"
        return replay
    lost = []
    dst_layout = dest.host.layout
    for name in STATE:
        got = area_register(out, dst_layout, name)
        ev.values[name] = got
        if got != area_register(blob, src_layout, name):
            lost.append(name)
    with dvcpu.guest() as g:
        ev, seen = rec.step("destination guest reads xmm15", lambda: g.reg("xmm15"))
        ev.values["xmm15"] = seen or 0
        if seen != STATE["xmm15"]:
            lost.append("xmm15 (as the guest sees it)")
    if lost:
        replay.bug = True
        replay.verdict = f"accepted but registers changed: {', '.join(lost)}"
    else:
        replay.verdict = "accepted; every x87/SSE register arrives intact"
    return replay
