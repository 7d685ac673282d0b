"""A KVM vCPU: the xstate ioctls, MSRs, INIT/RESET and guest execution.

Each method is named after its ioctl and follows the kernel function that serves it
(arch/x86/kvm/x86.c; msrs.c in 7.x), as the profile's switches select. Failures raise
:class:`~kvmfpu.kvm.errors.KvmError` with the errno the kernel returns and a reason
naming the function, the condition and the commit.

The families live in their own modules, as arch/x86/kvm splits them: vcpu_xsave
(KVM_GET/SET_XSAVE{2}), vcpu_xcrs, vcpu_cpuid, vcpu_msrs, vcpu_events (MP state, INIT,
RESET, sregs) and vcpu_run (KVM_RUN and :class:`Guest`); vcpu_base holds the state and
what they share. What the vendor module decides comes from ``kvm.ops``
(:mod:`kvmfpu.kvm.flavors`). The names below stay importable from here.
"""

from __future__ import annotations

from kvmfpu.kvm.vcpu_base import (
    ALL,
    CET_MSRS,
    KVM_MAX_XCRS,
    KVM_XSAVE_SIZE,
    MAX_IO_MSRS,
    MP_AP_RESET_HOLD,
    MP_HALTED,
    MP_INIT_RECEIVED,
    MP_NAMES,
    MP_RUNNABLE,
    MP_SIPI_RECEIVED,
    MP_UNINITIALIZED,
    MsrFailure,
    SRegs,
)
from kvmfpu.kvm.vcpu_cpuid import CpuidOps
from kvmfpu.kvm.vcpu_msrs import MsrOps
from kvmfpu.kvm.vcpu_run import Guest, RunOps
from kvmfpu.kvm.vcpu_xcrs import XcrOps
from kvmfpu.kvm.vcpu_xsave import XsaveOps

__all__ = [
    "ALL", "CET_MSRS", "KVM_MAX_XCRS", "KVM_XSAVE_SIZE", "MAX_IO_MSRS", "MP_AP_RESET_HOLD",
    "MP_HALTED", "MP_INIT_RECEIVED", "MP_NAMES", "MP_RUNNABLE", "MP_SIPI_RECEIVED",
    "MP_UNINITIALIZED", "Guest", "MsrFailure", "SRegs", "Vcpu",
]


class Vcpu(XsaveOps, XcrOps, CpuidOps, MsrOps, RunOps):
    """A vCPU of a :class:`~kvmfpu.kvm.vm.Vm` (KVM_CREATE_VCPU)."""

    __slots__ = ()
