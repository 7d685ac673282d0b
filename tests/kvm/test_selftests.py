"""Ports of the KVM selftests state_test, xcr0_cpuid_test, amx_test (XFD and save/restore
parts) and xss_msr_test (tools/testing/selftests/kvm/x86/), run against the model on every
profile where they apply. Guest code runs as Guest actions; the host side uses the same
ioctl sequences as the selftest library (kvmfpu.testing.selftest).

Where a profile predates the fix a test was written for, the port asserts the failure the
original would report, so the test also shows which kernels it catches.
"""

from __future__ import annotations

import struct

import pytest

from kvmfpu.arch import xfeatures as xf
from kvmfpu.core import msrs as msr
from kvmfpu.core.faults import DeviceNotAvailable, GeneralProtection
from kvmfpu.kvm import HostOops, Kvm, KvmError
from kvmfpu.kvm.caps import D1_XFD, D1_XSAVES
from kvmfpu.kvm.profiles import NAMED
from kvmfpu.kvm.vcpu import Vcpu
from kvmfpu.testing import selftest as st

HOSTS = ("skylake-sp", "sapphirerapids", "zen2", "zen4")
CC = bytes([0xCC]) * 64


def create_vcpu(kvm: Kvm) -> Vcpu | None:
    """vm_create_with_one_vcpu, or None where it cannot succeed: from 5.17 until 55cd57b596e8
    (6.4) KVM_GET_SUPPORTED_CPUID reports XTILECFG without permission for XTILEDATA, and the
    library's KVM_SET_XCRS of that XCR0 fails (the pair check of 86aff7a47992)."""
    supported = st.supported_xcr0(kvm)
    if supported & xf.XTILE == xf.XTILECFG:
        with pytest.raises(KvmError) as info:
            st.vm_create_with_one_vcpu(kvm)
        assert info.value.function == "__kvm_set_xcr" and "XTILECFG and XTILEDATA" in str(info.value)
        assert not kvm.kernel.has("filter_xtilecfg_without_perm")
        return None
    return st.vm_create_with_one_vcpu(kvm)


@pytest.fixture(params=[(h, k) for h in HOSTS for k in NAMED], ids=lambda p: f"{p[0]}-{p[1]}")
def made(request: pytest.FixtureRequest) -> tuple[Kvm, Vcpu]:
    """A vCPU as vm_create_with_one_vcpu leaves it, on every host with every profile."""
    kvm = Kvm(*request.param)
    vcpu = create_vcpu(kvm)
    if vcpu is None:
        pytest.skip("vm_create_with_one_vcpu fails here as it does on the real kernel "
                    "(XTILECFG offered without XTILEDATA; checked in create_vcpu)")
    return kvm, vcpu


def cpuid_entry(kvm: Kvm, leaf: int, sub: int = 0) -> tuple[int, int, int, int]:
    e = next(e for e in kvm.get_supported_cpuid() if (e.function, e.index) == (leaf, sub))
    return e.eax, e.ebx, e.ecx, e.edx


# -- state_test ------------------------------------------------------------------------------

def _state_test_guest(vcpu: Vcpu) -> dict[str, int]:
    """GUEST_SYNC(2)'s state: dirty every supported, off-by-default-excluded component."""
    kvm = vcpu.kvm
    supported = st.supported_xcr0(kvm)
    wrote: dict[str, int] = {}
    pku = bool(supported & xf.PKRU)
    vcpu.set_sregs(cr4_pke=pku)
    with vcpu.guest() as g:
        def put(name: str, value: int) -> None:
            g.set_reg(name, value)
            wrote[name] = value
        assert supported & xf.FPSSE == xf.FPSSE
        put("fsw", 7 << 11)                                  # FINCSTP from TOP 0
        put("xmm0", int.from_bytes(CC[:16], "little"))
        if supported & xf.YMM:
            put("ymm0", int.from_bytes(CC[:32], "little"))
        if supported & xf.AVX512 == xf.AVX512:
            put("k1", (1 << 64) - 1)
            put("zmm0", int.from_bytes(CC, "little"))
            put("zmm16", int.from_bytes(CC, "little"))
        if supported & xf.MPX:
            assert supported & xf.MPX == xf.MPX
            put("bnd1", (0xFFFF_FFFF << 64) | 10)
        if pku:
            put("pkru", 0xFFFF_FFFF)
    return wrote


