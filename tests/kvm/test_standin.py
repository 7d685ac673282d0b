"""The model as a /dev/kvm stand-in (issue 16): user-address writes, closed fds, threads,
errnos on the wrong fd kind, fcntl.ioctl's argument types, guest memory sizes and the
address space a Kvm takes. Where this machine has a /dev/kvm, each errno is compared with
what the real device gives for the same call; those comparisons skip without one.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import mmap
import os
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from kvmfpu import uapi
from kvmfpu.kvm import Kvm
from kvmfpu.kvm import ioctl as model
from kvmfpu.kvm.errors import HostOops, KvmError
from kvmfpu.kvm.vm import KVM_MEM_MAX_NR_PAGES
from kvmfpu.linux.arena import INITIAL_SIZE

R = uapi.requests()
PAGE = 4096
PROT_NONE = 0


def _errno_of(fn: Callable[[], object]) -> str:
    try:
        fn()
    except OSError as exc:
        return errno.errorcode[exc.errno or 0]
    return "ok"


@pytest.fixture(scope="module")
def real() -> Iterator[tuple[int, int, int]]:
    """(/dev/kvm, VM, vCPU) fds on this machine's KVM, or a skip."""
    try:
        kvm = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
    except OSError as exc:
        pytest.skip(f"/dev/kvm: {exc.strerror}")
    try:
        vm = fcntl.ioctl(kvm, R["KVM_CREATE_VM"], 0)
        vcpu = fcntl.ioctl(vm, R["KVM_CREATE_VCPU"], 0)
    except OSError as exc:
        os.close(kvm)
        pytest.skip(f"/dev/kvm: {exc.strerror}")
    yield kvm, vm, vcpu
    for fd in (vcpu, vm, kvm):
        os.close(fd)


# -- 1. put_user: KVM_GET_DEVICE_ATTR's addr ---------------------------------------------------
class _Pages:
    """Pages mapped with libc's mmap, so their addresses are known."""

    def __init__(self) -> None:
        self.libc = ctypes.CDLL(None, use_errno=True)
        self.libc.mmap.restype = ctypes.c_void_p
        self.libc.mmap.argtypes = [
            ctypes.c_void_p,
            ctypes.c_size_t,
            ctypes.c_int,
            ctypes.c_int,
            ctypes.c_int,
            ctypes.c_long,
        ]
        self.libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
        self.libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        self.maps: list[tuple[int, int]] = []

    def map(self, prot: int, pages: int = 1) -> int:
        addr = self.libc.mmap(
            None, pages * PAGE, mmap.PROT_READ | mmap.PROT_WRITE, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS, -1, 0
        )
        assert addr not in (None, ctypes.c_void_p(-1).value)
        ctypes.memset(addr, 0xA5, pages * PAGE)  # known content, then the protection
        assert self.libc.mprotect(addr, PAGE, prot) == 0
        self.maps.append((addr, pages * PAGE))
        return int(addr)

    def close(self) -> None:
        for addr, size in self.maps:
            self.libc.munmap(addr, size)


@pytest.fixture
def pages() -> Iterator[_Pages]:
    p = _Pages()
    yield p
    p.close()


def _attr(addr: int) -> bytearray:
    return bytearray(struct.pack("<IIQQ", 0, 0, 0, addr))  # KVM_X86_XCOMP_GUEST_SUPP


def _targets(p: _Pages) -> dict[str, int]:
    rw_then_ro = p.map(mmap.PROT_READ | mmap.PROT_WRITE, pages=2)
    p.libc.mprotect(rw_then_ro + PAGE, PAGE, mmap.PROT_READ)
    text = ctypes.cast(p.libc.getpid, ctypes.c_void_p).value
    assert text
    return {
        "read-only page": p.map(mmap.PROT_READ),
        "executable page": p.map(mmap.PROT_READ | mmap.PROT_EXEC),
        "PROT_NONE page": p.map(PROT_NONE),
        "libc text": int(text),
        "kernel address": 0xFFFF_FFFF_8100_0000,
        "non-canonical": 0x0000_8000_0000_0000,
        "NULL": 0,
        "writable page, 8 bytes across into a read-only one": rw_then_ro + PAGE - 4,
    }


