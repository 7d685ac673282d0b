"""The same raw-ioctl script against this machine's /dev/kvm (fcntl.ioctl) and against the
model of this machine (its captured CPUID, the running kernel's version and vendor module),
through the model's fd-level ioctl: every errno and every output byte must agree.

Skips where /dev/kvm is absent or unusable, or the probe cannot capture CPUID. The full
differential suite is a separate piece of work; this is the ABI's core sequence.
"""

from __future__ import annotations

import errno
import fcntl
import os
import pathlib
import platform
import re
import struct
from collections.abc import Callable
from typing import Any

import pytest

from kvmfpu import uapi
from kvmfpu.kvm import Kvm
from kvmfpu.kvm import ioctl as model_ioctl
from kvmfpu.kvm.profiles import NEWEST, parse_version

R = uapi.requests()
Ioctl = Callable[..., Any]


def _real_kvm() -> int:
    try:
        fd = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
    except OSError as exc:
        pytest.skip(f"/dev/kvm: {exc.strerror}")
    try:
        vm = fcntl.ioctl(fd, R["KVM_CREATE_VM"], 0)
        os.close(vm)
    except OSError as exc:
        os.close(fd)
        pytest.skip(f"KVM_CREATE_VM: {exc.strerror}")
    return fd


def _flavor() -> str:
    mods = pathlib.Path("/sys/module")
    for mod, flavor in (("kvm_pvm", "pvm"), ("kvm_intel", "vmx"), ("kvm_amd", "svm")):
        if (mods / mod).exists():
            return flavor
    pytest.skip("no known KVM vendor module loaded")


def _kernel() -> str:
    m = re.match(r"(\d+)\.(\d+)(?:\.(\d+))?", platform.release())
    if not m:
        pytest.skip(f"kernel release {platform.release()!r}")
    text = ".".join(g for g in m.groups() if g)
    return NEWEST if parse_version(text) > parse_version(NEWEST + ".y") else text


def script(do: Ioctl, kvm_fd: int) -> list[tuple[str, object]]:
    out: list[tuple[str, object]] = []

    def rec(name: str, f: Callable[[], object]) -> None:
        try:
            out.append((name, f()))
        except OSError as exc:
            out.append((name, errno.errorcode[exc.errno or 0]))

    small = bytearray(8 + 40)
    struct.pack_into("<I", small, 0, 1)
    rec("GET_SUPPORTED_CPUID nent=1", lambda: do(kvm_fd, R["KVM_GET_SUPPORTED_CPUID"], small))
    buf = bytearray(8 + 40 * 256)
    struct.pack_into("<I", buf, 0, 256)
    do(kvm_fd, R["KVM_GET_SUPPORTED_CPUID"], buf)
    nent = struct.unpack_from("<I", buf)[0]
    entries = bytes(buf[:8 + 40 * nent])
    leaf_d = sorted(entries[8 + 40 * i:8 + 40 * i + 28] for i in range(nent)
                    if struct.unpack_from("<I", entries, 8 + 40 * i)[0] == 0xD)
    out.append(("supported CPUID leaf 0xD", b"".join(leaf_d).hex()))
    for cap in (uapi.KVM_CAP_XSAVE, uapi.KVM_CAP_XCRS, uapi.KVM_CAP_XSAVE2):
        rec(f"CHECK_EXTENSION {cap}", lambda cap=cap: do(kvm_fd, R["KVM_CHECK_EXTENSION"], cap))
    vm = do(kvm_fd, R["KVM_CREATE_VM"], 0)
    vcpu = do(vm, R["KVM_CREATE_VCPU"], 0)

    def get_xsave() -> str:
        b = bytearray(4096)
        do(vcpu, R["KVM_GET_XSAVE"], b)
        return b.hex()

    def set_xsave(b: bytes) -> str:
        do(vcpu, R["KVM_SET_XSAVE"], bytearray(b))
        return "ok"

    def set_xcr0(v: int) -> str:
        x = bytearray(uapi.sizeof("kvm_xcrs"))
        struct.pack_into("<IIIIQ", x, 0, 1, 0, 0, 0, v)
        do(vcpu, R["KVM_SET_XCRS"], x)
        return "ok"

    def msrs(op: str, pairs: list[tuple[int, int]]) -> tuple[int, str]:
        m = bytearray(8 + 16 * len(pairs))
        struct.pack_into("<I", m, 0, len(pairs))
        for i, (index, value) in enumerate(pairs):
            struct.pack_into("<IIQ", m, 8 + 16 * i, index, 0, value)
        return do(vcpu, R[op], m), m.hex()

    fresh = bytes.fromhex(get_xsave())
    out.append(("fresh KVM_GET_XSAVE", fresh.hex()))
    for v in (1, 3, 7):
        rec(f"SET_XCRS {v:#x} before CPUID", lambda v=v: set_xcr0(v))
    ymm = bytearray(fresh)
    struct.pack_into("<Q", ymm, 512, 7)
    ymm[576] = 9
    rec("SET_XSAVE BV=7 before CPUID", lambda: set_xsave(ymm))
    out.append(("GET_XSAVE", get_xsave()))
    bad = bytearray(fresh)
    struct.pack_into("<QQ", bad, 512, 3, 1 << 63)
    rec("SET_XSAVE compacted", lambda: set_xsave(bad))
    bad = bytearray(fresh)
    struct.pack_into("<I", bad, 24, 0xFFFF_FFFF)
    struct.pack_into("<Q", bad, 512, 3)
    rec("SET_XSAVE MXCSR reserved", lambda: set_xsave(bad))
    bad = bytearray(fresh)
    bad[560] = 1                 # header bytes 16-63 are reserved
    rec("SET_XSAVE reserved header byte", lambda: set_xsave(bad))
    do(vcpu, R["KVM_SET_CPUID2"], bytearray(entries))
    small = bytearray(8 + 40)
    struct.pack_into("<I", small, 0, 1)
    rec("GET_CPUID2 nent=1", lambda: do(vcpu, R["KVM_GET_CPUID2"], small))
    for v in (7, 0x27, 0xE7, 0x2FF, 0x3):
        rec(f"SET_XCRS {v:#x}", lambda v=v: set_xcr0(v))
    rec("SET_XSAVE BV=7", lambda: set_xsave(ymm))
    out.append(("GET_XSAVE", get_xsave()))
    x = bytearray(uapi.sizeof("kvm_xcrs"))
    do(vcpu, R["KVM_GET_XCRS"], x)
    out.append(("GET_XCRS", x.hex()))
    rec("GET_MSRS XSS", lambda: msrs("KVM_GET_MSRS", [(0xDA0, 0)]))
    rec("SET_MSRS XSS=0", lambda: msrs("KVM_SET_MSRS", [(0xDA0, 0)]))
    rec("SET_MSRS XFD=0", lambda: msrs("KVM_SET_MSRS", [(0x1C4, 0)]))
    rec("SET_MSRS XFD=bit18", lambda: msrs("KVM_SET_MSRS", [(0x1C4, 1 << 18)]))
    big = bytearray(8 + 16 * 256)
    struct.pack_into("<I", big, 0, 256)
    rec("GET_MSRS nmsrs=256", lambda: do(vcpu, R["KVM_GET_MSRS"], big))
    rec("SET_MP_STATE 42", lambda: do(vcpu, R["KVM_SET_MP_STATE"], bytearray(struct.pack("<I", 42))))
    for fd in (vcpu, vm):
        if fd >= 0 and do is fcntl.ioctl:
            os.close(fd)
    return out


