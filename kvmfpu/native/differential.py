"""Run the same instruction sequence on this machine's processor and on the model.

A :class:`Case` is a memory image and a list of ops (user mode, CPL 3, the process's
XCR0). Both sides start from the same state: every case begins with XRSTOR of a full,
valid image. They are compared fault for fault (which op, which vector), byte for byte
over the whole memory window (so bytes an instruction must not touch are checked too),
result for result (XGETBV), and at a fault on the register state the kernel saved in
the signal frame, which shows whether the faulting instruction changed anything.
"""

from __future__ import annotations

import random
import struct
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from kvmfpu.arch import legacy
from kvmfpu.arch import xfeatures as xf
from kvmfpu.arch.xfeatures import XCOMP_COMPACTED, bits
from kvmfpu.core import Cpu, Fault
from kvmfpu.cpus.model import HostModel
from kvmfpu.native.xsave_probe import Op, RealCpu

M64 = (1 << 64) - 1


@dataclass
class Case:
    kind: str
    memory: bytes
    ops: list[Op]
    #: Cases relying on XSAVEOPT's modified optimisation, which a context switch between
    #: the XRSTOR and the XSAVEOPT defeats (XRSTOR_INFO changes).
    timing_sensitive: bool = False


@dataclass
class Outcome:
    fault: tuple[int, int] | None          # (op index, vector)
    results: tuple[int, ...]
    memory: bytes
    state: bytes | None = None             # comparable register image at the fault
    fault_reason: str = ""


@dataclass
class Layout:
    """Where a case keeps its areas inside the memory window."""

    area: int        # bytes per area, a multiple of 4096
    pre: int = 0

    @property
    def test(self) -> int:
        return self.area

    @property
    def out(self) -> int:
        return 2 * self.area

    @property
    def window(self) -> int:
        return 3 * self.area


def comparable_state(image: bytes, size: int, unheld: Sequence[tuple[int, int]] = ()) -> bytes:
    """The parts of an XSAVE image that hold register contents: the legacy registers
    (0-415), XSTATE_BV and the extended components (576..size), with the ``unheld`` ranges
    (no register behind them: gaps between components, the 4 bytes after PKRU) zeroed. A
    signal frame's copy of those bytes is whatever the stack held (AMD's XSAVE leaves
    them as they were)."""
    ext = bytearray(image[legacy.EXTENDED:size])
    for start, end in unheld:
        ext[start - legacy.EXTENDED:end - legacy.EXTENDED] = bytes(end - start)
    return image[:legacy.RESERVED] + image[legacy.XSTATE_BV:legacy.XSTATE_BV + 8] + bytes(ext)


def unheld_ranges(host: HostModel, xcr0: int) -> tuple[tuple[int, int], ...]:
    """Byte ranges of the standard form for ``xcr0`` (after the header) that hold no
    register: the gaps between enabled components and PKRU's last 4 bytes."""
    size = host.layout.standard_size(xcr0)
    comps = sorted((c.offset, c.offset + c.size, b) for b, c in host.layout.components.items()
                   if b >= 2 and xcr0 >> b & 1)
    out: list[tuple[int, int]] = []
    pos = legacy.EXTENDED
    for start, end, bit in comps:
        if start > pos:
            out.append((pos, start))
        if bit == xf.XFeature.PKRU:
            out.append((start + 4, end))
        pos = max(pos, end)
    if pos < size:
        out.append((pos, size))
    return tuple(out)


def run_real(real: RealCpu, case: Case, size: int,
             unheld: Sequence[tuple[int, int]] = ()) -> Outcome:
    n = len(case.memory)
    real.memory[:n] = case.memory
    res = real.run(case.ops)
    fault = state = None
    if res.fault is not None:
        fault = (res.fault.index, res.fault.vector)
        state = comparable_state(res.fault.state, size, unheld)
    results = tuple(r if op.kind == "XGETBV" else 0 for r, op in zip(res.results, case.ops, strict=True))
    return Outcome(fault, results, bytes(real.memory[:n]), state)


def model_cpu(host: HostModel, xcr0: int, window: int) -> Cpu:
    cpu = Cpu(host, bytearray(window + 4096))
    cpu.cr4_osxsave = True
    cpu.xsetbv(0, xcr0)
    cpu.cpl = 3
    return cpu


# Probe mnemonic (without the 64 suffix) -> Cpu method taking (address, rfbm, rex_w=).
_XSAVE_FAMILY = {"XRSTOR": "xrstor", "XSAVE": "xsave", "XSAVEOPT": "xsaveopt",
                 "XSAVEC": "xsavec", "XSAVES": "xsaves", "XRSTORS": "xrstors"}
