"""Raw ioctls on the model, with the real request numbers and uapi byte layouts.

``ioctl(fd, request, arg)`` behaves like ``fcntl.ioctl`` on model file descriptors: an
int ``arg`` is passed by value and the result returned; a writable buffer is read and
filled in place (the int result returned); an immutable ``bytes`` buffer gives back a
filled copy. Errors are :class:`KvmError` (an OSError with the kernel's errno). Kvm, Vm
and Vcpu objects also have an ``ioctl(request, arg)`` method and a ``fileno()``.
"""

from __future__ import annotations

import errno
import itertools
import os
import struct
import weakref
from typing import TYPE_CHECKING, Any

from kvmfpu import uapi
from kvmfpu.kvm.cpuid import CpuidEntry, pack_entries, unpack_entries
from kvmfpu.kvm.errors import KvmError
from kvmfpu.kvm.origins import cite

if TYPE_CHECKING:
    from kvmfpu.kvm.system import Kvm
    from kvmfpu.kvm.vcpu import Vcpu
    from kvmfpu.kvm.vm import Vm

_fds: weakref.WeakValueDictionary[int, Any] = weakref.WeakValueDictionary()
_next_fd = itertools.count(1000)
_U32 = struct.Struct("<I")
_HDR = struct.Struct("<II")
_XCR = struct.Struct("<IIQ")
_MSR = struct.Struct("<IIQ")
_ATTR = struct.Struct("<IIQQ")



def fileno(obj: object) -> int:
    """The model fd of a Kvm/Vm/Vcpu (assigned on first use)."""
    fd = getattr(obj, "_kvmfpu_fd", None)
    if fd is None:
        fd = next(_next_fd)
        obj._kvmfpu_fd = fd  # type: ignore[attr-defined]
        _fds[fd] = obj
    return int(fd)


def lookup(fd: int) -> Any:
    try:
        return _fds[fd]
    except KeyError:
        raise KvmError(errno.EBADF, "ioctl", f"fd {fd} is not a kvmfpu model fd") from None


def ioctl(fd: int, request: int, arg: Any = 0, mutate_flag: bool = True) -> Any:
    """fcntl.ioctl for model fds."""
    obj = lookup(fd)
    return _dispatch(obj, request, arg, mutate_flag)


def _dispatch(obj: Any, request: int, arg: Any, mutate_flag: bool = True) -> Any:
    from kvmfpu.kvm.system import Kvm
    from kvmfpu.kvm.vcpu import Vcpu
    from kvmfpu.kvm.vm import Vm

    if isinstance(arg, (bytes, bytearray, memoryview)):
        immutable = isinstance(arg, bytes) or not mutate_flag or memoryview(arg).readonly
        buf = bytearray(arg) if immutable else memoryview(arg).cast("B")
        if isinstance(obj, Kvm):
            result = system_ioctl(obj, request, buf)
        elif isinstance(obj, Vm):
            result = vm_ioctl(obj, request, buf)
        else:
            result = vcpu_ioctl(obj, request, buf)
        return bytes(buf) if immutable else result
    if isinstance(obj, Kvm):
        return system_ioctl(obj, request, arg)
    if isinstance(obj, Vm):
        return vm_ioctl(obj, request, arg)
    if isinstance(obj, Vcpu):
        return vcpu_ioctl(obj, request, arg)
    raise KvmError(errno.ENOTTY, "ioctl", f"{type(obj).__name__} takes no ioctls")


def _need(buf: Any, n: int, what: str) -> memoryview:
    if not isinstance(buf, (bytearray, memoryview)):
        raise KvmError(errno.EFAULT, what, "this ioctl needs a buffer argument")
    view = memoryview(buf).cast("B")
    if len(view) < n:
        raise KvmError(errno.EFAULT, what, f"buffer of {len(view)} bytes, the kernel accesses {n}")
    return view


def _name(request: int) -> str:
    for k, v in uapi.requests().items():
        if v == request:
            return k
    return f"{request:#x}"


def _not_modelled(request: int) -> KvmError:
    return KvmError(errno.ENOSYS, "kvmfpu", f"{_name(request)} is not modelled")


