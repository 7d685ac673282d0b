"""/dev/kvm-level answers: capabilities, KVM_GET_SUPPORTED_CPUID leaf 0xD, the MSR list and
the AMX guest permission's effect on them."""

from __future__ import annotations

import pytest

from kvmfpu import uapi
from kvmfpu.arch import xfeatures as xf
from kvmfpu.core import msrs as msr
from kvmfpu.kvm import Kvm
from kvmfpu.kvm.caps import D1_XFD, D1_XSAVES
from kvmfpu.kvm.cpuid import CpuidEntry
from kvmfpu.kvm.profiles import NAMED
from kvmfpu.kvm.system import ARCH_GET_XCOMP_GUEST_PERM, ARCH_REQ_XCOMP_GUEST_PERM

HOSTS = ("skylake-sp", "sapphirerapids", "zen2", "zen4", "nehalem")


def leaves(kvm: Kvm) -> dict[tuple[int, int], CpuidEntry]:
    return {(e.function, e.index): e for e in kvm.get_supported_cpuid()}


@pytest.mark.parametrize("kernel", NAMED)
@pytest.mark.parametrize("host", HOSTS)
def test_leaf_0xd_follows_kvm_caps(host: str, kernel: str) -> None:
    kvm = Kvm(host, kernel)
    lv = leaves(kvm)
    layout = kvm.host.layout
    if not kvm.hk.cfg.has_xsave:
        assert not any(f == 0xD for f, _ in lv)
        return
    d0 = lv[(0xD, 0)]
    xcr0 = d0.eax | d0.edx << 32
    assert xcr0 == kvm.permitted_xcr0()
    assert d0.ebx == d0.ecx == layout.standard_size(xcr0)
    d1 = lv[(0xD, 1)]
    assert bool(d1.eax & D1_XSAVES) == kvm.caps.xsaves
    assert bool(d1.eax & D1_XFD) == (kvm.caps.xfd and kvm.kernel.has("amx"))
    assert d1.ecx | d1.edx << 32 == kvm.caps.supported_xss
    for b in xf.bits(xcr0 | kvm.caps.supported_xss):
        if b < 2:
            continue
        c, e = layout.components[b], lv[(0xD, b)]
        assert e.eax == c.size and e.edx == 0
        assert e.ebx == (0 if c.supervisor else c.offset)
    # Nothing beyond what is permitted or supported.
    assert not [i for f, i in lv if f == 0xD and i >= 2 and not (xcr0 | kvm.caps.supported_xss) >> i & 1]


@pytest.mark.parametrize("kernel, without, with_perm", [
    ("5.15", 0, 0), ("5.17", 4096, 11008), ("6.1", 4096, 11008), ("6.6", 4096, 11008),
    ("7.3", 4096, 11008)])
def test_cap_xsave2_and_amx_permission(kernel: str, without: int, with_perm: int) -> None:
    kvm = Kvm("sapphirerapids", kernel)
    assert kvm.check_extension(uapi.KVM_CAP_XSAVE2) == without
    d0 = leaves(kvm)[(0xD, 0)]
    assert not d0.eax & xf.XTILEDATA
    # XTILECFG alone from AMX support (5.17) until 55cd57b596e8 (6.4).
    assert bool(d0.eax & xf.XTILECFG) == (kernel in ("5.17", "6.1"))
    if kernel == "5.15":
        return
    # The default permission is fpu_user_cfg.default_features: XTILECFG yes, XTILEDATA no.
    assert kvm.arch_prctl(ARCH_GET_XCOMP_GUEST_PERM) & xf.XTILE == xf.XTILECFG
    kvm.arch_prctl(ARCH_REQ_XCOMP_GUEST_PERM, 18)
    assert kvm.arch_prctl(ARCH_GET_XCOMP_GUEST_PERM) & xf.XTILEDATA
    assert kvm.check_extension(uapi.KVM_CAP_XSAVE2) == with_perm
    d0 = leaves(kvm)[(0xD, 0)]
    assert d0.eax & xf.XTILE == xf.XTILE and d0.ebx == with_perm
    v = kvm.create_vm().create_vcpu()
    # 4096 until KVM_SET_CPUID2 enables XTILEDATA; 5.17.0-5.17.12 started at the default
    # user size instead (d187ba531230, CVE-2022-49557).
    assert v.gfpu.uabi_size == (2816 if kvm.kernel.has("uabi_size_default_bug") else 4096)
    v.set_cpuid2(kvm.get_supported_cpuid())
    assert v.gfpu.uabi_size == with_perm and len(v.get_xsave2()) == with_perm


