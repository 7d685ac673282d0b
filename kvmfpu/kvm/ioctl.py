"""Raw ioctls on the model, with the real request numbers and uapi byte layouts.

``ioctl(fd, request, arg)`` behaves like ``fcntl.ioctl`` (Python 3.11's
Modules/fcntlmodule.c, checked against this machine's /dev/kvm) on model file
descriptors: ``fd`` is an int or has ``fileno()``; the request is taken modulo 2**32 (the
kernel's ``unsigned int cmd``); an int ``arg`` must fit a C int and is passed by value, the
result returned; a writable buffer is read and filled in place (the int result returned);
``bytes``, a read-only buffer, a ``str`` (UTF-8) or a writable buffer with
``mutate_flag=False`` travel as a copy of at most 1024 bytes and come back as bytes.
A buffer given to an int-valued ioctl is a non-zero user address, as it is to the kernel.
Errors are :class:`KvmError` (an OSError with the kernel's errno): a request on the wrong
kind of fd gives what that fd's kernel handler gives. Kvm, Vm and Vcpu objects also have an
``ioctl(request, arg)`` method and a ``fileno()``.
"""

from __future__ import annotations

import ctypes
import errno
import itertools
import operator
import os
import struct
import weakref
from functools import cache
from typing import TYPE_CHECKING, Any, Final

from kvmfpu import uapi
from kvmfpu.kvm.cpuid import CpuidEntry, pack_entries, unpack_entries
from kvmfpu.kvm.errors import KvmError, closed_fd
from kvmfpu.kvm.origins import cite
from kvmfpu.uapi import KVM_GET_XSAVE, KVM_SET_XSAVE, KVM_XSAVE_SIZE

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

#: fcntl.ioctl's copy buffer (IOCTL_BUFSZ in Modules/fcntlmodule.c).
IOCTL_BUFSZ: Final = 1024
_C_INT_MIN, _C_INT_MAX = -(1 << 31), (1 << 31) - 1
#: What an int-valued ioctl sees when it is given a buffer: its user address (fcntl passes
#: a pointer). Any user address is non-zero and no capability, type or vCPU id.
_BUFFER_ADDRESS: Final = 0x7F00_0000_0000
#: x86: struct kvm_run, the PIO data page and the coalesced MMIO ring (kvm_dev_ioctl;
#: 12288 measured on this machine's 6.18 kernel).
KVM_VCPU_MMAP_SIZE: Final = 3 * 4096

#: The requests kvmfpu issues, by the fd kind whose handler serves them: kvm_dev_ioctl and
#: kvm_arch_dev_ioctl (/dev/kvm: KVM_GET_MSRS reads feature MSRs), kvm_vm_ioctl and
#: kvm_arch_vm_ioctl, kvm_vcpu_ioctl and kvm_arch_vcpu_ioctl (virt/kvm/kvm_main.c,
#: arch/x86/kvm/x86.c; torvalds/linux 00116795aa87). Measured on this machine's 6.18
#: kvm_pvm: every other pairing gives the handler's default errno (_UNSERVED), and
#: KVM_GET/HAS_DEVICE_ATTR on a VM fd give ENOTTY (no VM attributes there).
_SYSTEM: Final = frozenset({
    "KVM_GET_API_VERSION", "KVM_CREATE_VM", "KVM_GET_MSR_INDEX_LIST", "KVM_CHECK_EXTENSION",
    "KVM_GET_VCPU_MMAP_SIZE", "KVM_GET_SUPPORTED_CPUID", "KVM_GET_MSRS",
    "KVM_GET_DEVICE_ATTR", "KVM_HAS_DEVICE_ATTR"})
_VM: Final = frozenset({"KVM_CHECK_EXTENSION", "KVM_CREATE_VCPU", "KVM_CREATE_IRQCHIP"})
_VCPU_ONLY_NOT: Final = frozenset({
    "KVM_GET_API_VERSION", "KVM_CREATE_VM", "KVM_GET_MSR_INDEX_LIST", "KVM_CHECK_EXTENSION",
    "KVM_GET_VCPU_MMAP_SIZE", "KVM_GET_SUPPORTED_CPUID", "KVM_CREATE_VCPU",
    "KVM_CREATE_IRQCHIP"})
