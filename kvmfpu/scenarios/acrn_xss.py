"""Seed 000: ACRN's XSS/XRSTORS #GP (projectacrn/acrn-hypervisor #6434), on the core.

The hypervisor boots with physical IA32_XSS holding every supported supervisor bit (Kaby
Lake: PT, bit 8); the guest's IA32_XSS starts at 0. Before the vCPU launches, the
switch-in path does not load the guest XSS (``xsave_enabled`` is still false), so the next
switch-out's XSAVES runs under XSS[8]=1 and writes XCOMP_BV[8]=1. The following switch-in
writes the guest XSS (0) and XRSTORS faults: XCOMP_BV sets a bit outside XCR0 | IA32_XSS
(SDM §13.12). Hypervisor-agnostic: any XSAVES/XRSTORS pair under different XSS does it.

Versions are ACRN releases: the fix (PR #6435, "hv: initialize the XSAVE related processor
state for guest"; v2.6 backport PR #6439, August 2021) first shipped in v2.6. It loads the
guest XCR0/XSS and XRSTORS a pristine area before launch. The guest (Service VM) kernel
matters too: from Linux 5.8 (71581eefd7a0, "x86/fpu/xstate: Introduce XSAVES supervisor
states") fpu__init_cpu_xstate writes IA32_XSS at boot; ACRN traps the write and loads it
into the physical MSR, so the first switch-out already saves under the guest's XSS. The
seed's 5.4 Service VM never writes it.
"""

from __future__ import annotations

import re
import struct

from kvmfpu import cpus
from kvmfpu.arch import legacy
from kvmfpu.arch.xfeatures import XCOMP_COMPACTED, describe_mask
from kvmfpu.core import Cpu
from kvmfpu.core.msrs import IA32_XSS
from kvmfpu.scenarios.replay import Event, NotApplicable, Recorder, Replay

SEED = "000_9a91ac75209400c8.txt"
ALL = (1 << 64) - 1
GUEST_AREA = 0x0
PRISTINE = 0x4000
FIRST_FIXED = (2, 6)
#: The guest kernel writes IA32_XSS in fpu__init_cpu_xstate from this release (71581eefd7a0).
XSS_WRITTEN_FROM = (5, 8)


def _acrn_version(text: str) -> tuple[int, int]:
    m = re.fullmatch(r"acrn-?v?(\d+)\.(\d+)", text.strip().lower())
    if not m:
        raise ValueError(f"{text!r} is not an ACRN release (want e.g. acrn-2.5, acrn-2.6)")
    return int(m.group(1)), int(m.group(2))


def _linux_version(text: str) -> tuple[int, int]:
    m = re.fullmatch(r"v?(\d+)\.(\d+)(?:\.\d+)?", text.strip())
    if not m:
        raise ValueError(f"{text!r} is not a Linux version (want e.g. 5.4, 5.10)")
    return int(m.group(1)), int(m.group(2))


def run(version: str = "acrn-2.5", *, guest_kernel: str = "5.4", host: str = "kabylake",
        guest_xcr0: int | None = None) -> Replay:
    """Replay the context switches of seed 000 under ACRN ``version`` with a Service VM
    running Linux ``guest_kernel``. The guest's XCR0 defaults to the host's, so that only
    IA32_XSS differs between the XSAVES and the XRSTORS, as in the seed."""
    acrn = _acrn_version(version)
    linux = _linux_version(guest_kernel)
    model = cpus.load(host)
    if not model.has("xsaves"):
        raise NotApplicable(f"acrn-xss switches context with XSAVES/XRSTORS: {model.name} has "
                            "no XSAVES")
    fixed = acrn >= FIRST_FIXED
    if guest_xcr0 is None:
        guest_xcr0 = model.supported_xcr0
    cpu = Cpu(model, bytearray(0x8000))
    replay = Replay("acrn-xss", SEED, f"acrn-{acrn[0]}.{acrn[1]}", model.name, "acrn")
    rec = Recorder(replay)
    # Hypervisor boot: OSXSAVE, host XCR0, physical IA32_XSS = every supported bit.
    cpu.cr4_osxsave = True
    cpu.xsetbv(0, model.supported_xcr0)
    cpu.wrmsr(IA32_XSS, model.supported_xss)
    guest = {"xss": 0}
    # The vCPU's xsave area starts as a pristine compacted image.
    struct.pack_into("<QQ", cpu.memory, GUEST_AREA + legacy.XSTATE_BV, 0, XCOMP_COMPACTED)
    struct.pack_into("<QQ", cpu.memory, PRISTINE + legacy.XSTATE_BV, 0, XCOMP_COMPACTED)

    def note(ev: Event) -> None:
        ev.values.update(xcr0=cpu.xcr0, ia32_xss=cpu.xss, guest_xss=guest["xss"],
                         xcomp_bv=struct.unpack_from("<Q", cpu.memory,
                                                     GUEST_AREA + legacy.XCOMP_BV)[0])

    def load_guest_xcr0_xss() -> None:
        cpu.xsetbv(0, guest_xcr0)
        cpu.wrmsr(IA32_XSS, guest["xss"])

    def init_guest_state() -> None:
        load_guest_xcr0_xss()
        cpu.xrstors(PRISTINE, ALL)

    if fixed:
        ev, _ = rec.step("1. idle -> vcpu before launch: initialise the guest XSAVE state "
                         "(guest XCR0/XSS, XRSTORS a pristine area)", init_guest_state)
    else:
        ev, _ = rec.step("1. idle -> vcpu before launch: xsave_enabled=false, the guest "
                         "IA32_XSS is not loaded")
    note(ev)
    if linux >= XSS_WRITTEN_FROM:
        def guest_writes_xss() -> None:
            guest["xss"] = 0     # the guest's CPUID offers it no supervisor state
            cpu.wrmsr(IA32_XSS, guest["xss"])
        ev, _ = rec.step(f"1a. Linux {linux[0]}.{linux[1]} boot writes IA32_XSS "
                         "(fpu__init_cpu_xstate); ACRN traps it and loads the physical MSR",
                         guest_writes_xss)
        note(ev)
    ev, _ = rec.step("2. vcpu -> idle: XSAVES the guest area", lambda: cpu.xsaves(GUEST_AREA, ALL))
    note(ev)

    def switch_in() -> None:
        load_guest_xcr0_xss()
        cpu.xrstors(GUEST_AREA, ALL)
    ev, _ = rec.step("3. idle -> vcpu: load the guest XCR0/XSS, XRSTORS the guest area",
                     switch_in)
    note(ev)
    failed = next((e for e in replay.events if not e.ok), None)
    replay.bug = failed is not None and failed.vector == 13
    saved = replay.event("2.").values["xcomp_bv"]
    if replay.bug and failed is not None:
        replay.verdict = (f"hypervisor #GP: {failed.detail}; the area was saved with XCOMP_BV "
                          f"{describe_mask(saved)} under the host's IA32_XSS")
    else:
        replay.verdict = (f"the guest area was saved with XCOMP_BV {describe_mask(saved)} and "
                          "restored without a fault")
    replay.notes.append(f"Service VM kernel Linux {linux[0]}.{linux[1]}: "
                        + ("writes IA32_XSS at boot (71581eefd7a0, 5.8)" if linux >= XSS_WRITTEN_FROM
                           else "never writes IA32_XSS (before 71581eefd7a0, 5.8)"))
    return replay
