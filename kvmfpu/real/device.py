"""The real /dev/kvm behind the model's interface: the same methods on Kvm, Vm and Vcpu,
each one a real ioctl with the uapi layouts of ``cdefs/`` (through cffi sizes and offsets).

Errors are :class:`~kvmfpu.kvm.errors.KvmError` with the kernel's errno; their reason says
the kernel returned it (``source == "kernel"``): the running kernel does not say why, the
model of it does (``kvmfpu.model_of_running_host()``).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import os
import struct
from collections.abc import Iterable, Sequence
from functools import cached_property
from typing import TYPE_CHECKING, Any, Final, NoReturn

from kvmfpu import uapi
from kvmfpu.kvm.cpuid import KVM_MAX_CPUID_ENTRIES, CpuidEntry, pack_entries, unpack_entries
from kvmfpu.kvm.errors import KvmError
from kvmfpu.kvm.vcpu import SRegs

if TYPE_CHECKING:
    from kvmfpu.cpus.model import HostModel
    from kvmfpu.kvm.profiles import KernelProfile

SYS_arch_prctl: Final = 158          # x86-64
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_XCR = struct.Struct("<IIQ")
_MSR = struct.Struct("<IIQ")
CR0_TS, CR4_OSXSAVE, CR4_PKE = 1 << 3, 1 << 18, 1 << 22


class GuestUnavailable(AttributeError):
    """``RealVcpu.guest``: the real backend runs no guest code, so guest execution is not
    part of the interface the two backends share (``hasattr(vcpu, "guest")`` is False)."""


#: Why (measured on the development machine, Linux 6.18.44 kvm_pvm: KVM_RUN of a vCPU at
#: the reset vector with a memslot holding HLT returns 0 with exit_reason 17,
#: KVM_EXIT_INTERNAL_ERROR, suberror 1, KVM_INTERNAL_ERROR_EMULATION).
GUEST_UNAVAILABLE: Final = (
    "the real backend runs no guest code: kvmfpu has no guest-code runner for /dev/kvm "
    "(KVM_RUN needs guest memory and code the kit does not build), and kvm_pvm, "
    "the development machine's module, runs no real-mode guest at all (KVM_RUN exits with "
    "KVM_EXIT_INTERNAL_ERROR). Run guest instructions on the model (kvmfpu.Kvm, the "
    "kvmfpu_vcpu fixture); mark a kvmfpu_backend test @pytest.mark.kvmfpu(guest=True) to run "
    "it on the model only")


def _name(request: int) -> str:
    return next((k for k, v in uapi.requests().items() if v == request), f"{request:#x}")


class _Fd:
    """An open KVM file descriptor: raw ioctls, KvmError on failure, closed on close()."""

    def __init__(self, fd: int):
        self._fd = fd

    def fileno(self) -> int:
        if self._fd < 0:
            raise KvmError(errno.EBADF, "ioctl", "the file descriptor is closed", source="kernel")
        return self._fd

    def ioctl(self, request: int, arg: Any = 0, mutate_flag: bool = True) -> Any:
        """fcntl.ioctl on this fd, with the kernel's errno as KvmError."""
        try:
            return fcntl.ioctl(self.fileno(), request, arg, mutate_flag)
        except OSError as exc:
            code = exc.errno or errno.EIO
            raise KvmError(code, _name(request),
                           f"the running kernel returned -{errno.errorcode.get(code, code)}",
                           source="kernel") from None

    def close(self) -> None:
        if getattr(self, "_fd", -1) >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # Bound at class creation: module globals may already be gone when __del__ runs at
    # interpreter exit.
    _os_close = staticmethod(os.close)
    _suppress = staticmethod(contextlib.suppress)

    def __del__(self) -> None:
        fd = getattr(self, "_fd", -1)
        if fd >= 0:
            self._fd = -1
            with self._suppress(OSError):
                self._os_close(fd)


