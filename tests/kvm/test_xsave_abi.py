"""KVM_GET/SET_XSAVE semantics that change between kernel versions: which features a
vCPU's CPUID lets in and out, and how PKRU travels."""

from __future__ import annotations

import struct

import pytest

from kvmfpu.arch import legacy
from kvmfpu.arch import xfeatures as xf
from kvmfpu.core.regfile import area_register
from kvmfpu.kvm import Kvm, KvmError
from kvmfpu.kvm.cpuid import CpuidEntry
from kvmfpu.kvm.vcpu import Vcpu

AVX_ONLY = xf.FPSSE | xf.YMM


def vcpu_with_d0(kvm: Kvm, d0_eax: int) -> Vcpu:
    v = kvm.create_vm().create_vcpu()
    entries = [e._replace(eax=d0_eax, edx=0) if (e.function, e.index) == (0xD, 0) else e
               for e in kvm.get_supported_cpuid()]
    v.set_cpuid2(entries)
    return v


def blob_with(kvm: Kvm, v: Vcpu, bv: int, **regs: int) -> bytearray:
    """A standard-format buffer holding ``regs`` with XSTATE_BV = ``bv``."""
    layout = kvm.host.layout
    b = bytearray(v.gfpu.uabi_size)
    struct.pack_into("<H", b, legacy.FCW, legacy.FCW_INIT)
    struct.pack_into("<I", b, legacy.MXCSR, legacy.MXCSR_INIT)
    struct.pack_into("<Q", b, legacy.XSTATE_BV, bv)
    offsets = {"k1": layout.components[5].offset + 8, "pkru": layout.components[9].offset,
               "xmm0": legacy.XMM_SPACE}
    for name, value in regs.items():
        size = 4 if name == "pkru" else 8 if name == "k1" else 16
        b[offsets[name]:offsets[name] + size] = value.to_bytes(size, "little")
    return b


@pytest.mark.parametrize("kernel, accepted, masked", [
    ("5.15", True, True),        # fill_xsave masks with guest_supported_xcr0
    ("5.17", False, None),       # ad856280ddea: user_xfeatures from CPUID
    ("6.1", False, None),
    ("6.1.60", True, True),      # 8647c52e9504 backport
    ("6.5.9", True, True),
    ("6.6", True, True),
    ("7.3", True, True),
])
def test_features_outside_guest_cpuid(kernel: str, accepted: bool, masked: bool | None) -> None:
    """KVM_SET_XSAVE of AVX-512 state into a vCPU whose CPUID offers only AVX."""
    kvm = Kvm("skylake-sp", kernel)
    v = vcpu_with_d0(kvm, AVX_ONLY)
    buf = blob_with(kvm, v, AVX_ONLY | xf.OPMASK, k1=0xF00D, xmm0=0x77)
    if not accepted:
        with pytest.raises(KvmError) as info:
            v.set_xsave(buf)
        assert info.value.function == "validate_user_xstate_header"
        return
    v.set_xsave(buf)
    out = v.get_xsave()
    bv = struct.unpack_from("<Q", out, legacy.XSTATE_BV)[0]
    assert bool(bv & xf.OPMASK) is not masked
    assert area_register(out, kvm.host.layout, "xmm0") == 0x77
    # The state is kept, only hidden: a CPUID that offers AVX-512 sees it again (6.6+).
    if kernel not in ("5.15",):
        v2 = kvm.create_vm().create_vcpu()
        v2.set_cpuid2(kvm.get_supported_cpuid())
        v2.set_xsave(buf)
        assert area_register(v2.get_xsave(), kvm.host.layout, "k1") == 0xF00D


@pytest.mark.parametrize("kernel", ["5.15", "5.17", "6.1", "6.6", "7.3"])
def test_set_xsave_without_pkru_leaves_vcpu_pkru(kernel: str) -> None:
    """KVM's odd ABI: XSTATE_BV[9]=0 leaves vcpu->arch.pkru untouched (all kernels)."""
    kvm = Kvm("skylake-sp", kernel)
    v = kvm.create_vm().create_vcpu()
    v.set_cpuid2(kvm.get_supported_cpuid())
    v.set_xsave(blob_with(kvm, v, xf.FPSSE | xf.PKRU, pkru=0xC))
    assert v.pkru == 0xC
    v.set_xsave(blob_with(kvm, v, xf.FPSSE))
    assert v.pkru == 0xC
    v.set_sregs(cr4_osxsave=True, cr4_pke=True)
    v.set_xcrs([(0, v.gsx)])
    with v.guest() as g:
        assert g.reg("pkru") == 0xC           # loaded at VM entry from vcpu->arch.pkru