def test_get_device_attr_refuses_what_is_not_writable(pages: _Pages) -> None:
    """The model's put_user gives EFAULT and writes nothing where the address is not
    writable user memory (it wrote through /proc/self/mem before, into read-only and text
    pages); expected EFAULT from kvm_x86_dev_get_attr's put_user (and the real device below)."""
    kvm = Kvm("skylake-sp", "6.18")
    for what, addr in _targets(pages).items():
        with pytest.raises(KvmError) as info:
            kvm.ioctl(R["KVM_GET_DEVICE_ATTR"], _attr(addr))
        assert info.value.errno == errno.EFAULT, what
        assert "kvm_x86_dev_get_attr" in info.value.reason
        if addr and addr < 1 << 47 and what != "libc text":
            # Nothing written: the bytes keep the 0xA5 fill (read under PROT_READ again).
            pages.libc.mprotect(addr & ~(PAGE - 1), 2 * PAGE if "across" in what else PAGE, mmap.PROT_READ)
            assert ctypes.string_at(addr, 8) == b"\xa5" * 8, what
    out = ctypes.c_uint64(0)
    kvm.ioctl(R["KVM_GET_DEVICE_ATTR"], _attr(ctypes.addressof(out)))
    assert out.value == kvm.caps.supported_xcr0


class _NoProcessVm:
    """libc as a seccomp filter that refuses process_vm_readv/writev leaves it."""

    @staticmethod
    def _refused(*args: object) -> int:
        ctypes.set_errno(errno.ENOSYS)
        return -1

    process_vm_readv = process_vm_writev = _refused


def test_get_device_attr_without_process_vm_calls(pages: _Pages, monkeypatch: Any) -> None:
    """The /proc/self/maps fallback refuses the same addresses and writes the good one."""
    monkeypatch.setattr(model, "_libc", lambda: _NoProcessVm())
    kvm = Kvm("skylake-sp", "6.18")
    for what, addr in _targets(pages).items():
        assert _errno_of(lambda a=addr: kvm.ioctl(R["KVM_GET_DEVICE_ATTR"], _attr(a))) == "EFAULT", what
    out = ctypes.c_uint64(0)
    kvm.ioctl(R["KVM_GET_DEVICE_ATTR"], _attr(ctypes.addressof(out)))
    assert out.value == kvm.caps.supported_xcr0


def test_get_device_attr_errno_as_the_real_device(real: tuple[int, int, int], pages: _Pages) -> None:
    kvm_fd = real[0]
    model_kvm = Kvm("skylake-sp", "6.18")
    for what, addr in _targets(pages).items():
        got_real = _errno_of(lambda a=addr: fcntl.ioctl(kvm_fd, R["KVM_GET_DEVICE_ATTR"], _attr(a)))
        got_model = _errno_of(lambda a=addr: model_kvm.ioctl(R["KVM_GET_DEVICE_ATTR"], _attr(a)))
        assert (what, got_model) == (what, got_real)


# -- 2. closed VMs and vCPUs -------------------------------------------------------------------
def _fresh_xsave(kvm: Kvm) -> bytes:
    vm = kvm.create_vm()
    try:
        return vm.create_vcpu().get_xsave()
    finally:
        vm.close()


def test_vcpu_of_a_closed_vm_is_ebadf_and_reaches_no_other_vm() -> None:
    """A vCPU of a closed VM answers EBADF (ioctl(2) on a closed fd; RealVm.close closes its
    vCPUs' fds), and the next VM's vCPU, which may reuse its fpstate memory, keeps its own."""
    kvm = Kvm("skylake-sp", "6.18")
    fresh = _fresh_xsave(kvm)
    vm = kvm.create_vm()
    old = vm.create_vcpu()
    fd = old.fileno()
    loaded = bytearray(fresh)
    struct.pack_into("<Q", loaded, 512, 3)
    loaded[160:176] = b"\x5a" * 16  # XMM0
    old.set_xsave(loaded)
    vm.close()
    new = kvm.create_vm().create_vcpu()
    assert new.get_xsave() == fresh
    for call in (
        lambda: old.set_xsave(loaded),
        old.get_xsave,
        old.get_xcrs,
        lambda: old.set_msrs([(0x6E0, 0)]),
        old.get_sregs,
        old.fileno,
        lambda: model.ioctl(fd, R["KVM_SET_XSAVE"], bytearray(loaded)),
        lambda: vm.create_vcpu(1),
        lambda: vm.check_extension(uapi.KVM_CAP_XSAVE),
    ):
        with pytest.raises(KvmError) as info:
            call()
        assert info.value.errno == errno.EBADF
    with pytest.raises(KvmError) as info, old.guest():
        pass
    assert info.value.errno == errno.EBADF
    assert new.get_xsave() == fresh
    vm.close()  # a second close is harmless