#: The errno (and function) of each handler's default case: kvm_arch_dev_ioctl and
#: kvm_arch_vcpu_ioctl start from -EINVAL, kvm_arch_vm_ioctl from -ENOTTY (measured here).
_UNSERVED: Final = {"system": (errno.EINVAL, "kvm_dev_ioctl"),
                    "vm": (errno.ENOTTY, "kvm_arch_vm_ioctl"),
                    "vcpu": (errno.EINVAL, "kvm_arch_vcpu_ioctl")}


@cache
def _requests() -> dict[str, int]:
    return uapi.requests()


@cache
def _names() -> dict[int, str]:
    return {v: k for k, v in _requests().items()}


@cache
def served(kind: str) -> frozenset[int]:
    """The request numbers kvmfpu knows that the ``kind`` ("system", "vm", "vcpu") fd's
    kernel handler serves."""
    names = {"system": _SYSTEM, "vm": _VM,
             "vcpu": frozenset(_requests()) - _VCPU_ONLY_NOT}[kind]
    return frozenset(_requests()[n] for n in names)


def fileno(obj: object) -> int:
    """The model fd of a Kvm/Vm/Vcpu (assigned on first use)."""
    fd = getattr(obj, "_kvmfpu_fd", None)
    if fd is None:
        fd = next(_next_fd)
        obj._kvmfpu_fd = fd  # type: ignore[attr-defined]
        _fds[fd] = obj
    return int(fd)


def forget(obj: object) -> None:
    """The object's fd is closed: looking it up gives EBADF from now on."""
    fd = getattr(obj, "_kvmfpu_fd", None)
    if fd is not None:
        _fds.pop(fd, None)


def lookup(fd: int) -> Any:
    try:
        return _fds[fd]
    except KeyError:
        raise KvmError(errno.EBADF, "ioctl", f"fd {fd} is not an open kvmfpu model fd") from None


def ioctl(fd: Any, request: int, arg: Any = 0, mutate_flag: bool = True) -> Any:
    """fcntl.ioctl for model fds."""
    if not isinstance(fd, int):
        get = getattr(fd, "fileno", None)
        if get is None:
            raise TypeError(f"argument must be an int, or have a fileno() method, not "
                            f"{type(fd).__name__}")
        fd = get()
    if fd < 0:
        raise ValueError("file descriptor cannot be a negative integer")
    return _dispatch(lookup(fd), request, arg, mutate_flag)


def _c_int(arg: Any) -> int:
    """fcntl's "i" conversion of an int argument."""
    value = operator.index(arg)
    if value > _C_INT_MAX:
        raise OverflowError("signed integer is greater than maximum")
    if value < _C_INT_MIN:
        raise OverflowError("signed integer is less than minimum")
    return value


def _dispatch(obj: Any, request: int, arg: Any, mutate_flag: bool = True) -> Any:
    """An ioctl on a model object: its fd kind's handler (``obj._serve``)."""
    return dispatch(obj.__class__._serve, obj, request, arg, mutate_flag)


def dispatch(handler: Any, obj: Any, request: int, arg: Any, mutate_flag: bool = True) -> Any:
    """fcntl.ioctl's argument handling, then ``handler(obj, request, arg)``."""
    if request.__class__ is not int:
        request = operator.index(request)
    request &= 0xFFFF_FFFF
    kind = arg.__class__
    if kind is bytearray and mutate_flag:            # the hot path: filled in place
        return handler(obj, request, arg)
    if kind is int or kind is bool:
        return handler(obj, request, _c_int(arg))
    if isinstance(arg, str):
        arg = arg.encode()
    try:
        view = memoryview(arg)
    except TypeError:
        return handler(obj, request, _c_int(arg))
    if view.readonly or not mutate_flag:
        if view.nbytes > IOCTL_BUFSZ:
            raise ValueError("ioctl string arg too long")
        buf = bytearray(view.cast("B") if view.ndim != 1 or view.format != "B" else view)
        handler(obj, request, buf)
        return bytes(buf)
    return handler(obj, request, view if view.format == "B" and view.ndim == 1 else view.cast("B"))