def test_model_agrees_with_this_machines_kvm() -> None:
    from kvmfpu.native.hostcpuid import this_host
    from kvmfpu.native.xsave_probe import probe_unavailable

    real_fd = _real_kvm()
    reason = probe_unavailable()
    if reason:
        os.close(real_fd)
        pytest.skip(f"cannot capture this machine's CPUID: {reason}")
    try:
        real = script(fcntl.ioctl, real_fd)
    finally:
        os.close(real_fd)
    model_kvm = Kvm(this_host(), _kernel(), _flavor())
    model = script(model_ioctl.ioctl, model_kvm.fileno())
    assert [n for n, _ in real] == [n for n, _ in model]
    differences = [(n, r, m) for (n, r), (_, m) in zip(real, model, strict=True) if r != m]
    assert not differences, "\n".join(f"{n}:\n  real  {str(r)[:400]}\n  model {str(m)[:400]}"
                                      for n, r, m in differences)


# KVM_GET_MSR_FEATURE_INDEX_LIST = _IOWR(KVMIO, 0x0a, struct kvm_msr_list) (uapi linux/kvm.h).
KVM_GET_MSR_FEATURE_INDEX_LIST = (3 << 30) | (4 << 16) | (0xAE << 8) | 0x0A


def _msr_list(fd: int, request: int) -> list[int]:
    buf = bytearray(struct.pack("<I", 1024) + bytes(4 * 1024))
    fcntl.ioctl(fd, request, buf)
    n = struct.unpack_from("<I", buf)[0]
    return list(struct.unpack_from(f"<{n}I", buf, 4))


def test_msr_lists_agree_with_this_machines_kvm() -> None:
    """KVM_GET_MSR_INDEX_LIST and KVM_GET_MSR_FEATURE_INDEX_LIST, in order: what VMMs
    save/restore (Firecracker saves the index list and fails a restore on an MSR the
    destination rejects). Expected: what this machine's kernel returns."""
    from kvmfpu.native.hostcpuid import this_host
    from kvmfpu.native.xsave_probe import probe_unavailable

    real_fd = _real_kvm()
    reason = probe_unavailable()
    try:
        if reason:
            pytest.skip(f"cannot capture this machine's CPUID: {reason}")
        index, feature = (_msr_list(real_fd, R["KVM_GET_MSR_INDEX_LIST"]),
                          _msr_list(real_fd, KVM_GET_MSR_FEATURE_INDEX_LIST))
    finally:
        os.close(real_fd)
    model = Kvm(this_host(), _kernel(), _flavor())
    assert [hex(m) for m in model.msr_index_list_all()] == [hex(m) for m in index]
    assert [hex(m) for m in model.msr_feature_index_list()] == [hex(m) for m in feature]
    assert set(model.msr_index_list()) <= set(index)      # the xstate part is a subset
