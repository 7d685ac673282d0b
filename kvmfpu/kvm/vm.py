"""A KVM VM: vCPUs, capabilities on the VM fd, guest memory for guest instructions."""

from __future__ import annotations

import errno
from typing import TYPE_CHECKING

from kvmfpu.kvm import ioctl as _ioctl
from kvmfpu.kvm.errors import KvmError, closed_fd
from kvmfpu.kvm.origins import cite
from kvmfpu.kvm.vcpu import Vcpu
from kvmfpu.linux.arena import OutOfArena

if TYPE_CHECKING:
    from kvmfpu.kvm.system import Kvm

KVM_MAX_VCPUS = 4096
DEFAULT_MEMORY = 64 << 10
PAGE_SIZE = 4096
#: include/linux/kvm_host.h: the most pages one memslot holds (torvalds/linux, unchanged
#: since 2.6.x; read at 00116795aa87).
KVM_MEM_MAX_NR_PAGES = (1 << 31) - 1


def check_memory_size(memory_size: object) -> int:
    """The guest memory's size as __kvm_set_memory_region (virt/kvm/kvm_main.c, 00116795aa87)
    checks the memslot: a multiple of PAGE_SIZE and at most KVM_MEM_MAX_NR_PAGES pages
    (-EINVAL). A value that is no u64 byte count is a ValueError (no ioctl takes it)."""
    if isinstance(memory_size, bool) or not isinstance(memory_size, int):
        raise ValueError(f"memory_size must be an int byte count, not {memory_size!r}")
    size = int(memory_size)
    if size < 0:
        raise ValueError(f"memory_size {size} is negative (kvm_userspace_memory_region."
                         "memory_size is a __u64)")
    if size & (PAGE_SIZE - 1):
        raise KvmError(errno.EINVAL, "__kvm_set_memory_region",
                       f"memory_size {size:#x} is not a multiple of PAGE_SIZE (4096)")
    if size // PAGE_SIZE > KVM_MEM_MAX_NR_PAGES:
        raise KvmError(errno.EINVAL, "__kvm_set_memory_region",
                       f"memory_size {size:#x} is {size // PAGE_SIZE} pages > "
                       f"KVM_MEM_MAX_NR_PAGES ({KVM_MEM_MAX_NR_PAGES})")
    return size


class Vm:
    def __init__(self, kvm: Kvm, vm_type: int = 0, memory_size: int = DEFAULT_MEMORY):
        if vm_type != 0:
            raise KvmError(errno.EINVAL, "kvm_arch_init_vm",
                           f"VM type {vm_type}: kvmfpu models the default VM type (0) only",
                           commit=cite("vm_type"))
        self.memory_size = check_memory_size(memory_size)
        if self.memory_size > kvm.hk.arena.max_size:
            raise KvmError(errno.ENOMEM, "mmap",
                           f"the VMM cannot map {self.memory_size:#x} bytes of guest memory: the "
                           f"model's arena holds at most {kvm.hk.arena.max_size:#x}")
        self.kvm = kvm
        self.vcpus: dict[int, Vcpu] = {}
        self._memory_base: int | None = None
        self.irqchip = False
        self.closed = False

    def _check_open(self) -> None:
        if self.closed:
            raise closed_fd("VM")

    @property
    def memory_base(self) -> int:
        """Where guest physical address 0 sits in the host's memory (allocated on use)."""
        if self._memory_base is None:
            with self.kvm.lock:
                self._check_open()
                if self._memory_base is None:
                    try:
                        self._memory_base = self.kvm.hk.arena.alloc(self.memory_size)
                    except OutOfArena as exc:
                        raise KvmError(errno.ENOMEM, "mmap", f"the VMM cannot map "
                                       f"{self.memory_size:#x} bytes of guest memory: {exc}"
                                       ) from None
        return self._memory_base

    @property
    def memory(self) -> memoryview:
        """Guest memory, for guest XSAVE/XRSTOR operands (guest physical address = offset).
        Take it anew after creating vCPUs or VMs: the arena may have moved."""
        base = self.memory_base
        return self.kvm.hk.mem[base:base + self.memory_size]

    def check_extension(self, cap: int) -> int:
        self._check_open()
        return self.kvm.check_extension(cap)

    def create_irqchip(self) -> None:
        """KVM_CREATE_IRQCHIP: an in-kernel PIC/IOAPIC/LAPIC (needed to deliver INIT and to
        set MP states other than RUNNABLE)."""
        with self.kvm.lock:            # kvm_arch_vm_ioctl takes kvm->lock
            self._check_open()
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
        with self.kvm.lock:            # kvm_vm_ioctl_create_vcpu takes kvm->lock
            self._check_open()
            vid = len(self.vcpus) if vcpu_id is None else vcpu_id
            if not 0 <= vid < KVM_MAX_VCPUS:
                raise KvmError(errno.EINVAL, "kvm_vm_ioctl_create_vcpu",
                               f"vcpu id {vid} outside [0, KVM_MAX_VCPU_IDS)",
                               commit=cite("vcpu_id"))
            if vid in self.vcpus:
                raise KvmError(errno.EEXIST, "kvm_vm_ioctl_create_vcpu", f"vcpu {vid} exists",
                               commit=cite("vcpu_exists"))
            try:
                vcpu = Vcpu(self, vid)
            except OutOfArena as exc:
                raise KvmError(errno.ENOMEM, "kvm_arch_vcpu_create",
                               f"fpu_alloc_guest_fpstate: {exc}") from None
            self.vcpus[vid] = vcpu
            return vcpu

    def close(self) -> None:
        """Close the VM fd and its vCPUs' fds (as RealVm.close does): the VM is destroyed,
        its vCPUs' fpstates and its memory go back to the arena, and every later ioctl on
        the VM or one of its vCPUs fails with EBADF."""
        kvm = self.kvm
        with kvm.lock:
            if self.closed:
                return
            hk = kvm.hk
            for vcpu in self.vcpus.values():
                vcpu.destroy()
            self.vcpus.clear()
            if self._memory_base is not None:
                hk.arena.free(self._memory_base, self.memory_size)
                self._memory_base = None
            self.closed = True
            if self in kvm.vms:
                kvm.vms.remove(self)
            _ioctl.forget(self)

    def fileno(self) -> int:
        self._check_open()
        return _ioctl.fileno(self)

    def ioctl(self, request: int, arg: object = 0, mutate_flag: bool = True) -> object:
        """The VM fd's ioctls, as fcntl.ioctl would issue them."""
        return _ioctl.dispatch(_ioctl.vm_ioctl, self, request, arg, mutate_flag)

    def _serve(self, request: int, arg: object) -> int:
        """The VM fd's handler (kvm_vm_ioctl)."""
        return _ioctl.vm_ioctl(self, request, arg)