@pytest.mark.parametrize("kernel, written", [
    ("5.15", False), ("5.17", True), ("6.1", True), ("6.1.21", True), ("6.1.22", False),
    ("6.2", True), ("6.3", False), ("6.6", False),
])
def test_get_xsave_pkru_with_bv9_clear(kernel: str, written: bool) -> None:
    """Before b15888840207 (6.3; 6.1.22) KVM_GET_XSAVE wrote vcpu->arch.pkru into the PKRU
    slot even when XSTATE_BV[9] was clear."""
    kvm = Kvm("skylake-sp", kernel)
    v = kvm.create_vm().create_vcpu()
    v.set_cpuid2(kvm.get_supported_cpuid())
    v.set_xsave(blob_with(kvm, v, xf.FPSSE | xf.PKRU, pkru=0xC))
    v.set_xsave(blob_with(kvm, v, xf.FPSSE))
    out = v.get_xsave()
    assert not struct.unpack_from("<Q", out, legacy.XSTATE_BV)[0] & xf.PKRU
    raw = struct.unpack_from("<I", out, kvm.host.layout.components[9].offset)[0]
    assert raw == (0xC if written else 0)


@pytest.mark.parametrize("host", ["skylake-sp", "zen4", "sapphirerapids"])
def test_guest_pkru_comes_back_after_a_run(host: str) -> None:
    """After KVM_RUN the guest fpstate holds the host's PKRU (init_pkru_value, in use), so
    KVM_GET_XSAVE reports XSTATE_BV[9]=1 with the guest's value from vcpu->arch.pkru."""
    kvm = Kvm(host, "6.6")
    v = kvm.create_vm().create_vcpu()
    v.set_cpuid2(kvm.get_supported_cpuid())
    v.set_sregs(cr4_osxsave=True, cr4_pke=True)
    v.set_xcrs([(0, v.gsx)])
    with v.guest() as g:
        g.set_reg("pkru", 0x30)
    assert kvm.hk.cpu.reg("pkru") == 0x5555_5554     # the host's PKRU is back
    out = v.get_xsave()
    assert struct.unpack_from("<Q", out, legacy.XSTATE_BV)[0] & xf.PKRU
    assert area_register(out, kvm.host.layout, "pkru") == 0x30


@pytest.mark.parametrize("kernel", ["5.15", "6.1", "6.6", "7.3"])
def test_sw_reserved_bytes_report_user_max(kernel: str) -> None:
    """fpu_copy_guest_fpstate_to_uabi fills sw_reserved with xstate_fx_sw_bytes (word 0 at
    byte 464 = fpu_user_cfg.max_features); measured 0xe7 on this machine's kvm_pvm. 5.15's
    fill_xsave copies the guest's own legacy area, whose bytes 464-511 are zero."""
    kvm = Kvm("skylake-sp", kernel)
    v = kvm.create_vm().create_vcpu()
    word = struct.unpack_from("<Q", v.get_xsave(), 464)[0]
    assert word == (0 if kernel == "5.15" else kvm.hk.cfg.user_max)


def test_get_cpuid2_runtime_bits() -> None:
    """kvm_update_cpuid_runtime: OSXSAVE follows CR4, CPUID.(0xD,0).EBX follows XCR0."""
    kvm = Kvm("skylake-sp", "6.6")
    v = kvm.create_vm().create_vcpu()
    v.set_cpuid2(kvm.get_supported_cpuid())

    def leaf(f: int, i: int = 0) -> CpuidEntry:
        return next(e for e in v.get_cpuid2() if (e.function, e.index) == (f, i))
    assert not leaf(1).ecx >> 27 & 1 and leaf(0xD).ebx == 576
    v.set_sregs(cr4_osxsave=True)
    v.set_xcrs([(0, AVX_ONLY)])
    assert leaf(1).ecx >> 27 & 1 and leaf(0xD).ebx == 832
    v.set_xcrs([(0, v.gsx)])
    assert leaf(0xD).ebx == kvm.host.layout.standard_size(v.gsx)
