"""Run the same sequence of xstate ioctls on any backend (the model or the real /dev/kvm)
and collect what each step returned and the vCPU's state afterwards, for comparison.

A sequence is a list of ``Op``; ``run`` creates a VM with an in-kernel irqchip and one
vCPU, applies the ops in order (a failing op is recorded by its errno and the sequence
goes on, as a VMM's error path would), then reads KVM_GET_XSAVE, KVM_GET_XSAVE2,
KVM_GET_XCRS, the xstate MSRs, CPUID.(0xD,0) XCR0 and the MP state.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from kvmfpu.core import msrs as msr
from kvmfpu.kvm.cpuid import CpuidEntry
from kvmfpu.kvm.errors import KvmError

STATE_MSRS = (msr.IA32_XSS, msr.IA32_XFD, msr.IA32_XFD_ERR)


@dataclass(frozen=True)
class Op:
    """One step: ``kind`` is cpuid, xcrs, xsave, msr, init, mp_state or osxsave."""

    kind: str
    args: tuple[Any, ...] = ()

    def __repr__(self) -> str:
        if self.kind == "cpuid":
            return f"cpuid({self.args[0]}, {len(self.args[1])} entries)"
        if self.kind == "xsave":
            what, blob = self.args
            bv = struct.unpack_from("<Q", blob, 512)[0] if len(blob) >= 520 else None
            return f"xsave({what}, XSTATE_BV={bv:#x})" if bv is not None else f"xsave({what})"
        return f"{self.kind}{tuple(hex(a) if isinstance(a, int) else a for a in self.args)}"


@dataclass
class Result:
    outcomes: list[object] = field(default_factory=list)
    state: dict[str, object] = field(default_factory=dict)


def _try(fn: Callable[[], object]) -> object:
    try:
        return fn()
    except KvmError as exc:
        return exc.errno_name


def apply(vcpu: Any, op: Op) -> object:
    """Apply one op; the return value (None, a count, an errno name) is what is compared."""
    if op.kind == "cpuid":
        entries: Sequence[CpuidEntry] = op.args[1]
        return _try(lambda: vcpu.set_cpuid2(list(entries)))
    if op.kind == "xcrs":
        return _try(lambda: vcpu.set_xcrs([(0, op.args[0])]))
    if op.kind == "xsave":
        return _try(lambda: vcpu.set_xsave(op.args[1]))
    if op.kind == "msr":
        return _try(lambda: vcpu.set_msrs([(op.args[0], op.args[1])]))
    if op.kind == "init":
        return _try(lambda: (vcpu.send_init(), vcpu.get_mp_state())[1])
    if op.kind == "mp_state":
        return _try(lambda: vcpu.set_mp_state(op.args[0]))
    if op.kind == "osxsave":
        return _try(lambda: vcpu.set_sregs(cr4_osxsave=op.args[0]))
    raise ValueError(f"unknown op {op.kind!r}")


def snapshot(vcpu: Any) -> dict[str, object]:
    """The vCPU's xstate as the ioctls report it."""
    def d0() -> object:
        e = next((e for e in vcpu.get_cpuid2() if (e.function, e.index) == (0xD, 0)), None)
        return None if e is None else (e.eax, e.edx)
    return {
        "KVM_GET_XSAVE": _try(vcpu.get_xsave),
        "KVM_GET_XSAVE2": _try(vcpu.get_xsave2),
        "KVM_GET_XCRS": _try(vcpu.get_xcrs),
        "KVM_GET_MSRS": _try(lambda: vcpu.get_msrs(STATE_MSRS)),
        "CPUID.(0xD,0) EAX/EDX": _try(d0),
        "KVM_GET_MP_STATE": _try(vcpu.get_mp_state),
        "CR4.OSXSAVE": _try(lambda: vcpu.get_sregs().cr4_osxsave),
    }


def run(kvm: Any, ops: Sequence[Op]) -> Result:
    vm = kvm.create_vm()
    try:
        vm.create_irqchip()
        vcpu = vm.create_vcpu(0)
        result = Result()
        for op in ops:
            result.outcomes.append(apply(vcpu, op))
        result.state = snapshot(vcpu)
        return result
    finally:
        vm.close()


def differences(a: Result, b: Result, host: Any) -> list[str]:
    """What differs between two runs of the same ops, register by register for buffers."""
    from kvmfpu.testing.compare import diff_xsave

    out = []
    for i, (x, y) in enumerate(zip(a.outcomes, b.outcomes, strict=True)):
        if x != y:
            out.append(f"op {i}: {x!r} != {y!r}")
    for key, x in a.state.items():
        y = b.state[key]
        if x == y:
            continue
        if isinstance(x, bytes) and isinstance(y, bytes):
            # Byte-exact: data under clear XSTATE_BV bits counts here too.
            out += [f"{key} {line}" for line in diff_xsave(x, y, host, unused=True)]
        else:
            out.append(f"{key}: {x!r} != {y!r}")
    return out