def system_ioctl(kvm: Kvm, request: int, arg: Any = 0) -> int:
    r = uapi.requests()
    if request == r["KVM_GET_API_VERSION"]:
        return kvm.get_api_version()
    if request == r["KVM_CHECK_EXTENSION"]:
        return kvm.check_extension(int(arg))
    if request == r["KVM_CREATE_VM"]:
        return fileno(kvm.create_vm(int(arg)))
    if request == r["KVM_GET_SUPPORTED_CPUID"]:
        view = _need(arg, 8, "KVM_GET_SUPPORTED_CPUID")
        nent = _U32.unpack_from(view, 0)[0]
        entries = kvm.get_supported_cpuid(nent)
        raw = pack_entries(entries)
        view2 = _need(arg, 8 + len(raw), "KVM_GET_SUPPORTED_CPUID")
        _U32.pack_into(view2, 0, len(entries))
        view2[8:8 + len(raw)] = raw
        return 0
    if request == r["KVM_GET_MSR_INDEX_LIST"]:
        view = _need(arg, 4, "KVM_GET_MSR_INDEX_LIST")
        n = _U32.unpack_from(view, 0)[0]
        indices = kvm.get_msr_index_list()
        _U32.pack_into(view, 0, len(indices))
        if n < len(indices):
            raise KvmError(errno.E2BIG, "kvm_get_msr_index_list",
                           f"nmsrs {n} < {len(indices)} (nmsrs updated)",
                           commit=cite("msr_index_list"))
        out = _need(arg, 4 + 4 * len(indices), "KVM_GET_MSR_INDEX_LIST")
        for i, idx in enumerate(indices):
            _U32.pack_into(out, 4 + 4 * i, idx)
        return 0
    if request in (r["KVM_GET_DEVICE_ATTR"], r["KVM_HAS_DEVICE_ATTR"]):
        view = _need(arg, uapi.sizeof("kvm_device_attr"), "KVM_GET/HAS_DEVICE_ATTR")
        _flags, group, attr, addr = _ATTR.unpack_from(view, 0)
        if request == r["KVM_HAS_DEVICE_ATTR"]:
            kvm.has_device_attr(group, attr)
            return 0
        _put_user(addr, struct.pack("<Q", kvm.get_device_attr(group, attr)),
                  "kvm_x86_dev_get_attr")
        return 0
    if request in r.values():
        raise _not_modelled(request)
    raise KvmError(errno.EINVAL, "kvm_dev_ioctl", f"unknown /dev/kvm ioctl {request:#x}")


def _put_user(addr: int, data: bytes, function: str) -> None:
    """put_user to a user address inside this process, as the kernel would: an address
    that is not mapped writable gives -EFAULT (written through /proc/self/mem, which
    reports bad addresses instead of crashing the interpreter)."""
    try:
        fd = os.open("/proc/self/mem", os.O_RDWR)
    except OSError as exc:
        raise KvmError(errno.EFAULT, function, f"cannot reach user memory: {exc}") from None
    try:
        if addr == 0 or os.pwrite(fd, data, addr) != len(data):
            raise KvmError(errno.EFAULT, function, f"address {addr:#x} is not writable")
    except OSError:
        raise KvmError(errno.EFAULT, function, f"address {addr:#x} is not writable") from None
    finally:
        os.close(fd)


def vm_ioctl(vm: Vm, request: int, arg: Any = 0) -> int:
    r = uapi.requests()
    if request == r["KVM_CHECK_EXTENSION"]:
        return vm.check_extension(int(arg))
    if request == r["KVM_CREATE_VCPU"]:
        return fileno(vm.create_vcpu(int(arg)))
    if request == r["KVM_CREATE_IRQCHIP"]:
        vm.create_irqchip()
        return 0
    if request in r.values():
        raise _not_modelled(request)
    raise KvmError(errno.ENOTTY, "kvm_arch_vm_ioctl", f"unknown VM ioctl {request:#x}")


