"""kvmfpu: an executable model of the x86 XSAVE architecture and the Linux KVM FPU/xstate
userspace ABI. ``kvmfpu.Kvm(host, kernel, flavor)`` is /dev/kvm on a chosen host CPU model
and kernel version; ``kvmfpu.core.Cpu`` the emulated processor; ``kvmfpu.cpus`` the host
models; ``kvmfpu.scenarios`` the seed bugs."""

from kvmfpu.kvm import HostOops, KernelProfile, Kvm, KvmError, Vcpu, Vm
from kvmfpu.real import open_kvm

__version__ = "0.1.0"
__all__ = ["HostOops", "KernelProfile", "Kvm", "KvmError", "Vcpu", "Vm", "__version__",
           "open_kvm"]