_FX = {"FXSAVE": "fxsave", "FXRSTOR": "fxrstor"}


def _apply(cpu: Cpu, op: Op) -> int:
    k = op.kind
    rex_w = k.endswith("64")
    base = k[:-2] if rex_w else k
    if base in _XSAVE_FAMILY:
        getattr(cpu, _XSAVE_FAMILY[base])(op.offset, op.rfbm, rex_w=rex_w)
    elif base in _FX:
        getattr(cpu, _FX[base])(op.offset, rex_w=rex_w)
    elif k == "XGETBV":
        return cpu.xgetbv(op.ecx)
    elif k == "XSETBV":
        cpu.xsetbv(op.ecx, op.rfbm)
    elif k == "COPY":
        cpu.memory[op.offset:op.offset + op.ecx] = cpu.memory[op.rfbm:op.rfbm + op.ecx]
    else:
        raise ValueError(f"the model does not run {k}")
    return 0


def run_model(host: HostModel, xcr0: int, case: Case, size: int) -> Outcome:
    n = len(case.memory)
    cpu = model_cpu(host, xcr0, n)
    cpu.memory[:n] = case.memory
    results = []
    fault = state = None
    reason = ""
    for i, op in enumerate(case.ops):
        try:
            results.append(_apply(cpu, op))
        except Fault as f:
            fault, reason = (i, f.vector), str(f)
            break
    results += [0] * (len(case.ops) - len(results))
    memory = bytes(cpu.memory[:n])
    if fault is not None:
        # What the kernel would write to the signal frame: XSAVE after clearing the header.
        snap = n
        cpu.memory[snap:snap + 4096] = bytes(4096)
        cpu.cpl = 0
        cpu.xsave(snap, xcr0)
        state = comparable_state(bytes(cpu.memory[snap:snap + size]), size,
                                 unheld_ranges(host, xcr0))
    return Outcome(fault, tuple(results), memory, state, reason)


_BV_AT = legacy.RESERVED   # where XSTATE_BV sits inside comparable_state()


def extra_xinuse_only(real: bytes, model: bytes) -> bool:
    """Whether two fault-time images differ only by XSTATE_BV bits set on the real side.

    The kernel's fault delivery (and the hypervisor below it) may leave XINUSE[i]=1 for a
    component whose contents are still initial, which the SDM allows (§13.6); the
    register contents must still be identical.
    """
    if len(real) != len(model) or real[:_BV_AT] != model[:_BV_AT] or \
            real[_BV_AT + 8:] != model[_BV_AT + 8:]:
        return False
    rbv = int.from_bytes(real[_BV_AT:_BV_AT + 8], "little")
    mbv = int.from_bytes(model[_BV_AT:_BV_AT + 8], "little")
    return rbv & mbv == mbv


def differences(real: Outcome, model: Outcome, case: Case) -> list[str]:
    out = []
    if real.fault != model.fault:
        out.append(f"fault: real {real.fault} model {model.fault} {model.fault_reason}")
        return out
    if real.results != model.results:
        out.append("XGETBV: real " + ", ".join(f"{r:#x}" for r in real.results)
                   + " model " + ", ".join(f"{r:#x}" for r in model.results))
    if real.memory != model.memory:
        diff = [i for i, (a, b) in enumerate(zip(real.memory, model.memory, strict=True)) if a != b]
        out.append(f"memory: {len(diff)} bytes differ, first at {diff[0]:#x} "
                   f"(real {real.memory[diff[0]]:#04x} model {model.memory[diff[0]]:#04x})")
    if real.state != model.state and not (
            real.state is not None and model.state is not None
            and extra_xinuse_only(real.state, model.state)):
        out.append("register state at the fault differs")
    return out


# -- case generation -------------------------------------------------------------------------

def _allow_key0(area: bytearray, offset: int) -> None:
    """Clear AD0/WD0 (PKRU bits 1:0) of a PKRU image: every page of the probe, its stack
    included, has protection key 0, so a loaded PKRU that denies key 0 makes the probe's
    next memory access fault (#PF with PF_PK, SDM Vol. 3A 4.6.2) and the kernel then cannot
    even write the signal frame; the other keys' bits stay random."""
    area[offset] &= 0xFC