def test_closed_vcpu_fd_as_the_real_device(real: tuple[int, int, int]) -> None:
    """Closing a vCPU fd: later ioctls give EBADF; the vCPU lives on in its VM, so creating
    its id again gives EEXIST (both measured on the real device here)."""
    kvm_fd = real[0]
    rvm = fcntl.ioctl(kvm_fd, R["KVM_CREATE_VM"], 0)
    try:
        rvcpu = fcntl.ioctl(rvm, R["KVM_CREATE_VCPU"], 0)
        os.close(rvcpu)
        real_again = _errno_of(lambda: fcntl.ioctl(rvm, R["KVM_CREATE_VCPU"], 0))
        real_closed = _errno_of(lambda: fcntl.ioctl(rvcpu, R["KVM_GET_XSAVE"], bytearray(4096)))
    finally:
        os.close(rvm)
    vm = Kvm("skylake-sp", "6.18").create_vm()
    v = vm.create_vcpu(0)
    fd = v.fileno()
    v.close()
    assert _errno_of(lambda: vm.create_vcpu(0)) == real_again == "EEXIST"
    assert _errno_of(lambda: model.ioctl(fd, R["KVM_GET_XSAVE"], bytearray(4096))) == real_closed == "EBADF"


def test_closed_dev_kvm_fd_leaves_its_vms_working(real: tuple[int, int, int]) -> None:
    """Closing /dev/kvm: its fd gives EBADF, a VM made through it still creates vCPUs and
    their ioctls work (measured on the real device first)."""
    rkvm = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
    rvm = fcntl.ioctl(rkvm, R["KVM_CREATE_VM"], 0)
    os.close(rkvm)
    try:
        real_closed = _errno_of(lambda: fcntl.ioctl(rkvm, R["KVM_GET_API_VERSION"], 0))
        rvcpu = fcntl.ioctl(rvm, R["KVM_CREATE_VCPU"], 0)
        real_after = [
            fcntl.ioctl(rvm, R["KVM_CHECK_EXTENSION"], uapi.KVM_CAP_XSAVE),
            fcntl.ioctl(rvcpu, R["KVM_GET_XSAVE"], bytearray(4096)),
        ]
        os.close(rvcpu)
    finally:
        os.close(rvm)
    kvm = Kvm("skylake-sp", "6.18")
    fd = kvm.fileno()
    vm = kvm.create_vm()
    kvm.close()
    assert _errno_of(lambda: model.ioctl(fd, R["KVM_GET_API_VERSION"], 0)) == real_closed == "EBADF"
    assert _errno_of(lambda: kvm.ioctl(R["KVM_GET_API_VERSION"], 0)) == "EBADF"
    vcpu = vm.create_vcpu()
    assert [
        vm.ioctl(R["KVM_CHECK_EXTENSION"], uapi.KVM_CAP_XSAVE),
        vcpu.ioctl(R["KVM_GET_XSAVE"], bytearray(4096)),
    ] == real_after


# -- 3. threads --------------------------------------------------------------------------------
@pytest.fixture
def fast_switches() -> Iterator[None]:
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # thread switches inside ioctls, where tears happen
    yield
    sys.setswitchinterval(old)


def test_threads_on_two_vcpus_share_no_core_state(fast_switches: None) -> None:
    """Two threads, each running its own vCPU of one VM (guest register writes, KVM_RUN,
    KVM_GET/SET_XSAVE, an XFD MSR round trip on AMX): every result is that vCPU's own and no
    HostOops is reported (KVM serialises each vCPU's ioctls on vcpu->mutex; the model runs
    them on one emulated core, in turns)."""
    kvm = Kvm("sapphirerapids", "6.18")
    kvm.arch_prctl(0x1025, 18)  # ARCH_REQ_XCOMP_GUEST_PERM
    supported = kvm.get_supported_cpuid()
    vm = kvm.create_vm()
    vcpus = [vm.create_vcpu(i) for i in range(2)]
    for v in vcpus:
        v.set_cpuid2(supported)
        v.set_sregs(cr4_osxsave=True)
    errors: list[BaseException] = []
    rounds = 150

    def hammer(i: int) -> None:
        v = vcpus[i]
        value = (i + 1) * 0x0101_0101
        try:
            for n in range(rounds):
                with v.guest() as g:
                    g.xsetbv(0, 0xE7 | 0x60000 if n % 2 else 0xE7)
                    g.set_reg("zmm7", value << 64 | n)
                    g.set_reg("xmm1", value)
                blob = v.get_xsave2()
                assert struct.unpack_from("<Q", blob, 160 + 16)[0] == value, (i, n)
                v.set_xsave(blob)
                assert v.set_msrs([(0x1C4, 0x40000 * (n % 2))]) == 1  # IA32_XFD
                assert v.get_xsave2() == blob, (i, n)
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=hammer, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not [e for e in errors if isinstance(e, HostOops)], errors
    assert not errors, errors


