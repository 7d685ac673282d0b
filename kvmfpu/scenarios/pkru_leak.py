"""The Proxmox VE 7.4 -> 8.0 PKRU case: a qemu64 guest leaves an Ubuntu-based 5.15 host
whose KVM_GET_XSAVE carries the host's PKRU bit and cannot be restored on 6.2.

Ubuntu jammy's 5.15 (and Proxmox VE 7.4's kernel built on it) carries the 5.16 guest-FPU
rework without ad856280ddea: the guest fpstate is saved with the host's XCR0, PKRU is never
in its init state on the host, so XSTATE_BV[9] is set and fpu_copy_guest_fpstate_to_uabi
hands it to userspace even for a guest whose CPUID has no PKU. A 5.17+ destination
(ad856280ddea: user_xfeatures = guest XCR0 | FP | SSE) rejects that buffer in
validate_user_xstate_header with -EINVAL. Mainline 5.15's fill_xsave masks XSTATE_BV with
guest_supported_xcr0 | FP | SSE and never leaks. Fixed on the destination upstream by
8647c52e9504 (6.6; KVM_SET_XSAVE takes any host-supported feature again) and by Proxmox's
own KVM_SET_XSAVE mask (pve-kernel 1559d22, 6.2.16-5). Sources: proxmox/pve-kernel 1559d22
(T. Lamprecht, 2023-07-14), bloomberg/chef-bcpc#2278.

The version a replay takes is the *source* kernel; ``dst_kernel`` is the destination's.
"""

from __future__ import annotations

from kvmfpu.arch import xfeatures as xf
from kvmfpu.kvm.system import Kvm
from kvmfpu.qemu import guest_cpuid
from kvmfpu.qemu.models import resolve
from kvmfpu.scenarios.replay import NotApplicable, Recorder, Replay

SEED = "proxmox/pve-kernel 1559d22"
GUEST = "qemu64"
#: Guest registers set on the source (an SSE value that must survive the trip).
XMM5 = 0x1559_D22F_0000_2023_0714_0000_0000_0009


def run(
    version: str = "5.15.0-91-generic",
    *,
    host: str = "skylake-sp",
    dst_kernel: str = "6.2",
    dst: str | None = None,
) -> Replay:
    source = Kvm(host, version)
    dest = Kvm(dst or host, dst_kernel)
    if not source.hk.cfg.xcr0 & xf.PKRU:
        raise NotApplicable(
            f"pkru-leak needs a host with PKU enabled: {source.host.name} "
            "has no PKRU in XCR0, so there is nothing to leak"
        )
    replay = Replay(
        "pkru-leak", SEED, source.kernel.name, f"{source.host.name}->{dest.host.name}", source.flavor
    )
    replay.notes += [f"source {source.kernel.name}: {n}" for n in source.kernel.notes]
    rec = Recorder(replay)
    model = resolve(GUEST)
    cpu = guest_cpuid.build(source, model)
    has_pku = any(e.function == 7 and e.index == 0 and e.ecx >> 3 & 1 for e in cpu.entries)
    svcpu = source.create_vm().create_vcpu()
    ev, _ = rec.step(
        f"source ({source.kernel.name}): KVM_SET_CPUID2 ({GUEST}: {'with' if has_pku else 'no'} PKU)",
        lambda: svcpu.set_cpuid2(cpu.entries),
    )
    with svcpu.guest() as g:
        g.set_reg("xmm5", XMM5)
    ev, blob = rec.step("source: KVM_GET_XSAVE", svcpu.get_xsave)
    if blob is None:
        replay.verdict = f"the source cannot save: {ev.detail}"
        return replay
    bv = int.from_bytes(blob[512:520], "little")
    leaked = bool(bv & xf.PKRU) and not has_pku
    ev.values["xstate_bv"] = bv
    ev.detail = (
        "XSTATE_BV carries PKRU for a guest without PKU (the host's PKRU leaked)"
        if leaked
        else "XSTATE_BV has only what the guest's CPUID allows"
    )
    dvcpu = dest.create_vm().create_vcpu()
    rec.step(
        f"destination ({dest.kernel.name}): KVM_SET_CPUID2 ({GUEST})",
        lambda: dvcpu.set_cpuid2(guest_cpuid.build(dest, model).entries),
    )
    ev, _ = rec.step("destination: KVM_SET_XSAVE (the source's buffer)", lambda: dvcpu.set_xsave(blob))
    if not ev.ok:
        replay.bug = True
        replay.verdict = f"migration fails: KVM_SET_XSAVE -{ev.outcome} on {dest.kernel.name}: {ev.detail}"
        return replay
    with dvcpu.guest() as g:
        ev, seen = rec.step("destination guest reads xmm5", lambda: g.reg("xmm5"))
    ev.values["xmm5"] = seen or 0
    if seen != XMM5:
        replay.bug = True
        replay.verdict = "accepted, but the guest's xmm5 changed"
    elif leaked:
        replay.verdict = (
            f"the source leaks PKRU, but {dest.kernel.name} accepts it "
            "(8647c52e9504 or Proxmox's KVM_SET_XSAVE mask)"
        )
    else:
        replay.verdict = f"{source.kernel.name} does not leak PKRU: the guest arrives intact"
    return replay
