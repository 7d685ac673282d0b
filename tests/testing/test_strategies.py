"""The hypothesis strategies produce what they promise, checked against the model."""

from __future__ import annotations

import struct

from hypothesis import given, settings
from hypothesis import strategies as st

from kvmfpu import Kvm, KvmError
from kvmfpu.arch import xfeatures as xf
from kvmfpu.core import GeneralProtection
from kvmfpu.testing import booted
from kvmfpu.testing import strategies as ks

KVM = Kvm("skylake-sp", "6.6")


@settings(max_examples=150, deadline=None)
@given(ks.valid_xsave("skylake-sp"))
def test_valid_buffers_are_accepted_and_read_back(buf: bytearray) -> None:
    vcpu = KVM.create_vm().create_vcpu()
    vcpu.set_cpuid2(KVM.get_supported_cpuid())
    vcpu.set_xsave(buf)
    out = vcpu.get_xsave()
    bv = struct.unpack_from("<Q", buf, 512)[0]
    assert struct.unpack_from("<Q", out, 512)[0] & bv == bv
    vcpu.vm.close()


@settings(max_examples=200, deadline=None)
@given(ks.near_valid_xsave("skylake-sp"))
def test_near_valid_buffers_break_one_rule(case: tuple[str, bytearray]) -> None:
    how, buf = case
    vcpu = KVM.create_vm().create_vcpu()
    try:
        vcpu.set_xsave(buf)
        accepted = True
    except KvmError:
        accepted = False
    # Breaks KVM checks: rejected. Fields KVM does not check: accepted.
    if how in ("reserved-header", "xcomp-bv", "bv-outside-host", "mxcsr-reserved",
               "supervisor-bv", "dynamic-bv"):
        assert not accepted, how
    elif how in ("fcw-reserved", "mxcsr-mask", "sw-bytes"):
        assert accepted, how
    vcpu.vm.close()


@settings(max_examples=200, deadline=None)
@given(ks.valid_xcr0("sapphirerapids"))
def test_valid_xcr0_values_pass_xsetbv(xcr0: int) -> None:
    booted("sapphirerapids", xcr0=xcr0)


@settings(max_examples=200, deadline=None)
@given(ks.xcr0_values("skylake-sp"))
def test_xcr0_values_mix_valid_and_invalid(xcr0: int) -> None:
    cpu = booted("skylake-sp")
    try:
        cpu.xsetbv(0, xcr0)
    except GeneralProtection:
        assert not (xcr0 & xf.FP and xcr0 & ~cpu.host.supported_xcr0 == 0
                    and (not xcr0 & xf.YMM or xcr0 & xf.SSE)
                    and xcr0 & xf.MPX in (0, xf.MPX)
                    and xcr0 & xf.AVX512 in (0, xf.AVX512)
                    and (not xcr0 & xf.AVX512 or xcr0 & xf.YMM))


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_guest_cpuid_tables(data: st.DataObject) -> None:
    supported = KVM.get_supported_cpuid()
    kind, table = data.draw(ks.guest_cpuids(supported, "skylake-sp"))
    vcpu = KVM.create_vm().create_vcpu()
    vcpu.set_cpuid2(table)
    if kind == "no-xsave":
        assert vcpu.gsx == 0 and not vcpu._cpuid_has("xsave")
    elif kind == "empty":
        assert vcpu.gsx == 0
    else:
        assert vcpu.gsx & xf.FP
    vcpu.vm.close()
