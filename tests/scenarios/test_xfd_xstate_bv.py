"""Seed 003: XFD-armed components left in the saved XSTATE_BV (b45f72177594)."""

import pytest

from kvmfpu.arch import xfeatures as xf
from kvmfpu.core import msrs as msr
from kvmfpu.kvm import Kvm
from kvmfpu.kvm.system import ARCH_REQ_XCOMP_GUEST_PERM
from kvmfpu.scenarios import xfd_xstate_bv

BUGGY = ["5.17", "6.1", "6.1.161", "6.6", "6.6.121", "6.12", "6.12.66", "6.18", "6.18.6"]
FIXED = ["6.1.162", "6.6.122", "6.12.67", "6.18.7", "6.19", "7.3"]


@pytest.mark.parametrize("version", BUGGY)
def test_host_nm_before_the_fix(version: str) -> None:
    r = xfd_xstate_bv.run(version)
    a = r.event("A. guest WRMSR IA32_XFD")
    assert a.outcome == "host-oops" and a.vector == 7
    assert "switch_fpu_return" in a.detail and "restore_fpregs_from_fpstate" in a.detail
    assert r.event("B. KVM_SET_XSAVE").ok
    assert r.event("C. KVM_GET_XSAVE2").values["xstate_bv"] & xf.XTILEDATA
    b = r.event("B. KVM_RUN")
    assert b.outcome == "host-oops" and b.vector == 7 and "kvm_load_guest_fpu" in b.detail
    assert r.bug


@pytest.mark.parametrize("version", FIXED)
def test_fixed_no_host_nm_and_bv18_reported_clear(version: str) -> None:
    r = xfd_xstate_bv.run(version)
    assert r.event("A. guest WRMSR IA32_XFD").ok
    tile = r.event("A. guest TILELOADD")
    assert tile.outcome == "#NM" and tile.vector == 7
    assert tile.values["guest_xfd_err"] == xf.XTILEDATA
    assert r.event("A. guest reads tmm0").values["tmm0_intact"] == 0
    assert not r.event("A. KVM_GET_XSAVE2").values["xstate_bv"] & xf.XTILEDATA
    assert r.event("C. KVM_GET_XSAVE2").values["xstate_bv"] & xf.XTILE == xf.XTILECFG
    assert r.event("B. KVM_RUN").ok
    assert not r.bug


def test_without_the_interrupt_the_buggy_kernel_survives() -> None:
    # Near miss for A: the XSAVE at the exit runs under the new XFD and saves BV[18]=0.
    kvm = Kvm("sapphirerapids", "6.18")
    kvm.arch_prctl(ARCH_REQ_XCOMP_GUEST_PERM, 18)
    vcpu = kvm.create_vm().create_vcpu()
    vcpu.set_cpuid2(kvm.get_supported_cpuid())
    vcpu.set_sregs(cr4_osxsave=True)
    with vcpu.guest() as g:
        g.xsetbv(0, vcpu.gsx)
        g.set_reg("tmm0", xfd_xstate_bv.TILE)
        g.wrmsr(msr.IA32_XFD, xf.XTILEDATA)
    bv = int.from_bytes(vcpu.get_xsave2()[512:520], "little")
    assert not bv & xf.XTILEDATA


def test_hosts_without_amx_have_nothing_to_replay() -> None:
    r = xfd_xstate_bv.run("6.18", host="skylake-sp")
    assert not r.events and not r.bug and "no XFD" in r.verdict
