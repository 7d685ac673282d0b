"""kvmfpu: an executable model of the x86 XSAVE architecture and the Linux KVM FPU/xstate
userspace ABI. ``kvmfpu.Kvm(host, kernel, flavor)`` is /dev/kvm on a chosen host CPU model
and kernel version; ``kvmfpu.core.Cpu`` the emulated processor; ``kvmfpu.cpus`` the host
models; ``kvmfpu.scenarios`` the seed bugs."""

from kvmfpu.kvm import HostOops, KernelProfile, Kvm, KvmError, Vcpu, Vm
from kvmfpu.real import open_kvm


def model_of_running_host(path: str = "/dev/kvm") -> Kvm:
    """The model (this machine's CPUID, the best-matching kernel profile, the loaded vendor
    module's flavour) that behaves like the running /dev/kvm (see ``kvmfpu probe``)."""
    from kvmfpu.probe import model_of_running_host as find
    return find(path)


__version__ = "0.1.0"
__all__ = ["HostOops", "KernelProfile", "Kvm", "KvmError", "Vcpu", "Vm", "__version__",
           "model_of_running_host", "open_kvm"]