def test_threads_on_one_vcpu_never_tear_kvm_get_xsave(fast_switches: None) -> None:
    """One thread runs the guest (KVM_RUN: two register writes per run), others read and
    load the vCPU's state: each ioctl waits for the run to end (vcpu->mutex), so every
    KVM_GET_XSAVE holds both writes of one run or neither, and none fails with "in KVM_RUN"."""
    kvm = Kvm("skylake-sp", "6.18")
    v = kvm.create_vm().create_vcpu()
    v.set_cpuid2(kvm.get_supported_cpuid())
    v.set_sregs(cr4_osxsave=True)
    with v.guest() as g:
        g.xsetbv(0, 7)
    stop = threading.Event()
    errors: list[BaseException] = []

    def runner() -> None:
        n = 0
        try:
            while not stop.is_set():
                n += 1
                with v.guest() as g:
                    g.set_reg("xmm3", n)
                    g.set_reg("ymm5", n << 128)
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    def loader() -> None:
        try:
            while not stop.is_set():
                v.set_xsave(v.get_xsave())
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=runner), threading.Thread(target=loader)]
    for t in threads:
        t.start()
    pairs = set()
    deadline = time.monotonic() + 10
    try:
        # Reads until the runs have visibly interleaved with them (the lock is not fair: a
        # short sleep lets the runner take it between two reads on a loaded machine).
        while len(pairs) < 8 and time.monotonic() < deadline and not errors:
            blob = v.get_xsave()
            xmm3 = int.from_bytes(blob[160 + 3 * 16 : 160 + 4 * 16], "little")
            ymm5_hi = int.from_bytes(blob[576 + 5 * 16 : 576 + 6 * 16], "little")
            pairs.add((xmm3, ymm5_hi))
            time.sleep(0.0002)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert not errors, errors
    assert len(pairs) > 1  # the runs did interleave with reads
    assert all(x == y for x, y in pairs), sorted(p for p in pairs if p[0] != p[1])[:5]


# -- 4. wrong fd kinds, argument types ---------------------------------------------------------
def _arg_for(request: int) -> Any:
    size = request >> 16 & 0x3FFF
    return bytearray(max(size, 8) + 64) if size else 0


def _wrong_kinds() -> list[tuple[str, str]]:
    return [
        (name, kind)
        for name, number in R.items()
        for kind in ("system", "vm", "vcpu")
        if number not in model.served(kind)
    ]


def _model_fds() -> dict[str, Any]:
    kvm = Kvm("skylake-sp", "6.18")
    vm = kvm.create_vm()
    return {"system": kvm, "vm": vm, "vcpu": vm.create_vcpu()}


@pytest.mark.parametrize(("name", "kind"), _wrong_kinds())
def test_wrong_fd_kind_is_the_handlers_default_errno(name: str, kind: str) -> None:
    """Not ENOSYS: kvm_arch_dev_ioctl and kvm_arch_vcpu_ioctl's default is -EINVAL,
    kvm_arch_vm_ioctl's -ENOTTY (virt/kvm/kvm_main.c, arch/x86/kvm/x86.c; measured below)."""
    obj = _model_fds()[kind]
    expect = {"system": "EINVAL", "vm": "ENOTTY", "vcpu": "EINVAL"}[kind]
    assert _errno_of(lambda: obj.ioctl(R[name], _arg_for(R[name]))) == expect


