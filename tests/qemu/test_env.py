"""kvmfpu.qemu.env: QEMU's fields and its two conversions with KVM's buffer."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from kvmfpu import cpus
from kvmfpu.arch import xfeatures as xf
from kvmfpu.blob import decode as dec
from kvmfpu.blob.compare import register_diff
from kvmfpu.kvm.system import Kvm
from kvmfpu.kvm.vcpu import Vcpu
from kvmfpu.qemu.env import (
    INTEL_FIXED_OFFSETS,
    OFFSET_MODES,
    QemuEnv,
    buffer_size,
    xrstor_all_areas,
    xsave_all_areas,
)
from kvmfpu.testing import strategies as ks

HOSTS = ["skylake-sp", "zen4", "sapphirerapids", "haswell", "devhost-zen5"]


@settings(max_examples=150, deadline=None)
@given(src=st.sampled_from(HOSTS), dst=st.sampled_from(HOSTS), data=st.data())
def test_qemu_relays_registers_between_layouts(src: str, dst: str, data: st.DataObject) -> None:
    """KVM_GET_XSAVE on one host -> QEMU's fields -> KVM_SET_XSAVE's buffer on another: every
    register both hosts hold arrives; XSTATE_BV travels verbatim."""
    a, b = cpus.load(src), cpus.load(dst)
    common = a.supported_xcr0 & b.supported_xcr0
    buf = bytes(
        data.draw(ks.valid_xsave(src, size=a.layout.standard_size(a.supported_xcr0), features=common))
    )
    env = xrstor_all_areas(buf, a.layout)
    out = xsave_all_areas(env, b.layout, buffer_size(b.layout.standard_size(b.supported_xcr0)))
    da = dec.decode(buf, a.layout)
    db = dec.decode(out, b.layout)
    assert db.xstate_bv == da.xstate_bv and db.xcomp_bv == 0
    assert db.field("mxcsr_mask").value == 0  # the buffer starts zeroed
    assert register_diff(da, db) == []


def test_fields_round_trip() -> None:
    env = QemuEnv(
        fpuc=0x27F,
        fpus=6 << 11,
        fptag=0xC0,
        fpregs=[(1 << 63, 0x3FFF)] * 8,
        mxcsr=0x1FA0,
        zmm=[(i + 1) << 500 | i for i in range(32)],
        opmask=list(range(8)),
        pkru=0x55555554,
        xtilecfg=bytes([1]) + bytes(63),
        xtiledata=bytes(range(256)) * 32,
        xstate_bv=0x602E7,
    )
    lay = cpus.load("sapphirerapids").layout
    back = xrstor_all_areas(xsave_all_areas(env, lay, 12288), lay)
    assert back == env


def test_buffer_size_is_whole_pages() -> None:
    assert [buffer_size(n) for n in (0, 2696, 4096, 11008)] == [4096, 4096, 4096, 12288]


def _vcpu_on(host: str) -> tuple[Kvm, Vcpu]:
    kvm = Kvm(host, "6.6")
    v = kvm.create_vm().create_vcpu()
    v.set_cpuid2(kvm.get_supported_cpuid())
    return kvm, v


PKRU_ENV = dict(pkru=0x55555554, xstate_bv=xf.FPSSE | xf.PKRU)


def test_intel_fixed_layout_is_x86xsavearea() -> None:
    """QEMU 6.0 cpu.h QEMU_BUILD_BUG_ON(offsetof(X86XSaveArea, ...)): 0x240, 0x3c0, 0x400,
    0x440, 0x480, 0x680, 0xA80 -- Skylake-SP's own leaf 0xD (shared/spec real dump), so on
    that host the fixed and the host-cpuid buffers are the same bytes."""
    lay = cpus.load("skylake-sp").layout
    for bit, off in INTEL_FIXED_OFFSETS.items():
        assert lay.components[bit].offset == off
    env = QemuEnv(
        zmm=[(i + 1) << 300 | i for i in range(32)],
        opmask=list(range(8)),
        bnd=[(1, 2)] * 4,
        bndcfgu=5,
        pkru=7,
        xstate_bv=0x2FF,
    )
    assert xsave_all_areas(env, lay, 4096, "intel-fixed") == xsave_all_areas(env, lay, 4096)


def test_qemu_6_0_on_amd_puts_pkru_where_kvm_does_not_look() -> None:
    """Before fea4500841 (6.1) QEMU wrote PKRU at 0xA80 on every host; an AMD host keeps it
    at 0x980 (its cover letter's motivation), which lies in X86XSaveArea's Hi16_ZMM: what
    KVM_SET_XSAVE takes as the guest's PKRU are the low bytes of QEMU's ZMM28."""
    kvm, v = _vcpu_on("zen3")
    assert kvm.host.layout.components[xf.XFeature.PKRU].offset == 0x980
    v.set_xsave(xsave_all_areas(QemuEnv(**PKRU_ENV), kvm.host.layout, 4096, "intel-fixed"))
    assert v.pkru == 0  # the guest's PKRU is gone
    z28 = [0] * 28 + [0xC0FFEE] + [0] * 3
    v.set_xsave(xsave_all_areas(QemuEnv(zmm=z28, **PKRU_ENV), kvm.host.layout, 4096, "intel-fixed"))
    assert v.pkru == 0xC0FFEE
    v.set_xsave(xsave_all_areas(QemuEnv(**PKRU_ENV), kvm.host.layout, 4096))  # 7.0 on
    assert v.pkru == 0x55555554


def test_qemu_6_0_on_amd_reads_pkru_from_bytes_kvm_never_wrote() -> None:
    """KVM_GET_XSAVE on the AMD host puts PKRU at 0x980; x86_cpu_xrstor_all_areas before 6.1
    reads 0xA80 (env.pkru 0) and files the real value under ZMM28."""
    kvm, v = _vcpu_on("zen3")
    v.set_xsave(xsave_all_areas(QemuEnv(**PKRU_ENV), kvm.host.layout, 4096))
    buf = v.get_xsave()
    old = xrstor_all_areas(buf, kvm.host.layout, mode="intel-fixed")
    assert old.pkru == 0 and old.zmm[28] & 0xFFFFFFFF == 0x55555554
    assert xrstor_all_areas(buf, kvm.host.layout, mode="kvm-supported").pkru == 0x55555554


def test_kvm_supported_offsets_skip_what_kvm_does_not_report() -> None:
    """fea4500841's kvm_cpu_xsave_init sets an offset only where KVM_GET_SUPPORTED_CPUID's
    EAX is non-zero; x86_cpu_xsave_all_areas skips areas without one."""
    lay = cpus.load("skylake-sp").layout
    env = QemuEnv(**PKRU_ENV)
    with_pkru = xsave_all_areas(env, lay, 4096, "kvm-supported", kvm_xcr0=0x2FF)
    without = xsave_all_areas(env, lay, 4096, "kvm-supported", kvm_xcr0=0xFF)
    assert with_pkru[0xA80:0xA84] == (0x55555554).to_bytes(4, "little")
    assert without[0xA80:0xA84] == bytes(4)
    assert "intel-fixed" in OFFSET_MODES and len(OFFSET_MODES) == 3
