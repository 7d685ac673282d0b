"""The Construct schemas decode what the core writes."""

import struct

from kvmfpu.arch import schemas
from kvmfpu.testing import booted

ALL = (1 << 64) - 1


def test_legacy_and_header_sizes() -> None:
    assert schemas.legacy_area.sizeof() == 512
    assert schemas.legacy_area32.sizeof() == 512
    assert schemas.xstate_header.sizeof() == 64
    assert schemas.tilecfg.sizeof() == 64


def test_standard_area_decodes_core_output() -> None:
    cpu = booted("zen4")
    cpu.set_reg("xmm5", 0x1234)
    cpu.set_reg("k2", 9)
    cpu.set_reg("zmm20", 1 << 500)
    cpu.set_reg("pkru", 0x55555554)
    cpu.xsave(0, ALL)
    size = cpu.host.layout.standard_size(cpu.xcr0)
    area = schemas.xsave_area(cpu.host.layout).parse(bytes(cpu.memory[:size]))
    assert area.legacy.xmm[5] == 0x1234
    assert area.opmask.k[2] == 9
    assert area.hi16_zmm.zmm[4] == 1 << 500
    assert area.pkru.pkru == 0x55555554
    assert area.header.xcomp_bv == 0


def test_compacted_area_follows_xcomp_bv() -> None:
    cpu = booted("sapphirerapids", xss=0x1800)
    cpu.set_reg("k1", 3)
    cpu.wrmsr(0x6A7, 0x7FFF_0000_1000)
    cpu.xsaves(0, ALL)
    cb = struct.unpack_from("<Q", cpu.memory, 520)[0]
    _, size = cpu.host.layout.compacted(cb)
    area = schemas.xsave_area(cpu.host.layout, compacted=True).parse(bytes(cpu.memory[:size]))
    assert area.opmask.k[1] == 3
    assert area.cet_u.pl3_ssp == 0x7FFF_0000_1000
    assert area.ymm is None          # not in use: XSTATE_BV clear


def test_kvm_xsave_region_and_extra() -> None:
    cpu = booted("sapphirerapids")
    cpu.set_reg("tmm7", b"\x07" * 1024)
    cpu.set_component(17, bytes([1]) + bytes(63))
    cpu.xsave(0, ALL)
    buf = bytes(cpu.memory[:cpu.host.layout.standard_size(cpu.xcr0)])
    parsed = schemas.kvm_xsave(cpu.host.layout).parse(buf)
    assert len(parsed.region) == 1024 and len(parsed.extra) == len(buf) - 4096
    assert parsed.area.xtiledata.tmm[7] == b"\x07" * 1024