def test_wrong_fd_kind_errnos_as_the_real_device(real: tuple[int, int, int]) -> None:
    fds = dict(zip(("system", "vm", "vcpu"), real, strict=True))
    objs = _model_fds()
    pairs = _wrong_kinds()
    assert len(pairs) > 40
    for name, kind in pairs:
        number = R[name]
        got_real = _errno_of(lambda n=number, k=kind: fcntl.ioctl(fds[k], n, _arg_for(n)))
        got_model = _errno_of(lambda n=number, k=kind: objs[k].ioctl(n, _arg_for(n)))
        assert (name, kind, got_model) == (name, kind, got_real)


def _scalar_calls(do: Callable[..., Any], kvm_fd: Any) -> list[tuple[str, object]]:
    """fcntl.ioctl's argument conversions on int-valued /dev/kvm ioctls."""
    out: list[tuple[str, object]] = []
    api, ext = R["KVM_GET_API_VERSION"], R["KVM_CHECK_EXTENSION"]
    cases: list[tuple[str, int, Any, bool]] = [
        ("bool", api, True, True),
        ("-1", ext, -1, True),
        ("2**31", ext, 2**31, True),
        ("-2**31-1", ext, -(2**31) - 1, True),
        ("float", ext, 1.5, True),
        ("None", ext, None, True),
        ("str", ext, "\u00e9", True),
        ("bytes", ext, b"ab", True),
        ("read-only memoryview", ext, memoryview(b"abc"), True),
        ("buffer to API_VERSION", api, bytearray(8), True),
        ("api arg 1", api, 1, True),
        ("request + 2**32", api + 2**32, 0, True),
        ("request 2**64", 2**64, 0, True),
        ("request -1", -1, 0, True),
        ("bytes > 1024", R["KVM_GET_SUPPORTED_CPUID"], bytes(2000), True),
        ("bytearray > 1024, mutate_flag=False", R["KVM_GET_SUPPORTED_CPUID"], bytearray(2000), False),
        ("mmap size", R["KVM_GET_VCPU_MMAP_SIZE"], 0, True),
        ("mmap size arg 1", R["KVM_GET_VCPU_MMAP_SIZE"], 1, True),
    ]
    for label, request, arg, mutate in cases:
        try:
            out.append((label, do(kvm_fd, request, arg, mutate)))
        except OSError as exc:
            out.append((label, errno.errorcode[exc.errno or 0]))
        except (TypeError, ValueError, OverflowError) as exc:
            out.append((label, type(exc).__name__))
    return out


def test_argument_types_as_fcntl(real: tuple[int, int, int]) -> None:
    """The same conversions through fcntl.ioctl on /dev/kvm and through the model."""
    kvm = Kvm("skylake-sp", "6.18")

    class FileLike:  # fcntl takes any object with fileno()
        def __init__(self, fd: int) -> None:
            self.fd = fd

        def fileno(self) -> int:
            return self.fd

    got_real = _scalar_calls(fcntl.ioctl, FileLike(real[0]))
    got_model = _scalar_calls(model.ioctl, FileLike(kvm.fileno()))
    assert got_model == got_real


def test_argument_types_without_a_device() -> None:
    """The conversions the real device showed (test_argument_types_as_fcntl), held without
    one: OverflowError outside a C int, TypeError for a float or None, a str travels as
    UTF-8 bytes, a copy longer than IOCTL_BUFSZ is a ValueError."""
    kvm = Kvm("skylake-sp", "6.18")
    got = dict(_scalar_calls(model.ioctl, kvm.fileno()))
    assert got["2**31"] == got["-2**31-1"] == "OverflowError"
    assert got["float"] == got["None"] == "TypeError"
    assert got["str"] == "\u00e9".encode() and got["bytes"] == b"ab"
    assert got["bytes > 1024"] == got["bytearray > 1024, mutate_flag=False"] == "ValueError"
    assert got["request + 2**32"] == 12 and got["request 2**64"] == got["request -1"] == "EINVAL"
    assert got["api arg 1"] == got["buffer to API_VERSION"] == got["bool"] == "EINVAL"
    assert got["mmap size"] == 3 * PAGE


