"""The KVM selftests' vCPU set-up and save/restore sequences, on the model's API.

Each function follows the selftest library function it is named after
(tools/testing/selftests/kvm/lib/x86/processor.c), in the same ioctl order, so that ports
of state_test, amx_test and friends exercise KVM the way the originals do. The functions
take any object with the Kvm/Vcpu methods, so they run unchanged on another backend.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass, field

from kvmfpu import uapi
from kvmfpu.kvm.errors import KvmError
from kvmfpu.kvm.system import (
    ARCH_GET_XCOMP_GUEST_PERM,
    ARCH_REQ_XCOMP_GUEST_PERM,
    KVM_X86_XCOMP_GUEST_SUPP,
    Kvm,
)
from kvmfpu.kvm.vcpu import MP_RUNNABLE, SRegs, Vcpu
from kvmfpu.kvm.vm import Vm


class StateError(RuntimeError):
    """A save/restore step did less than the selftest library asserts (e.g. KVM_SET_MSRS
    wrote fewer MSRs than it was given)."""


@dataclass
class VcpuState:
    """What vcpu_save_state collects (the xstate-relevant part)."""

    mp_state: int
    xsave: bytes
    xcrs: list[tuple[int, int]] | None
    sregs: SRegs
    msrs: list[tuple[int, int]] = field(default_factory=list)


def supported_xcr0(kvm: Kvm) -> int:
    """kvm_cpu_supported_xcr0: CPUID.(0DH,0) EDX:EAX of KVM_GET_SUPPORTED_CPUID."""
    d0 = next((e for e in kvm.get_supported_cpuid() if (e.function, e.index) == (0xD, 0)), None)
    return 0 if d0 is None else d0.eax | d0.edx << 32


def has_xsave(kvm: Kvm) -> bool:
    leaf1 = next(e for e in kvm.get_supported_cpuid() if e.function == 1)
    return bool(leaf1.ecx >> 26 & 1)


def vm_arch_vcpu_add(kvm: Kvm, vm: Vm, vcpu_id: int = 0) -> Vcpu:
    """KVM_CREATE_VCPU, full supported CPUID, CR4.OSXSAVE and XCR0 = supported XCR0 when
    KVM has XSAVE, MP state RUNNABLE."""
    vcpu = vm.create_vcpu(vcpu_id)
    vcpu.set_cpuid2(kvm.get_supported_cpuid())
    vcpu.get_cpuid2()
    xsave = has_xsave(kvm)
    vcpu.set_sregs(cr4_osxsave=xsave)
    if xsave:
        vcpu.set_xcrs([(0, supported_xcr0(kvm))])
    vcpu.set_mp_state(MP_RUNNABLE)
    vcpu.get_cpuid2()
    return vcpu


def vm_create_with_one_vcpu(kvm: Kvm) -> Vcpu:
    return vm_arch_vcpu_add(kvm, kvm.create_vm())


def vm_recreate_with_one_vcpu(kvm: Kvm) -> Vcpu:
    """vm_arch_vcpu_recreate: a new vCPU with the full supported CPUID, nothing else."""
    vcpu = kvm.create_vm().create_vcpu(0)
    vcpu.set_cpuid2(kvm.get_supported_cpuid())
    vcpu.get_cpuid2()
    return vcpu


def vcpu_save_state(vcpu: Vcpu) -> VcpuState:
    """KVM_GET_MP_STATE, KVM_GET_XSAVE2 (or KVM_GET_XSAVE when KVM_CAP_XSAVE2 is 0),
    KVM_GET_XCRS if KVM_CAP_XCRS, KVM_GET_SREGS, KVM_GET_MSRS of the whole save list."""
    kvm = vcpu.kvm
    mp_state = vcpu.get_mp_state()
    xsave = vcpu.get_xsave2() if vcpu.vm.check_extension(uapi.KVM_CAP_XSAVE2) else vcpu.get_xsave()
    xcrs = vcpu.get_xcrs() if vcpu.vm.check_extension(uapi.KVM_CAP_XCRS) else None
    indices = kvm.get_msr_index_list()
    msrs = vcpu.get_msrs(indices)
    if len(msrs) != len(indices):
        raise StateError(f"KVM_GET_MSRS read {len(msrs)} of {len(indices)} listed MSRs: "
                         f"{vcpu.last_msr_failure}")
    return VcpuState(mp_state, xsave, xcrs, vcpu.get_sregs(), msrs)


def vcpu_load_state(vcpu: Vcpu, state: VcpuState) -> None:
    """KVM_SET_SREGS, KVM_SET_MSRS (all of them), KVM_SET_XCRS, KVM_SET_XSAVE (always this
    ioctl, with a buffer as large as KVM_GET_XSAVE2 gave), KVM_SET_MP_STATE."""
    vcpu.set_sregs(state.sregs)
    n = vcpu.set_msrs(state.msrs)
    if n != len(state.msrs):
        raise StateError(f"KVM_SET_MSRS wrote {n} of {len(state.msrs)} MSRs: "
                         f"{vcpu.last_msr_failure}")
    if state.xcrs is not None:
        vcpu.set_xcrs(state.xcrs)
    vcpu.set_xsave(state.xsave)
    vcpu.set_mp_state(state.mp_state)


def save_restore(vcpu: Vcpu) -> Vcpu:
    """The selftests' save, kvm_vm_release, recreate and load: the vCPU's state moved into
    a new VM of the same process."""
    state = vcpu_save_state(vcpu)
    new = vm_recreate_with_one_vcpu(vcpu.kvm)
    vcpu_load_state(new, state)
    return new


def vm_xsave_require_permission(kvm: Kvm, bit: int) -> str | None:
    """Request guest permission for ``bit``; None on success, else why the test skips
    (KVM_GET_DEVICE_ATTR(KVM_X86_XCOMP_GUEST_SUPP) fails or lacks the bit, or the
    arch_prctl fails)."""
    try:
        supported = kvm.get_device_attr(0, KVM_X86_XCOMP_GUEST_SUPP)
    except KvmError as exc:
        if exc.errno in (errno.ENXIO, errno.EINVAL):
            return f"KVM_X86_XCOMP_GUEST_SUPP: {exc.reason}"
        raise
    if not supported >> bit & 1:
        return f"KVM_X86_XCOMP_GUEST_SUPP {supported:#x} lacks bit {bit}"
    try:
        kvm.arch_prctl(ARCH_REQ_XCOMP_GUEST_PERM, bit)
    except KvmError as exc:
        return f"ARCH_REQ_XCOMP_GUEST_PERM: {exc.reason}"
    perm = kvm.arch_prctl(ARCH_GET_XCOMP_GUEST_PERM)
    if not perm >> bit & 1:
        raise StateError(f"ARCH_GET_XCOMP_GUEST_PERM {perm:#x} lacks bit {bit} after the request")
    return None