class RealKvm(_Fd):
    """/dev/kvm. ``host``, ``kernel`` and ``flavor`` describe the running system (from
    :mod:`kvmfpu.probe`) when asked for."""

    flavor = "real"

    def __init__(self, path: str = "/dev/kvm"):
        try:
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except OSError as exc:
            raise KvmError(exc.errno or errno.ENOENT, "open", f"{path}: {exc.strerror}",
                           source="kernel") from None
        super().__init__(fd)
        self.path = path

    def __repr__(self) -> str:
        return f"RealKvm({self.path!r})"

    @cached_property
    def host(self) -> HostModel:
        """This machine's CPU (its CPUID, read when first asked for)."""
        from kvmfpu import cpus

        return cpus.load("this")

    @cached_property
    def kernel(self) -> KernelProfile:
        """The profile of the running kernel's release (``uname -r``)."""
        from kvmfpu.kvm.profiles import profile
        from kvmfpu.probe import running_release

        return profile(running_release())

    def get_api_version(self) -> int:
        return int(self.ioctl(uapi.const("KVM_GET_API_VERSION")))

    def check_extension(self, cap: int) -> int:
        return int(self.ioctl(uapi.const("KVM_CHECK_EXTENSION"), cap))

    def create_vm(self, vm_type: int = 0) -> RealVm:
        return RealVm(self, int(self.ioctl(uapi.const("KVM_CREATE_VM"), vm_type)))

    def get_supported_cpuid(self, nent: int = KVM_MAX_CPUID_ENTRIES) -> list[CpuidEntry]:
        buf = bytearray(8 + 40 * max(nent, 0))
        _U32.pack_into(buf, 0, nent)
        self.ioctl(uapi.const("KVM_GET_SUPPORTED_CPUID"), buf)
        n = _U32.unpack_from(buf, 0)[0]
        return list(unpack_entries(memoryview(buf)[8:], n))

    def get_msr_index_list(self) -> list[int]:
        buf = bytearray(4 + 4 * 1024)
        _U32.pack_into(buf, 0, 1024)
        self.ioctl(uapi.const("KVM_GET_MSR_INDEX_LIST"), buf)
        n = _U32.unpack_from(buf, 0)[0]
        return [_U32.unpack_from(buf, 4 + 4 * i)[0] for i in range(n)]

    def msr_index_list(self) -> tuple[int, ...]:
        return tuple(self.get_msr_index_list())

    def _device_attr(self, request: str, group: int, attr: int, addr: int) -> None:
        buf = bytearray(uapi.sizeof("kvm_device_attr"))
        struct.pack_into("<IIQQ", buf, 0, 0, group, attr, addr)
        self.ioctl(uapi.const(request), buf)

    def has_device_attr(self, group: int, attr: int) -> None:
        self._device_attr("KVM_HAS_DEVICE_ATTR", group, attr, 0)

    def get_device_attr(self, group: int, attr: int) -> int:
        out = ctypes.c_uint64(0)
        self._device_attr("KVM_GET_DEVICE_ATTR", group, attr, ctypes.addressof(out))
        return int(out.value)

    def arch_prctl(self, option: int, arg: int = 0) -> int:
        """arch_prctl(2) for this process (the guest permissions belong to the process)."""
        libc = ctypes.CDLL(None, use_errno=True)
        out = ctypes.c_uint64(0)
        get = option in (0x1022, 0x1024)     # ARCH_GET_XCOMP_PERM, ARCH_GET_XCOMP_GUEST_PERM
        value = ctypes.addressof(out) if get else arg
        if libc.syscall(SYS_arch_prctl, ctypes.c_int(option), ctypes.c_ulong(value)) != 0:
            code = ctypes.get_errno()
            raise KvmError(code, "arch_prctl",
                           f"the running kernel returned -{errno.errorcode.get(code, code)}",
                           source="kernel")
        return int(out.value) if get else 0


class RealVm(_Fd):
    def __init__(self, kvm: RealKvm, fd: int):
        super().__init__(fd)
        self.kvm = kvm
        self.vcpus: dict[int, RealVcpu] = {}
        self.irqchip = False

    def check_extension(self, cap: int) -> int:
        return int(self.ioctl(uapi.const("KVM_CHECK_EXTENSION"), cap))

    def create_irqchip(self) -> None:
        self.ioctl(uapi.const("KVM_CREATE_IRQCHIP"), 0)
        self.irqchip = True

    def create_vcpu(self, vcpu_id: int | None = None) -> RealVcpu:
        vid = len(self.vcpus) if vcpu_id is None else vcpu_id
        vcpu = RealVcpu(self, vid, int(self.ioctl(uapi.const("KVM_CREATE_VCPU"), vid)))
        self.vcpus[vid] = vcpu
        return vcpu

    def close(self) -> None:
        for v in getattr(self, "vcpus", {}).values():
            v.close()
        super().close()