def test_5_17_0_permission_overwrite_bug() -> None:
    """063452fd94d1: 5.17.0 replaced the permitted set with the request."""
    kvm = Kvm("sapphirerapids", "5.17")
    kvm.arch_prctl(ARCH_REQ_XCOMP_GUEST_PERM, 18)
    assert kvm.arch_prctl(ARCH_GET_XCOMP_GUEST_PERM) == xf.XTILEDATA
    fixed = Kvm("sapphirerapids", "5.18")
    fixed.arch_prctl(ARCH_REQ_XCOMP_GUEST_PERM, 18)
    assert fixed.arch_prctl(ARCH_GET_XCOMP_GUEST_PERM) == fixed.hk.cfg.user_default | xf.XTILEDATA


@pytest.mark.parametrize("host, kernel, expected", [
    ("skylake-sp", "6.6", ()),
    ("sapphirerapids", "6.6", (msr.IA32_XFD, msr.IA32_XFD_ERR)),
    ("sapphirerapids", "6.18", (msr.IA32_XSS, msr.IA32_XFD, msr.IA32_XFD_ERR, msr.IA32_U_CET,
                                msr.IA32_S_CET, msr.IA32_PL0_SSP, msr.IA32_PL1_SSP,
                                msr.IA32_PL2_SSP, msr.IA32_PL3_SSP, msr.IA32_INT_SSP_TAB)),
    ("zen4", "6.18", (msr.IA32_XSS, msr.IA32_U_CET, msr.IA32_S_CET, msr.IA32_PL0_SSP,
                      msr.IA32_PL1_SSP, msr.IA32_PL2_SSP, msr.IA32_PL3_SSP, msr.IA32_INT_SSP_TAB)),
    ("zen2", "6.18", ()),
])
def test_msr_index_list(host: str, kernel: str, expected: tuple[int, ...]) -> None:
    assert tuple(Kvm(host, kernel).get_msr_index_list()) == expected


def test_check_extension_basics() -> None:
    for kernel in NAMED:
        kvm = Kvm("skylake-sp", kernel)
        assert kvm.check_extension(uapi.KVM_CAP_XSAVE) == 1
        assert kvm.check_extension(uapi.KVM_CAP_XCRS) == 1
        assert kvm.create_vm().check_extension(uapi.KVM_CAP_XSAVE) == 1
    old = Kvm("nehalem", "6.6")
    assert old.check_extension(uapi.KVM_CAP_XSAVE) == 1      # always, even without XSAVE
    assert old.check_extension(uapi.KVM_CAP_XCRS) == 0


def test_pvm_flavour_matches_what_was_measured_here() -> None:
    """kvm_pvm on this machine (6.18, Zen 5): no XSAVES, no XSS, XSAVEOPT/XSAVEC/XGETBV1
    filtered out of CPUID.(0DH,1).EAX; XCR0 as the host's (0xe7)."""
    kvm = Kvm("devhost-zen5", "6.18", "pvm")
    lv = leaves(kvm)
    assert lv[(0xD, 1)].eax == 0 and lv[(0xD, 1)].ecx == 0
    assert lv[(0xD, 0)].eax == 0xE7
    assert kvm.caps.supported_xss == 0 and not kvm.caps.xsaves
