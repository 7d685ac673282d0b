"""kvmfpu.qemu.env: QEMU's fields and its two conversions with KVM's buffer."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from kvmfpu import cpus
from kvmfpu.blob import decode as dec
from kvmfpu.blob.compare import register_diff
from kvmfpu.qemu.env import QemuEnv, buffer_size, xrstor_all_areas, xsave_all_areas
from kvmfpu.testing import strategies as ks

HOSTS = ["skylake-sp", "zen4", "sapphirerapids", "haswell", "devhost-zen5"]


@settings(max_examples=150, deadline=None)
@given(src=st.sampled_from(HOSTS), dst=st.sampled_from(HOSTS), data=st.data())
def test_qemu_relays_registers_between_layouts(src: str, dst: str, data: st.DataObject) -> None:
    """KVM_GET_XSAVE on one host -> QEMU's fields -> KVM_SET_XSAVE's buffer on another: every
    register both hosts hold arrives; XSTATE_BV travels verbatim."""
    a, b = cpus.load(src), cpus.load(dst)
    common = a.supported_xcr0 & b.supported_xcr0
    buf = bytes(data.draw(ks.valid_xsave(src, size=a.layout.standard_size(a.supported_xcr0),
                                         features=common)))
    env = xrstor_all_areas(buf, a.layout)
    out = xsave_all_areas(env, b.layout, buffer_size(b.layout.standard_size(b.supported_xcr0)))
    da = dec.decode(buf, a.layout)
    db = dec.decode(out, b.layout)
    assert db.xstate_bv == da.xstate_bv and db.xcomp_bv == 0
    assert db.field("mxcsr_mask").value == 0                 # the buffer starts zeroed
    assert register_diff(da, db) == []


def test_fields_round_trip() -> None:
    env = QemuEnv(fpuc=0x27F, fpus=6 << 11, fptag=0xC0, fpregs=[(1 << 63, 0x3FFF)] * 8,
                  mxcsr=0x1FA0, zmm=[(i + 1) << 500 | i for i in range(32)],
                  opmask=list(range(8)), pkru=0x55555554, xtilecfg=bytes([1]) + bytes(63),
                  xtiledata=bytes(range(256)) * 32, xstate_bv=0x602E7)
    lay = cpus.load("sapphirerapids").layout
    back = xrstor_all_areas(xsave_all_areas(env, lay, 12288), lay)
    assert back == env


def test_buffer_size_is_whole_pages() -> None:
    assert [buffer_size(n) for n in (0, 2696, 4096, 11008)] == [4096, 4096, 4096, 12288]