def vcpu_ioctl(vcpu: Vcpu, request: int, arg: Any = 0) -> int:
    r = uapi.requests()
    if request == r["KVM_GET_XSAVE"]:
        view = _need(arg, 4096, "KVM_GET_XSAVE")
        view[:4096] = vcpu.get_xsave()
        return 0
    if request == r["KVM_GET_XSAVE2"]:
        data = vcpu.get_xsave2()
        view = _need(arg, len(data), "KVM_GET_XSAVE2")
        view[:len(data)] = data
        return 0
    if request == r["KVM_SET_XSAVE"]:
        vcpu.set_xsave(_need(arg, 0, "KVM_SET_XSAVE"))
        return 0
    if request == r["KVM_GET_XCRS"]:
        view = _need(arg, uapi.sizeof("kvm_xcrs"), "KVM_GET_XCRS")
        view[:uapi.sizeof("kvm_xcrs")] = bytes(uapi.sizeof("kvm_xcrs"))
        xcrs = vcpu.get_xcrs()
        _HDR.pack_into(view, 0, len(xcrs), 0)
        for i, (idx, val) in enumerate(xcrs):
            _XCR.pack_into(view, 8 + 16 * i, idx, 0, val)
        return 0
    if request == r["KVM_SET_XCRS"]:
        view = _need(arg, uapi.sizeof("kvm_xcrs"), "KVM_SET_XCRS")
        nr, flags = _HDR.unpack_from(view, 0)
        entries = [(_XCR.unpack_from(view, 8 + 16 * i)[0], _XCR.unpack_from(view, 8 + 16 * i)[2])
                   for i in range(min(nr, 16))]
        vcpu.set_xcrs(entries, flags=flags, nr_xcrs=nr)
        return 0
    if request in (r["KVM_GET_MSRS"], r["KVM_SET_MSRS"]):
        view = _need(arg, 8, "KVM_GET/SET_MSRS")
        n = _U32.unpack_from(view, 0)[0]
        if n >= 256:
            raise KvmError(errno.E2BIG, "msr_io", f"nmsrs {n} >= MAX_IO_MSRS (256)",
                           commit=cite("msr_io"))
        view = _need(arg, 8 + 16 * n, "KVM_GET/SET_MSRS")
        pairs = [(_MSR.unpack_from(view, 8 + 16 * i)[0], _MSR.unpack_from(view, 8 + 16 * i)[2])
                 for i in range(n)]
        if request == r["KVM_SET_MSRS"]:
            return vcpu.set_msrs(pairs)
        got = vcpu.get_msrs(idx for idx, _ in pairs)
        for i, (idx, val) in enumerate(got):
            _MSR.pack_into(view, 8 + 16 * i, idx, 0, val)
        return len(got)
    if request == r["KVM_SET_CPUID2"]:
        view = _need(arg, 8, "KVM_SET_CPUID2")
        nent = _U32.unpack_from(view, 0)[0]
        if nent > 256:
            raise KvmError(errno.E2BIG, "kvm_vcpu_ioctl_set_cpuid2", f"nent {nent} > 256",
                           commit=cite("cpuid2"))
        view = _need(arg, 8 + 40 * nent, "KVM_SET_CPUID2")
        vcpu.set_cpuid2(list(unpack_entries(view[8:], nent)))
        return 0
    if request == r["KVM_GET_CPUID2"]:
        view = _need(arg, 8, "KVM_GET_CPUID2")
        nent = _U32.unpack_from(view, 0)[0]
        got_entries: list[CpuidEntry] = vcpu.get_cpuid2(nent)
        raw = pack_entries(got_entries)
        view = _need(arg, 8 + len(raw), "KVM_GET_CPUID2")
        _U32.pack_into(view, 0, len(got_entries))
        view[8:8 + len(raw)] = raw
        return 0
    if request == r["KVM_GET_MP_STATE"]:
        view = _need(arg, 4, "KVM_GET_MP_STATE")
        _U32.pack_into(view, 0, vcpu.get_mp_state())
        return 0
    if request == r["KVM_SET_MP_STATE"]:
        view = _need(arg, 4, "KVM_SET_MP_STATE")
        vcpu.set_mp_state(_U32.unpack_from(view, 0)[0])
        return 0
    if request == r["KVM_SET_VCPU_EVENTS"]:
        size = uapi.sizeof("kvm_vcpu_events")
        view = _need(arg, size, "KVM_SET_VCPU_EVENTS")
        at_flags = uapi.offsetof("kvm_vcpu_events", "flags")
        at_init = uapi.offsetof("kvm_vcpu_events", "smi", "latched_init")
        flags = _U32.unpack_from(view, at_flags)[0]
        events = bytearray(view[:size])
        events[at_flags:at_flags + 4] = bytes(4)
        events[at_init] = 0
        if flags != uapi.const("KVM_VCPUEVENT_VALID_SMM") or any(events):
            raise KvmError(errno.ENOSYS, "kvmfpu", "KVM_SET_VCPU_EVENTS: only the INIT latch "
                                                   "(VALID_SMM, smi.latched_init) is modelled")
        if view[at_init]:
            vcpu.send_init()
        return 0
    if request in r.values():
        raise _not_modelled(request)
    raise KvmError(errno.EINVAL, "kvm_arch_vcpu_ioctl", f"unknown vCPU ioctl {request:#x}")
