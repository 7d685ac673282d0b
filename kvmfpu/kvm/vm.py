"""A KVM VM: vCPUs, capabilities on the VM fd, guest memory for guest instructions."""

from __future__ import annotations

import errno
from typing import TYPE_CHECKING

from kvmfpu.kvm.errors import KvmError
from kvmfpu.kvm.origins import cite
from kvmfpu.kvm.vcpu import Vcpu

if TYPE_CHECKING:
    from kvmfpu.kvm.system import Kvm

KVM_MAX_VCPUS = 4096
DEFAULT_MEMORY = 64 << 10


class Vm:
    def __init__(self, kvm: Kvm, vm_type: int = 0, memory_size: int = DEFAULT_MEMORY):
        if vm_type != 0:
            raise KvmError(errno.EINVAL, "kvm_arch_init_vm",
                           f"VM type {vm_type}: kvmfpu models the default VM type (0) only",
                           commit=cite("vm_type"))
        self.kvm = kvm
        self.vcpus: dict[int, Vcpu] = {}
        self.memory_size = memory_size
        self._memory_base: int | None = None
        self.irqchip = False

    @property
    def memory_base(self) -> int:
        """Where guest physical address 0 sits in the host's memory (allocated on use)."""
        if self._memory_base is None:
            self._memory_base = self.kvm.hk.arena.alloc(self.memory_size)
        return self._memory_base

    @property
    def memory(self) -> memoryview:
        """Guest memory, for guest XSAVE/XRSTOR operands (guest physical address = offset)."""
        base = self.memory_base
        return self.kvm.hk.mem[base:base + self.memory_size]

    def check_extension(self, cap: int) -> int:
        return self.kvm.check_extension(cap)

    def create_irqchip(self) -> None:
        """KVM_CREATE_IRQCHIP: an in-kernel PIC/IOAPIC/LAPIC (needed to deliver INIT and to
        set MP states other than RUNNABLE)."""
        if self.irqchip:
            raise KvmError(errno.EEXIST, "kvm_arch_vm_ioctl", "KVM_CREATE_IRQCHIP: the VM "
                                                             "already has one",
                           commit=cite("irqchip"))
        if self.vcpus:
            raise KvmError(errno.EINVAL, "kvm_arch_vm_ioctl", "KVM_CREATE_IRQCHIP after "
                                                             "KVM_CREATE_VCPU",
                           commit=cite("irqchip"))
        self.irqchip = True

    def create_vcpu(self, vcpu_id: int | None = None) -> Vcpu:
        """KVM_CREATE_VCPU: RESET state (XCR0 = 1, IA32_XSS = 0, zeroed guest fpstate)."""
        vid = len(self.vcpus) if vcpu_id is None else vcpu_id
        if not 0 <= vid < KVM_MAX_VCPUS:
            raise KvmError(errno.EINVAL, "kvm_vm_ioctl_create_vcpu",
                           f"vcpu id {vid} outside [0, KVM_MAX_VCPU_IDS)", commit=cite("vcpu_id"))
        if vid in self.vcpus:
            raise KvmError(errno.EEXIST, "kvm_vm_ioctl_create_vcpu", f"vcpu {vid} exists",
                           commit=cite("vcpu_exists"))
        vcpu = Vcpu(self, vid)
        self.vcpus[vid] = vcpu
        return vcpu

    def close(self) -> None:
        """Release the VM (its vCPUs' fpstates and its memory go back to the arena), as
        closing the last fd of a real VM does."""
        hk = self.kvm.hk
        for vcpu in self.vcpus.values():
            hk.free_fpstate(vcpu.gfpu.fpstate)
            if vcpu.thread.fpstate is not None and vcpu.thread.fpstate is not vcpu.gfpu.fpstate:
                hk.free_fpstate(vcpu.thread.fpstate)
            vcpu.thread.fpstate = None
        self.vcpus.clear()
        if self._memory_base is not None:
            hk.arena.free(self._memory_base, self.memory_size)
            self._memory_base = None
        if self in self.kvm.vms:
            self.kvm.vms.remove(self)

    def fileno(self) -> int:
        from kvmfpu.kvm.ioctl import fileno
        return fileno(self)

    def ioctl(self, request: int, arg: object = 0, mutate_flag: bool = True) -> object:
        """The VM fd's ioctls, as fcntl.ioctl would issue them."""
        from kvmfpu.kvm.ioctl import _dispatch
        return _dispatch(self, request, arg, mutate_flag)
