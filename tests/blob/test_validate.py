"""kvmfpu.blob.validate: the verdict is KVM_SET_XSAVE's, on the host, kernel and guest CPU."""

from __future__ import annotations

import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kvmfpu import Kvm, cpus
from kvmfpu.arch import legacy
from kvmfpu.blob.validate import Validator, guest_cpuid
from kvmfpu.kvm.errors import KvmError
from kvmfpu.kvm.profiles import UnknownKernel
from kvmfpu.kvm.system import ARCH_REQ_XCOMP_GUEST_PERM
from kvmfpu.testing import strategies as ks

HOSTS = ("skylake-sp", "sapphirerapids", "zen2", "zen4", "haswell", "devhost-zen5")
KERNELS = ("5.15", "5.17", "6.0", "6.1", "6.6", "6.18")
GUESTS = (None, "haswell", "nehalem", "zen2", "skylake-sp")


def set_xsave_outcome(host: str, kernel: str, guest: str | None, buf: bytes) -> tuple[object, ...]:
    """KVM_SET_XSAVE on a vCPU set up the way a VMM sets it up, independently of Validator:
    the guest CPUID, then (for AMX) the permission, then the ioctl."""
    kvm = Kvm(host, kernel)
    wants = 1 << 18 if guest is None else cpus.load(guest).supported_xcr0
    if kvm.kernel.has("amx") and kvm.caps.supported_xcr0 & wants & (1 << 18):
        kvm.arch_prctl(ARCH_REQ_XCOMP_GUEST_PERM, 18)
    vcpu = kvm.create_vm().create_vcpu()
    vcpu.set_cpuid2(guest_cpuid(kvm, guest))
    data = buf + bytes(max(0, vcpu.gfpu.uabi_size - len(buf)))
    try:
        vcpu.set_xsave(data)
    except KvmError as exc:
        return (False, exc.errno_name, exc.function, exc.reason)
    return (True, None, None, None)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(HOSTS), st.sampled_from(KERNELS), st.sampled_from(GUESTS), st.data())
def test_verdict_is_what_kvm_set_xsave_does(host: str, kernel: str, guest: str | None,
                                            data: st.DataObject) -> None:
    buf = data.draw(ks.xsave_blobs(host))
    v = Validator(host, kernel, guest).check(buf)
    assert (v.accepted, v.errno, v.function, v.reason) == set_xsave_outcome(host, kernel, guest, buf)


def test_the_buffer_is_not_modified() -> None:
    buf = bytearray(4096)
    buf[512] = 0xFF                                 # XSTATE_BV bits the host lacks
    before = bytes(buf)
    Validator("haswell", "6.6").check(buf)
    Validator("haswell", "6.6").check(memoryview(buf))
    assert bytes(buf) == before


def nehalem_blob() -> bytes:
    """What a source host without XSAVE hands over: FXSAVE area, XSTATE_BV = x87|SSE (as
    KVM_GET_XSAVE fills it there), MXCSR default."""
    buf = bytearray(4096)
    struct.pack_into("<HH", buf, 0, legacy.FCW_INIT, 0)
    struct.pack_into("<II", buf, legacy.MXCSR, 0x1F80, 0xFFFF)
    struct.pack_into("<Q", buf, legacy.XSTATE_BV, 3)
    return bytes(buf)


@pytest.mark.parametrize("kernel, accepted", [("5.15", True), ("5.17", False), ("5.19", False),
                                              ("5.19.12", True), ("6.0", True), ("6.6", True)])
def test_seed_002_nehalem_guest_on_a_skylake_host(kernel: str, accepted: bool) -> None:
    v = Validator("skylake-sp", kernel, "nehalem").check(nehalem_blob())
    assert v.accepted is accepted
    if not accepted:
        assert v.errno == "EINVAL" and v.function == "validate_user_xstate_header"
        assert "0x3 (x87|sse)" in (v.reason or "")


def test_guest_cpu_trims_leaf_0xd() -> None:
    kvm = Kvm("sapphirerapids", "6.6")
    table = {(e.function, e.index): e for e in guest_cpuid(kvm, "skylake-sp")}
    d0 = table[(0xD, 0)]
    assert d0.eax | d0.edx << 32 == cpus.load("skylake-sp").supported_xcr0 & kvm.caps.supported_xcr0
    assert (0xD, 17) not in table and (0xD, 18) not in table and (0xD, 9) in table
    no_xsave = {(e.function, e.index): e for e in guest_cpuid(kvm, "nehalem")}
    assert not any(f == 0xD for f, _ in no_xsave) and not no_xsave[(1, 0)].ecx >> 26 & 1


def test_amx_guest_gets_permission_and_the_larger_buffer() -> None:
    v = Validator("sapphirerapids", "6.6")
    assert v.size == 11008                          # KVM_GET_XSAVE2's size for AMX
    short = Validator("sapphirerapids", "6.6").check(bytes(4096))
    assert short.accepted and "padded" in short.note
    assert Validator("sapphirerapids", "6.6", "skylake-sp").size == 4096


def test_unknown_kernel_and_flavour() -> None:
    with pytest.raises(UnknownKernel):
        Validator("skylake-sp", "4.2")
    with pytest.raises(ValueError):
        Validator("zen4", "6.6", flavor="vmx")