def test_struct_arguments_in_every_buffer_kind() -> None:
    """A struct may come as a bytearray, a writable memoryview, an array or an mmap (filled
    in place), or as bytes / mutate_flag=False (a filled copy comes back)."""
    import array

    kvm = Kvm("skylake-sp", "6.18")
    v = kvm.create_vm().create_vcpu()
    want = v.get_xsave()
    for buf in (
        bytearray(4096),
        memoryview(bytearray(4096)),
        array.array("Q", bytes(4096)),
        mmap.mmap(-1, 4096),
    ):
        assert v.ioctl(R["KVM_GET_XSAVE"], buf) == 0
        assert bytes(buf) == want
    mp = bytes(4)
    assert v.ioctl(R["KVM_GET_MP_STATE"], mp) == struct.pack("<I", 0)
    assert v.ioctl(R["KVM_GET_MP_STATE"], bytearray(4), False) == struct.pack("<I", 0)
    with pytest.raises(KvmError) as info:
        v.ioctl(R["KVM_GET_XSAVE"], 0)  # NULL: copy_to_user faults
    assert info.value.errno == errno.EFAULT


# -- memory_size and the address space ---------------------------------------------------------
@pytest.mark.parametrize(
    ("size", "outcome"),
    [
        (-1, ValueError),
        (1.5, ValueError),
        ("64K", ValueError),
        (True, ValueError),
        (None, ValueError),
        (PAGE + 1, errno.EINVAL),
        ((KVM_MEM_MAX_NR_PAGES + 1) * PAGE, errno.EINVAL),
        (1 << 41, errno.ENOMEM),
        (0, None),
        (PAGE, None),
    ],
)
def test_create_vm_memory_size(size: Any, outcome: Any) -> None:
    """__kvm_set_memory_region: memory_size a multiple of PAGE_SIZE, at most
    KVM_MEM_MAX_NR_PAGES pages (-EINVAL); more than the VMM can map is -ENOMEM from its mmap;
    a value that is no byte count is a ValueError."""
    kvm = Kvm("skylake-sp", "6.18")
    if outcome is None:
        vm = kvm.create_vm(memory_size=size)
        assert len(vm.memory) == size
    elif outcome is ValueError:
        with pytest.raises(ValueError, match="memory_size"):
            kvm.create_vm(memory_size=size)
    else:
        with pytest.raises(KvmError) as info:
            kvm.create_vm(memory_size=size)
        assert info.value.errno == outcome


def test_arena_grows_by_need_and_keeps_everything() -> None:
    """The arena starts small and moves to larger mappings as vCPUs need it: state written
    before a move is still there after it (vCPU fpstates, guest memory, the core's view)."""
    kvm = Kvm("sapphirerapids", "6.18")
    kvm.arch_prctl(0x1025, 18)
    supported = kvm.get_supported_cpuid()
    vm = kvm.create_vm()
    first = vm.create_vcpu()
    first.set_cpuid2(supported)
    first.set_sregs(cr4_osxsave=True)
    vm.memory[100:108] = b"guestmem"
    with first.guest() as g:
        g.xsetbv(0, 0xE7)
        g.set_reg("zmm9", 0xC0FFEE << 300)
    before = first.get_xsave2()
    start = kvm.hk.arena.size
    assert start == INITIAL_SIZE
    n = 1
    while kvm.hk.arena.size == start:
        v = vm.create_vcpu(n)
        v.set_cpuid2(supported)  # each gets an 11 KB AMX fpstate
        n += 1
    assert kvm.hk.arena.size > start and n < 4096
    assert first.get_xsave2() == before
    assert bytes(vm.memory[100:108]) == b"guestmem"
    with first.guest() as g:
        g.xsave(0x1000, 0xE7)  # the core writes the new mapping
        assert g.reg("zmm9") == 0xC0FFEE << 300
    assert struct.unpack_from("<Q", vm.memory, 0x1000 + 512)[0] & 0x40  # ZMM_Hi256 saved
    assert kvm.hk.cpu.memory.obj is kvm.hk.arena.map


_UNDER_4G = """
import resource, sys
limit = 4 << 30
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
from kvmfpu.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_a_command_runs_under_ulimit_v_4g(tmp_path: Any) -> None:
    """`kvmfpu validate` (a Kvm, a VM, a vCPU) under RLIMIT_AS = 4 GiB: it failed with ENOMEM
    while each Kvm mapped a 4 GiB arena up front."""
    blob = Kvm("skylake-sp", "6.18").create_vm().create_vcpu().get_xsave()
    path = tmp_path / "fresh.bin"
    path.write_bytes(blob)
    done = subprocess.run(
        [sys.executable, "-c", _UNDER_4G, "validate", "--host", "skylake-sp", "--kernel", "6.18", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
    )
    assert done.returncode == 0, done.stdout + done.stderr