def _need(buf: Any, n: int, what: str) -> memoryview:
    if not isinstance(buf, (bytearray, memoryview)):
        # An int is the struct's user address (fcntl passes it as is).
        if buf == 0 or not 0 < buf < _TASK_SIZE_MAX or not _vm_copy(False, buf, bytearray(1)):
            raise KvmError(errno.EFAULT, what, f"address {buf & (1 << 64) - 1:#x} is not "
                                               "readable user memory (copy_from_user)")
        raise KvmError(errno.ENOSYS, "kvmfpu", f"{what}: the model takes the struct as a "
                                               f"Python buffer; it does not follow the raw "
                                               f"address {buf:#x}")
    view = memoryview(buf).cast("B")
    if len(view) < n:
        raise KvmError(errno.EFAULT, what, f"buffer of {len(view)} bytes, the kernel accesses {n}")
    return view


def _scalar(arg: Any) -> int:
    """An int-valued ioctl's argument: a buffer stands for its (non-zero) address."""
    return arg if isinstance(arg, int) else _BUFFER_ADDRESS


def _name(request: int) -> str:
    return _names().get(request, f"{request:#x}")


def _not_modelled(request: int) -> KvmError:
    return KvmError(errno.ENOSYS, "kvmfpu", f"{_name(request)} is not modelled")


def _unserved(kind: str, request: int) -> KvmError:
    err, function = _UNSERVED[kind]
    what = {"system": "/dev/kvm", "vm": "a VM", "vcpu": "a vCPU"}[kind]
    return KvmError(err, function, f"{_name(request)} is not an ioctl of {what} fd (the "
                                   "handler's default case)")


def system_ioctl(kvm: Kvm, request: int, arg: Any = 0) -> int:
    r = _requests()
    if kvm.closed:
        raise closed_fd("/dev/kvm")
    if request not in served("system"):
        raise _unserved("system", request)
    if request == r["KVM_GET_API_VERSION"]:
        if _scalar(arg):
            raise KvmError(errno.EINVAL, "kvm_dev_ioctl", "KVM_GET_API_VERSION: arg must be 0")
        return kvm.get_api_version()
    if request == r["KVM_GET_VCPU_MMAP_SIZE"]:
        if _scalar(arg):
            raise KvmError(errno.EINVAL, "kvm_dev_ioctl", "KVM_GET_VCPU_MMAP_SIZE: arg must be 0")
        return KVM_VCPU_MMAP_SIZE
    if request == r["KVM_CHECK_EXTENSION"]:
        return kvm.check_extension(_scalar(arg))
    if request == r["KVM_CREATE_VM"]:
        return fileno(kvm.create_vm(_scalar(arg)))
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
        put_user(addr, struct.pack("<Q", kvm.get_device_attr(group, attr)),
                 "kvm_x86_dev_get_attr")
        return 0
    raise _not_modelled(request)


# -- put_user: the kernel's write to a user address ---------------------------------------------
class _IoVec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


_PAGE = 4096
#: TASK_SIZE_MAX on x86-64 with 4-level paging: access_ok refuses addresses above it.
_TASK_SIZE_MAX = (1 << 47) - _PAGE


@cache
def _libc() -> ctypes.CDLL:
    libc = ctypes.CDLL(None, use_errno=True)
    for fn in (libc.process_vm_readv, libc.process_vm_writev):
        fn.restype = ctypes.c_ssize_t
        fn.argtypes = [ctypes.c_int, ctypes.POINTER(_IoVec), ctypes.c_ulong,
                       ctypes.POINTER(_IoVec), ctypes.c_ulong, ctypes.c_ulong]
    return libc


def _vm_copy(write: bool, addr: int, data: bytearray) -> bool:
    """process_vm_writev/readv on this process: the kernel's own permission checks (a page
    not mapped, or not writable for a write, is refused; /proc/self/mem would force the
    write through FOLL_FORCE)."""
    local = (ctypes.c_char * len(data)).from_buffer(data)
    liov = _IoVec(ctypes.addressof(local), len(data))
    riov = _IoVec(addr, len(data))
    libc = _libc()
    fn = libc.process_vm_writev if write else libc.process_vm_readv
    done = fn(os.getpid(), ctypes.byref(liov), 1, ctypes.byref(riov), 1, 0)
    if done < 0 and ctypes.get_errno() in (errno.ENOSYS, errno.EPERM):
        return _maps_copy(write, addr, ctypes.addressof(local), len(data))
    return bool(done == len(data))