def test_state_test(made: tuple[Kvm, Vcpu]) -> None:
    kvm, vcpu = made
    wrote = _state_test_guest(vcpu)
    state = st.vcpu_save_state(vcpu)
    new = st.vm_recreate_with_one_vcpu(kvm)
    st.vcpu_load_state(new, state)

    # What the guest wrote survives the move into the new VM.
    with new.guest() as g:
        for name, value in wrote.items():
            assert g.reg(name) == value, name

    # The dummy vCPU: no KVM_SET_CPUID2, no SREGS, no XCRS (d7b8762ec4a3, afb2c7e27a7f).
    buf = bytearray(state.xsave)
    original_bv = struct.unpack_from("<Q", buf, 512)[0]
    dummy = new.vm.create_vcpu(1)
    dummy.set_xsave(buf)
    struct.pack_into("<Q", buf, 512, st.supported_xcr0(kvm))
    dummy.set_xsave(buf)
    dummy.set_cpuid2([])
    assert dummy.get_cpuid2(0) == []
    if kvm.kernel.has("user_xfeatures_from_cpuid"):
        # 5.17-6.5: user_xfeatures follows the empty CPUID (ad856280ddea) and the supported
        # features are refused: the ABI break the test was written for (fixed by
        # 8647c52e9504 in 6.6). The original aborts here.
        with pytest.raises(KvmError) as info:
            dummy.set_xsave(buf)
        assert info.value.function == "validate_user_xstate_header"
        return
    dummy.set_xsave(buf)
    struct.pack_into("<Q", buf, 512, original_bv)
    dummy.set_xsave(buf)


# -- xcr0_cpuid_test ---------------------------------------------------------------------------

def _check_xfeature_rules(supported: int) -> None:
    def requires(x: int, d: int) -> None:
        if supported & x == x:
            assert supported & (x | d) == x | d
    def all_or_none(s: int) -> None:
        assert supported & s in (0, s)
    requires(xf.YMM, xf.SSE)
    all_or_none(xf.MPX)
    requires(xf.AVX512, xf.SSE | xf.YMM)
    all_or_none(xf.AVX512)
    all_or_none(xf.XTILE)


def test_xcr0_cpuid_test(made: tuple[Kvm, Vcpu]) -> None:
    kvm, vcpu = made
    supported = st.supported_xcr0(kvm)
    guest_cpuid = next(e for e in vcpu.get_cpuid2() if (e.function, e.index) == (0xD, 0))
    assert guest_cpuid.eax | guest_cpuid.edx << 32 == supported
    _check_xfeature_rules(supported)
    with vcpu.guest() as g:
        assert g.xgetbv(0) == supported
        g.xsetbv(0, xf.FP)
        g.xsetbv(0, supported)
        for i in range(64):
            if supported >> i & 1:
                continue
            with pytest.raises(GeneralProtection) as info:
                g.xsetbv(0, supported | 1 << i)
            assert info.value.vector == 13
        assert g.xgetbv(0) == supported


# -- amx_test --------------------------------------------------------------------------------

TILECFG = bytes([1]) + bytes(15) + struct.pack("<16H", *([64] * 8 + [0] * 8)) + \
    bytes([16] * 8 + [0] * 8)
TILEDATA = bytes((i * 37 + 11) & 0xFF | 1 for i in range(1024))
XSTATE_GPA = 0x4000
AMX_KERNELS = [k for k in NAMED if k not in ("5.15",)] + ["6.18.7", "6.19"]


def _sync(vcpu: Vcpu, save_restore: bool = True) -> Vcpu:
    return st.save_restore(vcpu) if save_restore else vcpu


