"""What the guest does with its xsave state: a Linux guest's use of the instructions.

On the source the guest enables every component its CPUID offers (XSETBV, IA32_XSS), puts
patterned values in all of them, and keeps one switched-out task's context in its memory,
saved the way Linux's os_xsave picks the instruction (XSAVES, else XSAVEC (5.19+), else
XSAVEOPT, else XSAVE; arch/x86/kernel/fpu/xstate.h XSTATE_XSAVE alternatives). That image
travels with guest RAM. On the destination the guest restores it with the matching
instruction (XRSTORS for XSAVES images, XRSTOR otherwise), as its next context switch
would: XRSTORS faults when the image names a component outside XCR0 | IA32_XSS (SDM
Vol. 1 13.12), so lost XSS or XCR0 bits show up here even when every ioctl succeeded.
"""

from __future__ import annotations

from dataclasses import dataclass

from kvmfpu.arch import legacy
from kvmfpu.arch import xfeatures as xf
from kvmfpu.core import msrs as msr
from kvmfpu.core.faults import Fault
from kvmfpu.kvm.vcpu import Vcpu
from kvmfpu.testing.areas import compacted_area, standard_area

#: Guest-physical addresses: the image the workload loads, and the saved task context.
LIVE_GPA = 0x1000
CTX_GPA = 0x8000
TRUTH_GPA = 0x14000
MEMORY = 192 << 10
#: Registers a guest without XSAVE sets (x87/SSE only), as values the core accepts.
LEGACY_STATE = {"fcw": 0x027F, "st0": (0x4000 << 64) | 1 << 63, "mxcsr": 0x1FA0,
                "xmm0": 0x3FF0_0000_0000_0000_0000_0000_0000_0001, "xmm15": (1 << 127) | 0xFEED}


@dataclass
class SourceGuest:
    """What the guest holds on the source: its registers as it saved them itself (XSAVE of
    every user component, or FXSAVE without XSAVE, in standard format), and the task
    context in its memory."""

    registers: bytes
    ctx: GuestContext | None


@dataclass
class GuestContext:
    """A task context the guest kernel saved in its memory."""

    insn: str              # the save instruction; the restore is XRSTORS or XRSTOR
    mask: int              # RFBM (XCR0 | XSS as the guest set them)
    image: bytes

    @property
    def restore(self) -> str:
        return "xrstors" if self.insn == "xsaves" else "xrstor"


def save_insn(has: dict[str, bool]) -> str:
    for insn in ("xsaves", "xsavec", "xsaveopt"):
        if has.get(insn):
            return insn
    return "xsave"


def run_source(vcpu: Vcpu, xcr0: int, xss: int) -> SourceGuest:
    """The guest's run on the source. A guest fault propagates (the core's Fault)."""
    has = dict(vcpu.cpuid.has)
    host = vcpu.kvm.host
    mem = vcpu.vm.memory
    if not has.get("xsave"):
        with vcpu.guest() as g:
            for name, value in LEGACY_STATE.items():
                g.set_reg(name, value)
            g.fxsave(TRUTH_GPA)
        # An FXSAVE image read as XSAVE's legacy region: XSTATE_BV = FP | SSE.
        regs = bytearray(mem[TRUTH_GPA:TRUTH_GPA + 512]) + bytes(legacy.EXTENDED - 512)
        regs[legacy.XSTATE_BV] = 3
        return SourceGuest(bytes(regs), None)
    insn = save_insn(has)
    mask = xcr0 | xss
    with vcpu.guest() as g:
        g.xsetbv(0, xcr0)
        if xss:
            g.wrmsr(msr.IA32_XSS, xss)
        for seed, gpa in ((2, LIVE_GPA), (1, LIVE_GPA)):
            if has.get("xsaves"):
                img = compacted_area(host, mask, mask, seed=seed)
            else:
                img = standard_area(host, xcr0, seed=seed)
            mem[gpa:gpa + len(img)] = img
            (g.xrstors if has.get("xsaves") else g.xrstor)(gpa, mask)
            if seed == 2:
                # the switched-out task: saved, then the live task's state is loaded
                getattr(g, insn)(CTX_GPA, mask)
        g.xsave(TRUTH_GPA, xcr0)
    size = _image_size(vcpu, insn, mask)
    n = max(host.layout.standard_size(xcr0), legacy.EXTENDED)
    return SourceGuest(bytes(mem[TRUTH_GPA:TRUTH_GPA + n]),
                       GuestContext(insn, mask, bytes(mem[CTX_GPA:CTX_GPA + size])))


def _image_size(vcpu: Vcpu, insn: str, mask: int) -> int:
    layout = vcpu.kvm.host.layout
    if insn in ("xsaves", "xsavec"):
        return layout.compacted(mask)[1]
    return max(layout.standard_size(mask & ~xf.SUPERVISOR_MASK), legacy.EXTENDED)


def resume(vcpu: Vcpu, ctx: GuestContext) -> Fault | None:
    """The guest on the destination restores the task context it saved on the source."""
    mem = vcpu.vm.memory
    mem[CTX_GPA:CTX_GPA + len(ctx.image)] = ctx.image
    try:
        with vcpu.guest() as g:
            getattr(g, ctx.restore)(CTX_GPA, ctx.mask)
    except Fault as fault:
        return fault
    return None
