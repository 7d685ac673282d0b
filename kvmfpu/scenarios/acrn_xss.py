"""Seed 000: ACRN's XSS/XRSTORS #GP (ACRN tracked-on #6434), on the emulated core.

The hypervisor boots with physical IA32_XSS holding every supported supervisor bit
(Kaby Lake: PT, bit 8); the guest's IA32_XSS starts at 0. Before the vCPU launches, the
switch-in path does not load the guest XSS (``xsave_enabled`` is still false), so the
next switch-out's XSAVES runs under XSS[8]=1 and writes XCOMP_BV[8]=1. The following
switch-in writes the guest XSS (0) and XRSTORS faults: XCOMP_BV sets a bit outside
XCR0 | IA32_XSS (SDM §13.12). The fix initialises the processor state for the guest
before launch: write guest XCR0 and XSS, then XRSTORS a pristine area (XCOMP_BV = 1<<63,
XSTATE_BV = 0). Hypervisor-agnostic: any XSAVES/XRSTORS pair under different XSS does it.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from kvmfpu import cpus
from kvmfpu.arch import legacy
from kvmfpu.arch.xfeatures import XCOMP_COMPACTED, describe_mask
from kvmfpu.core import Cpu, Fault
from kvmfpu.core.msrs import IA32_XSS

SEED = "000_9a91ac75209400c8.txt"
ALL = (1 << 64) - 1
GUEST_AREA = 0x0
PRISTINE = 0x4000


@dataclass
class Step:
    what: str
    xcr0: int
    xss: int
    xcomp_bv: int | None = None
    fault: Fault | None = None

    def line(self) -> str:
        cb = "" if self.xcomp_bv is None else f" XCOMP_BV={describe_mask(self.xcomp_bv)}"
        tail = f" -> {self.fault}" if self.fault else ""
        return f"{self.what}: XCR0={self.xcr0:#x} IA32_XSS={self.xss:#x}{cb}{tail}"


@dataclass
class Trace:
    fixed: bool
    host: str
    steps: list[Step] = field(default_factory=list)

    @property
    def fault(self) -> Fault | None:
        return next((s.fault for s in self.steps if s.fault), None)


def run(*, fixed: bool, host: str = "kabylake", guest_xcr0: int | None = None) -> Trace:
    """Replay the sequence; the guest's XCR0 defaults to the host's so that only IA32_XSS
    differs between the XSAVES and the XRSTORS, as in the seed."""
    model = cpus.load(host)
    if guest_xcr0 is None:
        guest_xcr0 = model.supported_xcr0
    cpu = Cpu(model, bytearray(0x8000))
    trace = Trace(fixed, model.name)
    # Hypervisor boot: OSXSAVE, host XCR0, physical IA32_XSS = every supported bit.
    cpu.cr4_osxsave = True
    cpu.xsetbv(0, model.supported_xcr0)
    cpu.wrmsr(IA32_XSS, model.supported_xss)
    guest_xss = 0
    # The vCPU's xsave area starts as a pristine compacted image.
    struct.pack_into("<QQ", cpu.memory, GUEST_AREA + legacy.XSTATE_BV, 0, XCOMP_COMPACTED)
    struct.pack_into("<QQ", cpu.memory, PRISTINE + legacy.XSTATE_BV, 0, XCOMP_COMPACTED)

    def step(what: str, action: object = None) -> None:
        s = Step(what, 0, 0)
        try:
            if callable(action):
                action()
        except Fault as f:
            s.fault = f
        s.xcr0, s.xss = cpu.xcr0, cpu.xss   # after the step (at the fault, if any)
        s.xcomp_bv = struct.unpack_from("<Q", cpu.memory, GUEST_AREA + legacy.XCOMP_BV)[0]
        trace.steps.append(s)

    def load_guest_xcr0_xss() -> None:
        cpu.xsetbv(0, guest_xcr0)
        cpu.wrmsr(IA32_XSS, guest_xss)

    if fixed:
        def init_guest_state() -> None:
            load_guest_xcr0_xss()
            cpu.xrstors(PRISTINE, ALL)
        step("1. idle -> vcpu before launch: initialise guest XSAVE state", init_guest_state)
    else:
        step("1. idle -> vcpu before launch: xsave_enabled=false, guest XSS not loaded")
    step("2. vcpu -> idle: XSAVES the guest area", lambda: cpu.xsaves(GUEST_AREA, ALL))

    def switch_in() -> None:
        load_guest_xcr0_xss()
        cpu.xrstors(GUEST_AREA, ALL)
    step("3. idle -> vcpu: load guest XCR0/XSS, XRSTORS the guest area", switch_in)
    return trace