@pytest.mark.parametrize("kernel", AMX_KERNELS)
def test_amx_test(kernel: str) -> None:
    kvm = Kvm("sapphirerapids", kernel)
    skip = st.vm_xsave_require_permission(kvm, xf.XFeature.XTILEDATA)
    assert skip is None, skip
    d1 = cpuid_entry(kvm, 0xD, 1)[0]
    assert d1 & D1_XFD and cpuid_entry(kvm, 0xD, 18)[2] & 4
    vcpu = st.vm_create_with_one_vcpu(kvm)
    xsave_restore_size = cpuid_entry(kvm, 0xD, 0)[2]
    fixed = kvm.kernel.has("xfd_clears_xstate_bv")
    if kvm.kernel.has("get_xsave2_amx_oops_bug"):
        # 6.0.0-6.0.6: the first save (KVM_GET_XSAVE2 with XSTATE_BV[18]=0) oopses the host
        # (471f0aa7fa64).
        with pytest.raises(HostOops):
            st.vcpu_save_state(vcpu)
        return

    # check_xtile_info
    with vcpu.guest() as g:
        assert g.xgetbv(0) & xf.XTILE == xf.XTILE
    runtime = {(e.function, e.index): e for e in vcpu.get_cpuid2()}
    assert 0 < runtime[(0xD, 0)].ebx <= 8192 + 4096
    assert (runtime[(0xD, 18)].eax, runtime[(0xD, 18)].ebx) == (8192, 2816)
    assert runtime[(0x1D, 0)].eax >= 1
    t1 = runtime[(0x1D, 1)]
    assert (t1.ebx >> 16, t1.eax >> 16, t1.ebx & 0xFFFF, t1.ecx & 0xFFFF) == (8, 1024, 64, 16)
    vcpu = _sync(vcpu)

    with vcpu.guest() as g:
        g.wrmsr(msr.IA32_XFD, 0)
    vcpu = _sync(vcpu)
    with vcpu.guest() as g:
        assert g.rdmsr(msr.IA32_XFD) == 0
        g.set_reg("tilecfg", TILECFG)                          # LDTILECFG
    vcpu = _sync(vcpu)
    with vcpu.guest() as g:
        g.set_reg("tmm0", TILEDATA)                            # TILELOADD
    tile_state = st.vcpu_save_state(vcpu)                      # SAVE_TILEDATA
    amx_offset = xsave_restore_size - 8 * 1024
    assert tile_state.xsave[amx_offset:amx_offset + 1024] == TILEDATA   # COMPARE_TILEDATA
    vcpu = _sync(vcpu)

    with vcpu.guest() as g:
        g.wrmsr(msr.IA32_XFD, xf.XTILEDATA)
    # RESTORE_TILEDATA: the host loads XSTATE_BV[18]=1 while the guest's XFD[18]=1.
    vcpu.set_xsave(tile_state.xsave)
    if not fixed:
        # Before b45f72177594 the next KVM_RUN's XRSTOR takes #NM in the host.
        with pytest.raises(HostOops) as info, vcpu.guest():
            pass
        assert isinstance(info.value.fault, DeviceNotAvailable)
        return
    assert not struct.unpack_from("<Q", vcpu.get_xsave2(), 512)[0] & xf.XTILEDATA
    vcpu = _sync(vcpu)

    with vcpu.guest() as g:
        g.wrmsr(msr.IA32_XFD, 0)
        g.tilerelease()
    vcpu = _sync(vcpu)
    mem = vcpu.vm.memory
    with vcpu.guest() as g:
        for xfd in (0, xf.XTILEDATA):
            g.wrmsr(msr.IA32_XFD, xfd)
            struct.pack_into("<Q", mem, XSTATE_GPA + 512, xf.XTILEDATA)
            g.xsavec(XSTATE_GPA, xf.XTILEDATA)
            bv, xcomp = struct.unpack_from("<QQ", mem, XSTATE_GPA + 512)
            assert not bv & xf.XTILEDATA and xcomp & xf.XTILEDATA
    vcpu = _sync(vcpu)

    with vcpu.guest() as g:
        assert g.rdmsr(msr.IA32_XFD) == xf.XTILEDATA
        g.wrmsr(msr.IA32_XFD, 0)
        g.set_reg("tilecfg", TILECFG)
        g.wrmsr(msr.IA32_XFD, xf.XTILEDATA)
        with pytest.raises(DeviceNotAvailable) as nm:
            g.use(xf.XTILEDATA, "TILELOADD")
        assert nm.value.vector == 7
        assert g.rdmsr(msr.IA32_XFD_ERR) == xf.XTILEDATA
        assert g.rdmsr(msr.IA32_XFD) == xf.XTILEDATA
    vcpu = _sync(vcpu)
    with vcpu.guest() as g:
        # XFD_ERR and XFD survive a save/restore into a new VM.
        assert g.rdmsr(msr.IA32_XFD_ERR) == xf.XTILEDATA
        assert g.rdmsr(msr.IA32_XFD) == xf.XTILEDATA
        g.wrmsr(msr.IA32_XFD_ERR, 0)
        g.wrmsr(msr.IA32_XFD, 0)
    vcpu = _sync(vcpu)
    with vcpu.guest() as g:
        g.set_reg("tmm0", TILEDATA)
        assert g.reg("tmm0") == int.from_bytes(TILEDATA, "little")
    vcpu = _sync(vcpu)
    with vcpu.guest() as g:
        assert g.reg("tmm0") == int.from_bytes(TILEDATA, "little")


def test_amx_test_skips_without_amx() -> None:
    assert st.vm_xsave_require_permission(Kvm("skylake-sp", "6.6"), 18) is not None
    assert "5.17" in str(st.vm_xsave_require_permission(Kvm("sapphirerapids", "5.15"), 18))


# -- xss_msr_test ------------------------------------------------------------------------------

def test_xss_msr_test(made: tuple[Kvm, Vcpu]) -> None:
    kvm, vcpu = made
    if not cpuid_entry(kvm, 0xD, 1)[0] & D1_XSAVES:
        pytest.skip("KVM_GET_SUPPORTED_CPUID lacks XSAVES")
    assert vcpu.get_msrs([msr.IA32_XSS]) == [(msr.IA32_XSS, 0)]
    assert vcpu.set_msrs([(msr.IA32_XSS, 0)]) == 1
    assert vcpu.get_msrs([msr.IA32_XSS]) == [(msr.IA32_XSS, 0)]
    in_list = msr.IA32_XSS in kvm.get_msr_index_list()
    accepted = []
    for i in range(64):
        r = vcpu.set_msrs([(msr.IA32_XSS, 1 << i)])
        assert r in (0, 1)
        if r:
            assert in_list
            accepted.append(i)
    # Before 6.18 KVM supports no XSS bit; from 6.18 the CET bits a CET host offers.
    expected = [i for i in (11, 12) if kvm.caps.supported_xss >> i & 1] \
        if kvm.kernel.has("cet") else []
    assert accepted == expected
