"""The Linux KVM xstate ABI, modelled: Kvm / Vm / Vcpu with ioctl-shaped methods."""

from kvmfpu.kvm.errors import HostOops, KvmError
from kvmfpu.kvm.profiles import NAMED, NEWEST, KernelProfile, profile
from kvmfpu.kvm.system import Kvm
from kvmfpu.kvm.vcpu import Guest, SRegs, Vcpu
from kvmfpu.kvm.vm import Vm

__all__ = ["NAMED", "NEWEST", "Guest", "HostOops", "KernelProfile", "Kvm", "KvmError", "SRegs",
           "Vcpu", "Vm", "profile"]