def _maps_copy(write: bool, addr: int, local: int, size: int) -> bool:
    """Where a seccomp filter refuses process_vm_readv/writev: the range must lie in
    mappings /proc/self/maps shows readable (writable, for a write); then a plain copy."""
    need, at, end = ("w" if write else "r"), addr, addr + size
    with open("/proc/self/maps", encoding="ascii", errors="replace") as maps:
        spans = []
        for line in maps:
            span, perms = line.split()[:2]
            first, last = span.split("-")
            spans.append((int(first, 16), int(last, 16), perms))
    for lo, hi, perms in sorted(spans):
        if lo <= at < hi:
            if need not in perms:
                return False
            at = hi
            if at >= end:
                break
    if at < end:
        return False
    if write:
        ctypes.memmove(addr, local, size)
    else:
        ctypes.memmove(local, addr, size)
    return True


def put_user(addr: int, data: bytes, function: str) -> None:
    """copy_to_user of ``data`` to ``addr`` in this process, as the kernel does it: an address
    that is NULL, above TASK_SIZE_MAX, not mapped or not writable gives -EFAULT and nothing is
    written (each page is tried first by writing back what it holds)."""
    fault = KvmError(errno.EFAULT, function, f"address {addr:#x} is not writable user memory")
    if addr == 0 or addr + len(data) > _TASK_SIZE_MAX:
        raise fault
    pieces = []
    at = addr
    while at < addr + len(data):
        end = min(addr + len(data), (at // _PAGE + 1) * _PAGE)
        pieces.append((at, end))
        at = end
    for start, end in pieces:
        held = bytearray(end - start)
        if not (_vm_copy(False, start, held) and _vm_copy(True, start, held)):
            raise fault
    if not _vm_copy(True, addr, bytearray(data)):
        raise fault


def vm_ioctl(vm: Vm, request: int, arg: Any = 0) -> int:
    r = _requests()
    if vm.closed:
        raise closed_fd("VM")
    if request not in served("vm"):
        raise _unserved("vm", request)
    if request == r["KVM_CHECK_EXTENSION"]:
        return vm.check_extension(_scalar(arg))
    if request == r["KVM_CREATE_VCPU"]:
        # The id is an unsigned long: a negative or address-valued one is out of range.
        return fileno(vm.create_vcpu(_scalar(arg)))
    if request == r["KVM_CREATE_IRQCHIP"]:
        vm.create_irqchip()
        return 0
    raise _not_modelled(request)


def vcpu_ioctl(vcpu: Vcpu, request: int, arg: Any = 0) -> int:
    if vcpu.closed:
        raise closed_fd("vCPU")
    if request == KVM_GET_XSAVE:
        if arg.__class__ is bytearray and len(arg) >= KVM_XSAVE_SIZE:    # the hot path
            vcpu.get_xsave_into(arg)
            return 0
        view = _need(arg, KVM_XSAVE_SIZE, "KVM_GET_XSAVE")
        view[:KVM_XSAVE_SIZE] = vcpu.get_xsave()
        return 0
    if request == KVM_SET_XSAVE:
        vcpu.set_xsave(arg if arg.__class__ is bytearray else _need(arg, 0, "KVM_SET_XSAVE"))
        return 0
    r = _requests()
    if request not in served("vcpu"):
        raise _unserved("vcpu", request)
    if request == r["KVM_GET_XSAVE2"]:
        data = vcpu.get_xsave2()
        view = _need(arg, len(data), "KVM_GET_XSAVE2")
        view[:len(data)] = data
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
    if request == r["KVM_RUN"] and _scalar(arg):
        raise KvmError(errno.EINVAL, "kvm_vcpu_ioctl", "KVM_RUN: arg must be 0")
    raise _not_modelled(request)