@dataclass
class Generator:
    """Random cases for one host (this machine's) at XCR0 ``xcr0``."""

    host: HostModel
    xcr0: int
    rng: random.Random
    lay: Layout = field(init=False)

    def __post_init__(self) -> None:
        size = self.host.layout.standard_size(self.xcr0)
        self.size = size
        self.lay = Layout(area=(size + 4095) // 4096 * 4096)
        self.mxcsr_mask = self.host.behaviour.mxcsr_mask
        self.ext = [b for b in bits(self.xcr0) if b >= 2]

    # random register contents
    def _blob(self, n: int) -> bytes:
        r = self.rng.random()
        if r < 0.25:
            return bytes(n)
        if r < 0.35:
            out = bytearray(n)
            out[self.rng.randrange(n)] = self.rng.randrange(1, 256)
            return bytes(out)
        return self.rng.randbytes(n)

    def _legacy(self, area: bytearray, mxcsr_ok: bool = True) -> None:
        rng = self.rng
        if rng.random() < 0.2:   # x87 in its initial configuration
            struct.pack_into("<HHBBHQQ", area, 0, legacy.FCW_INIT, 0, 0, 0, 0, 0, 0)
        else:
            area[0:24] = rng.randbytes(24)
            if rng.random() < 0.5:
                struct.pack_into("<H", area, legacy.FCW, rng.getrandbits(16) & ~0x3F
                                 | rng.getrandbits(6))
        area[legacy.ST_SPACE:legacy.XMM_SPACE] = self._blob(128)
        area[legacy.XMM_SPACE:legacy.RESERVED] = self._blob(256)
        area[legacy.RESERVED:legacy.LEGACY_SIZE] = rng.randbytes(96)
        if mxcsr_ok:
            mx = legacy.MXCSR_INIT if rng.random() < 0.3 else rng.getrandbits(32) & self.mxcsr_mask
        else:
            mx = (rng.getrandbits(32) & self.mxcsr_mask) | (1 << rng.choice(
                [b for b in range(32) if not self.mxcsr_mask >> b & 1]))
        struct.pack_into("<II", area, legacy.MXCSR, mx, rng.getrandbits(32))

    def standard_area(self, bv: int, *, mxcsr_ok: bool = True) -> bytearray:
        area = bytearray(self.rng.randbytes(self.lay.area))
        self._legacy(area, mxcsr_ok)
        area[legacy.HEADER:legacy.EXTENDED] = bytes(64)
        struct.pack_into("<Q", area, legacy.XSTATE_BV, bv)
        for b in self.ext:
            c = self.host.layout.components[b]
            area[c.offset:c.offset + c.size] = self._blob(c.size)
            if b == xf.XFeature.PKRU:
                _allow_key0(area, c.offset)
        return area

    def compacted_area(self, bv: int, comp: int, *, mxcsr_ok: bool = True) -> bytearray:
        area = bytearray(self.rng.randbytes(self.lay.area))
        self._legacy(area, mxcsr_ok)
        area[legacy.HEADER:legacy.EXTENDED] = bytes(64)
        struct.pack_into("<QQ", area, legacy.XSTATE_BV, bv, comp | XCOMP_COMPACTED)
        offsets, _ = self.host.layout.compacted(comp)
        for b, off in offsets.items():
            size = self.host.layout.components[b].size
            area[off:off + size] = self._blob(size)
            if b == xf.XFeature.PKRU:
                _allow_key0(area, off)
        return area

    def _subset(self, mask: int) -> int:
        return sum(1 << b for b in bits(mask) if self.rng.random() < 0.6)

    def _rfbm(self) -> int:
        r = self.rng.random()
        if r < 0.3:
            return M64
        if r < 0.5:
            return self.xcr0
        if r < 0.8:
            return self._subset(self.xcr0)
        return self.rng.getrandbits(64)

    def _window(self, test: bytearray) -> bytearray:
        lay = self.lay
        mem = bytearray(self.rng.randbytes(lay.window))
        mem[lay.pre:lay.pre + lay.area] = self.standard_area(self.xcr0)
        mem[lay.test:lay.test + lay.area] = test
        return mem

    def _pre_ops(self) -> list[Op]:
        return [Op("XRSTOR64", self.lay.pre, self.xcr0), Op("XGETBV", ecx=1)]

    def _save_op(self) -> Op:
        kind = self.rng.choice(["XSAVE64", "XSAVE", "XSAVEOPT64", "XSAVEC64", "FXSAVE64",
                                "FXSAVE", "XSAVE64", "XSAVEC64"])
        out = self.lay.out
        return Op(kind, out, self._rfbm())

    def case(self) -> Case:
        r = self.rng.random()
        if r < 0.30:
            return self.standard_case()
        if r < 0.50:
            return self.compacted_case()
        if r < 0.60:
            return self.fxrstor_case()
        if r < 0.68:
            return self.modified_case()
        return self.fault_case()

    def standard_case(self) -> Case:
        bv = self._subset(self.xcr0)
        kind = self.rng.choice(["XRSTOR64", "XRSTOR64", "XRSTOR"])
        ops = [*self._pre_ops(), Op(kind, self.lay.test, self._rfbm()), Op("XGETBV", ecx=1),
               self._save_op(), Op("XGETBV", ecx=1)]
        return Case("standard", bytes(self._window(self.standard_area(bv))), ops)

    def compacted_case(self) -> Case:
        comp = self._subset(self.xcr0)
        bv = self._subset(comp)
        ops = [*self._pre_ops(), Op("XRSTOR64", self.lay.test, self._rfbm()),
               Op("XGETBV", ecx=1), self._save_op(), Op("XGETBV", ecx=1)]
        return Case("compacted", bytes(self._window(self.compacted_area(bv, comp))), ops)

    def fxrstor_case(self) -> Case:
        kind = self.rng.choice(["FXRSTOR64", "FXRSTOR"])
        ops = [*self._pre_ops(), Op(kind, self.lay.test), Op("XGETBV", ecx=1),
               self._save_op(), Op("XGETBV", ecx=1)]
        return Case("fxrstor", bytes(self._window(self.standard_area(self.xcr0))), ops)

    def modified_case(self) -> Case:
        """XRSTOR, then a plain store over the area, then XSAVEOPT to the same address:
        the modified optimisation leaves unmodified components' bytes as stored."""
        test = self.lay.test
        garbage = self.lay.out
        mem = self._window(self.standard_area(self._subset(self.xcr0)))
        ops = [*self._pre_ops(), Op("XRSTOR64", test, self._rfbm()),
               Op("COPY", test + legacy.EXTENDED, garbage, self.size - legacy.EXTENDED),
               Op("COPY", test + legacy.XMM_SPACE, garbage, 256),
               Op("XSAVEOPT64", test, self._rfbm()), Op("XGETBV", ecx=1)]
        return Case("modified", bytes(mem), ops, timing_sensitive=True)

    FAULTS = ("misaligned", "std_header", "cmp_header", "mxcsr", "bv_outside", "cb_outside",
              "bv_not_in_cb", "cpl_xsaves", "cpl_xrstors", "cpl_xsetbv", "xgetbv_ecx",
              "fx_misaligned", "fx_mxcsr", "save_misaligned")

    def fault_case(self, which: str | None = None) -> Case:
        rng, lay = self.rng, self.lay
        which = which or rng.choice(self.FAULTS)
        rfbm = self._rfbm()
        test = lay.test
        bv = self._subset(self.xcr0)
        area = self.standard_area(bv)
        op = Op("XRSTOR64", test, rfbm)
        if which == "misaligned":
            op = Op(rng.choice(["XRSTOR64", "XRSTOR"]), test + rng.choice([8, 16, 32, 48]), rfbm)
        elif which == "std_header":
            area[legacy.XCOMP_BV + rng.randrange(16)] = rng.randrange(1, 256)
        elif which == "cmp_header":
            comp = self._subset(self.xcr0)
            area = self.compacted_area(self._subset(comp), comp)
            area[legacy.HEADER_RESERVED + rng.randrange(48)] = rng.randrange(1, 256)
        elif which == "mxcsr":
            area = self.standard_area(bv, mxcsr_ok=False)
            op = Op("XRSTOR64", test, rng.choice([self.xcr0, M64, 2, 4, 6]))
        elif which == "bv_outside":
            outside = [b for b in (3, 4, 8, 9, 11, 17, 18, 19, 40, 63) if not self.xcr0 >> b & 1]
            struct.pack_into("<Q", area, legacy.XSTATE_BV, bv | 1 << rng.choice(outside))
        elif which == "cb_outside":
            comp = self._subset(self.xcr0)
            extra = 1 << rng.choice([b for b in (3, 4, 8, 9, 11, 12, 17, 62)
                                     if not self.xcr0 >> b & 1])
            area = self.compacted_area(self._subset(comp), comp)
            struct.pack_into("<Q", area, legacy.XCOMP_BV, comp | extra | XCOMP_COMPACTED)
        elif which == "bv_not_in_cb":
            comp = self._subset(self.xcr0 & ~1) or 2
            missing = 1 << rng.choice([b for b in bits(self.xcr0) if not comp >> b & 1] or [63])
            area = self.compacted_area(comp | missing, comp)
        elif which == "cpl_xsaves":
            op = Op("XSAVES64", lay.out, rfbm)
        elif which == "cpl_xrstors":
            op = Op("XRSTORS64", test, rfbm)
        elif which == "cpl_xsetbv":
            op = Op("XSETBV", 0, self.xcr0, 0)
        elif which == "xgetbv_ecx":
            op = Op("XGETBV", ecx=rng.choice([2, 3, 0x10, 0xFFFFFFFF]))
        elif which == "fx_misaligned":
            op = Op(rng.choice(["FXRSTOR64", "FXSAVE64", "FXRSTOR"]), test + rng.choice([4, 8]))
        elif which == "fx_mxcsr":
            area = self.standard_area(bv, mxcsr_ok=False)
            op = Op(rng.choice(["FXRSTOR64", "FXRSTOR"]), test)
        elif which == "save_misaligned":
            op = Op(rng.choice(["XSAVE64", "XSAVEC64", "XSAVEOPT64"]),
                    lay.out + rng.choice([8, 16, 32]), rfbm)
        ops = [*self._pre_ops(), Op("XRSTOR64", lay.pre, self._rfbm()), op, Op("XGETBV", ecx=1)]
        return Case("fault:" + which, bytes(self._window(area)), ops)


@dataclass
class Report:
    cases: int = 0
    agreed: int = 0
    faulting: int = 0
    retried: int = 0
    fault_extra_xinuse: int = 0
    by_kind: dict[str, int] = field(default_factory=dict)
    disagreements: list[tuple[Case, list[str]]] = field(default_factory=list)


def run(host: HostModel, xcr0: int, count: int, seed: int,
        real: RealCpu | None = None,
        progress: Callable[[int], None] | None = None) -> Report:
    """Generate ``count`` cases and compare real and model on each."""
    real = real or RealCpu()
    gen = Generator(host, xcr0, random.Random(seed))
    rep = Report()
    for i in range(count):
        case = gen.case()
        rep.cases += 1
        rep.by_kind[case.kind.split(":")[0]] = rep.by_kind.get(case.kind.split(":")[0], 0) + 1
        model = run_model(host, xcr0, case, gen.size)
        real_out = run_real(real, case, gen.size, unheld_ranges(host, xcr0))
        diff = differences(real_out, model, case)
        # An interrupt between two instructions can leave XINUSE bits set or defeat
        # XSAVEOPT's modified optimisation; a real disagreement repeats, that does not.
        for _ in range(2):
            if not diff:
                break
            rep.retried += 1
            real_out = run_real(real, case, gen.size, unheld_ranges(host, xcr0))
            diff = differences(real_out, model, case)
        if model.fault is not None:
            rep.faulting += 1
            if not diff and real_out.state != model.state:
                rep.fault_extra_xinuse += 1
        if diff:
            rep.disagreements.append((case, diff))
        else:
            rep.agreed += 1
        if progress:
            progress(i)
    return rep


def iter_fault_kinds() -> Iterator[str]:
    yield from Generator.FAULTS


_REGS = ("eax", "ebx", "ecx", "edx")


def supported_cpuid_differences(real: Sequence[Any], model: Sequence[Any]) -> list[str]:
    """KVM_GET_SUPPORTED_CPUID of the real device against the model, row for row: rows one
    side lacks, flags and each register that differ, and a different row order. Entries are
    anything with ``function, index, flags, eax..edx`` (struct kvm_cpuid_entry2)."""
    def key(e: Any) -> tuple[int, int]:
        return (e.function, e.index)

    out: list[str] = []
    r = {key(e): e for e in real}
    m = {key(e): e for e in model}
    for k in sorted(r.keys() | m.keys()):
        name = f"{k[0]:#x}.{k[1]}"
        if k not in m:
            out.append(f"{name}: model lacks the row")
            continue
        if k not in r:
            out.append(f"{name}: real KVM lacks the row")
            continue
        for attr in ("flags", *_REGS):
            a, b = getattr(r[k], attr), getattr(m[k], attr)
            if a != b:
                out.append(f"{name} {attr}: real {a:#010x} model {b:#010x}")
    if not out and [key(e) for e in real] != [key(e) for e in model]:
        out.append("same rows in a different order")
    return out