class RealVcpu(_Fd):
    def __init__(self, vm: RealVm, vcpu_id: int, fd: int):
        super().__init__(fd)
        self.vm = vm
        self.id = vcpu_id
        self.last_msr_failure: str | None = None

    @property
    def kvm(self) -> RealKvm:
        return self.vm.kvm

    @property
    def guest(self) -> NoReturn:
        """Absent: raises :class:`GuestUnavailable` (an AttributeError) saying why."""
        raise GuestUnavailable(f"RealVcpu.guest(): {GUEST_UNAVAILABLE}", name="guest", obj=self)

    # -- xsave --------------------------------------------------------------------------------
    def get_xsave(self) -> bytes:
        buf = bytearray(4096)
        self.ioctl(uapi.const("KVM_GET_XSAVE"), buf)
        return bytes(buf)

    def get_xsave2(self) -> bytes:
        """KVM_GET_XSAVE2 into a buffer of KVM_CHECK_EXTENSION(KVM_CAP_XSAVE2) bytes (what
        the kernel does not write stays zero)."""
        size = self.vm.check_extension(uapi.KVM_CAP_XSAVE2)
        buf = bytearray(max(size, 4096))
        self.ioctl(uapi.const("KVM_GET_XSAVE2"), buf)
        return bytes(buf)

    def set_xsave(self, buf: bytes | bytearray | memoryview) -> None:
        data = bytearray(buf)
        if len(data) < 4096:
            data += bytes(4096 - len(data))    # the kernel reads at least sizeof(kvm_xsave)
        self.ioctl(uapi.const("KVM_SET_XSAVE"), data)

    # -- XCRs ---------------------------------------------------------------------------------
    def get_xcrs(self) -> list[tuple[int, int]]:
        buf = bytearray(uapi.sizeof("kvm_xcrs"))
        self.ioctl(uapi.const("KVM_GET_XCRS"), buf)
        n = min(_U32.unpack_from(buf, 0)[0], 16)
        return [(_XCR.unpack_from(buf, 8 + 16 * i)[0], _XCR.unpack_from(buf, 8 + 16 * i)[2])
                for i in range(n)]

    def set_xcrs(self, xcrs: Sequence[tuple[int, int]], *, flags: int = 0,
                 nr_xcrs: int | None = None) -> None:
        buf = bytearray(uapi.sizeof("kvm_xcrs"))
        struct.pack_into("<II", buf, 0, len(xcrs) if nr_xcrs is None else nr_xcrs, flags)
        for i, (index, value) in enumerate(list(xcrs)[:16]):
            _XCR.pack_into(buf, 8 + 16 * i, index, 0, value)
        self.ioctl(uapi.const("KVM_SET_XCRS"), buf)

    # -- CPUID --------------------------------------------------------------------------------
    def set_cpuid2(self, entries: Sequence[CpuidEntry]) -> None:
        raw = pack_entries(entries)
        buf = bytearray(8) + raw
        _U32.pack_into(buf, 0, len(entries))
        self.ioctl(uapi.const("KVM_SET_CPUID2"), buf)

    def get_cpuid2(self, nent: int = KVM_MAX_CPUID_ENTRIES) -> list[CpuidEntry]:
        buf = bytearray(8 + 40 * max(nent, 0))
        _U32.pack_into(buf, 0, nent)
        self.ioctl(uapi.const("KVM_GET_CPUID2"), buf)
        return list(unpack_entries(memoryview(buf)[8:], _U32.unpack_from(buf, 0)[0]))

    # -- MSRs ---------------------------------------------------------------------------------
    def _msrs(self, request: str, pairs: list[tuple[int, int]]) -> tuple[int, bytearray]:
        buf = bytearray(8 + 16 * len(pairs))
        _U32.pack_into(buf, 0, len(pairs))
        for i, (index, value) in enumerate(pairs):
            _MSR.pack_into(buf, 8 + 16 * i, index, 0, value)
        n = int(self.ioctl(uapi.const(request), buf))
        self.last_msr_failure = None if n == len(pairs) else \
            f"the running kernel stopped at entry {n} (MSR {pairs[n][0]:#x})"
        return n, buf

    def get_msrs(self, indices: Iterable[int]) -> list[tuple[int, int]]:
        pairs = [(i, 0) for i in indices]
        n, buf = self._msrs("KVM_GET_MSRS", pairs)
        return [(_MSR.unpack_from(buf, 8 + 16 * i)[0], _MSR.unpack_from(buf, 8 + 16 * i)[2])
                for i in range(n)]

    def set_msrs(self, entries: Iterable[tuple[int, int]]) -> int:
        return self._msrs("KVM_SET_MSRS", list(entries))[0]

    # -- MP state, INIT -----------------------------------------------------------------------
    def get_mp_state(self) -> int:
        buf = bytearray(4)
        self.ioctl(uapi.const("KVM_GET_MP_STATE"), buf)
        return int(_U32.unpack_from(buf, 0)[0])

    def set_mp_state(self, state: int) -> None:
        self.ioctl(uapi.const("KVM_SET_MP_STATE"), bytearray(_U32.pack(state)))

    def send_init(self) -> None:
        """KVM_SET_VCPU_EVENTS with VALID_SMM and smi.latched_init = 1 (needs the in-kernel
        LAPIC); KVM_GET_MP_STATE or KVM_RUN then emulates the INIT."""
        buf = bytearray(uapi.sizeof("kvm_vcpu_events"))
        self.ioctl(uapi.const("KVM_GET_VCPU_EVENTS"), buf)
        struct.pack_into("<I", buf, uapi.offsetof("kvm_vcpu_events", "flags"),
                         uapi.const("KVM_VCPUEVENT_VALID_SMM"))
        buf[uapi.offsetof("kvm_vcpu_events", "smi", "latched_init")] = 1
        self.ioctl(uapi.const("KVM_SET_VCPU_EVENTS"), buf)

    # -- SREGS --------------------------------------------------------------------------------
    def _raw_sregs(self) -> bytearray:
        buf = bytearray(uapi.sizeof("kvm_sregs"))
        self.ioctl(uapi.const("KVM_GET_SREGS"), buf)
        return buf

    def get_sregs(self) -> SRegs:
        buf = self._raw_sregs()
        cr0 = _U64.unpack_from(buf, uapi.offsetof("kvm_sregs", "cr0"))[0]
        cr4 = _U64.unpack_from(buf, uapi.offsetof("kvm_sregs", "cr4"))[0]
        dpl = buf[uapi.offsetof("kvm_sregs", "cs", "dpl")]
        return SRegs(cr0_ts=bool(cr0 & CR0_TS), cr4_osxsave=bool(cr4 & CR4_OSXSAVE),
                     cr4_pke=bool(cr4 & CR4_PKE), cpl=dpl)

    def set_sregs(self, sregs: SRegs | None = None, **changes: object) -> None:
        """KVM_GET_SREGS, then KVM_SET_SREGS with CR0.TS, CR4.OSXSAVE and CR4.PKE changed
        (CPL is the code segment's DPL and is not changed here)."""
        new = SRegs(**(sregs or self.get_sregs()).__dict__)
        for k, v in changes.items():
            if not hasattr(new, k):
                raise TypeError(f"unknown sreg {k}")
            setattr(new, k, v)
        buf = self._raw_sregs()
        at0, at4 = uapi.offsetof("kvm_sregs", "cr0"), uapi.offsetof("kvm_sregs", "cr4")
        cr0 = _U64.unpack_from(buf, at0)[0]
        cr4 = _U64.unpack_from(buf, at4)[0]
        cr0 = cr0 | CR0_TS if new.cr0_ts else cr0 & ~CR0_TS
        cr4 = cr4 | CR4_OSXSAVE if new.cr4_osxsave else cr4 & ~CR4_OSXSAVE
        cr4 = cr4 | CR4_PKE if new.cr4_pke else cr4 & ~CR4_PKE
        _U64.pack_into(buf, at0, cr0)
        _U64.pack_into(buf, at4, cr4)
        self.ioctl(uapi.const("KVM_SET_SREGS"), buf)
