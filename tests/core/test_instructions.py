"""What each instruction writes and how XINUSE / XRSTOR_INFO / XFD steer it."""

from __future__ import annotations

import struct

import pytest

from kvmfpu.arch import legacy
from kvmfpu.arch import xfeatures as xf
from kvmfpu.arch.xfeatures import XCOMP_COMPACTED
from kvmfpu.core import Cpu, DeviceNotAvailable, InvalidOpcode
from kvmfpu.cpus.model import HostModel
from kvmfpu.testing import booted, standard_area
from kvmfpu.testing.areas import component_data

ALL = (1 << 64) - 1
A, B = 0x1000, 0x5000


def put(cpu: Cpu, addr: int, area: bytes | bytearray) -> None:
    cpu.memory[addr:addr + len(area)] = area


def bv_at(cpu: Cpu, addr: int) -> int:
    return int(struct.unpack_from("<Q", cpu.memory, addr + legacy.XSTATE_BV)[0])


def header(cpu: Cpu, addr: int) -> tuple[int, int]:
    bv, cb = struct.unpack_from("<QQ", cpu.memory, addr + legacy.XSTATE_BV)
    return int(bv), int(cb)


def test_reset_state() -> None:
    cpu = Cpu("skylake-sp")
    assert cpu.xcr0 == 1 and cpu.xss == 0 and cpu.xfd == 0 and not cpu.cr4_osxsave
    assert cpu.reg("fcw") == 0x0040 and cpu.reg("ftw") == 0xFF and cpu.reg("mxcsr") == 0x1F80
    assert cpu.xinuse == xf.FP


def test_xsave_keeps_bv_bits_outside_rfbm_and_never_writes_xcomp_bv() -> None:
    cpu = booted("skylake-sp")
    cpu.set_reg("ymm1", 1 << 200)
    struct.pack_into("<QQ", cpu.memory, B + legacy.XSTATE_BV, 0xDEAD_0000_0000_0010, 0x55)
    cpu.xsave(B, xf.YMM)
    bv, cb = header(cpu, B)
    assert bv == 0xDEAD_0000_0000_0014 and cb == 0x55


def test_xsave_writes_init_values_for_components_not_in_use() -> None:
    cpu = booted("skylake-sp")
    cpu.memory[B:B + 0x1000] = b"\xee" * 0x1000
    struct.pack_into("<Q", cpu.memory, B + legacy.XSTATE_BV, 0)
    cpu.xsave(B, ALL)
    off = cpu.host.layout.standard_offset(2)
    assert bytes(cpu.memory[B + off:B + off + 256]) == bytes(256)
    assert bv_at(cpu, B) & xf.YMM == 0
    assert bytes(cpu.memory[B + legacy.RESERVED:B + legacy.LEGACY_SIZE]) == b"\xee" * 96


def test_xsavec_forces_bv1_for_non_default_mxcsr() -> None:
    cpu = booted("skylake-sp")
    cpu.memory[A:A + 0x1000] = bytes(0x1000)
    struct.pack_into("<I", cpu.memory, A + legacy.MXCSR, 0x1F80)
    struct.pack_into("<Q", cpu.memory, A + legacy.XSTATE_BV, 0)
    cpu.xrstor(A, ALL)
    cpu.xsavec(B, ALL)
    assert header(cpu, B) == (0, cpu.xcr0 | XCOMP_COMPACTED)
    cpu.set_reg("mxcsr", 0x1F00)
    cpu.xsavec(B, ALL)
    assert header(cpu, B)[0] == xf.SSE
    cpu.xsavec(B, xf.YMM)          # without RFBM[1] MXCSR does not matter
    assert header(cpu, B)[0] == 0


def test_xsavec_leaves_header_reserved_and_legacy_tail_alone() -> None:
    cpu = booted("skylake-sp")
    cpu.memory[B:B + 0x2000] = b"\x77" * 0x2000
    cpu.xsavec(B, ALL)
    assert bytes(cpu.memory[B + 528:B + 576]) == b"\x77" * 48
    assert bytes(cpu.memory[B + 416:B + 512]) == b"\x77" * 96


def test_xsaveopt_init_optimisation_skips_unused_components() -> None:
    cpu = booted("skylake-sp")
    cpu.memory[B:B + 0x1000] = b"\x99" * 0x1000
    struct.pack_into("<Q", cpu.memory, B + legacy.XSTATE_BV, ALL)
    cpu.set_reg("k3", 5)
    cpu.xsaveopt(B, ALL)
    lay = cpu.host.layout
    ymm, kreg = lay.standard_offset(2), lay.standard_offset(5)
    assert bytes(cpu.memory[B + ymm:B + ymm + 256]) == b"\x99" * 256      # not in use: skipped
    assert struct.unpack_from("<Q", cpu.memory, B + kreg + 24)[0] == 5    # in use: written
    assert bytes(cpu.memory[B + 24:B + 32]) != b"\x99" * 8                # MXCSR always written
    assert bv_at(cpu, B) & cpu.xcr0 == xf.OPMASK | xf.FP                  # x87 from RESET


def test_xsaveopt_modified_optimisation_needs_same_address_and_cpl() -> None:
    cpu = booted("skylake-sp")
    put(cpu, A, standard_area(cpu.host, cpu.xcr0))
    cpu.xrstor(A, ALL)
    assert cpu.xrstor_info == (0, False, A, 0)
    ymm = cpu.host.layout.standard_offset(2)
    cpu.memory[A + ymm:A + ymm + 256] = b"\x11" * 256   # a plain store after XRSTOR
    cpu.xsaveopt(A, ALL)
    assert bytes(cpu.memory[A + ymm:A + ymm + 256]) == b"\x11" * 256   # unmodified: skipped
    cpu.set_reg("ymm0", 3 << 128)                                       # now modified
    cpu.xsaveopt(A, ALL)
    assert bytes(cpu.memory[A + ymm:A + ymm + 16]) == (3).to_bytes(16, "little")
    # Another address: no modified optimisation.
    put(cpu, A, standard_area(cpu.host, cpu.xcr0))
    cpu.xrstor(A, ALL)
    cpu.memory[B:B + 0x1000] = b"\x11" * 0x1000
    cpu.xsaveopt(B, ALL)
    assert bytes(cpu.memory[B + ymm:B + ymm + 256]) != b"\x11" * 256


def test_xsaves_modified_optimisation_and_supervisor_state() -> None:
    cpu = booted("sapphirerapids", xss=xf.CET)
    cpu.wrmsr(0x6A7, 0x7FFF_0000_1000)     # IA32_PL3_SSP -> CET_U in use
    cpu.xsaves(A, ALL)
    bv, cb = header(cpu, A)
    assert cb == cpu.xcr0 | xf.CET | XCOMP_COMPACTED and bv & xf.CET_U
    cpu.xrstors(A, ALL)
    assert cpu.xrstor_info == (0, False, A, cb)
    off = cpu.host.layout.compacted_offset(cb, 11)
    cpu.memory[A + off:A + off + 16] = b"\x22" * 16
    cpu.xsaves(A, ALL)                      # unmodified since XRSTORS: skipped
    assert bytes(cpu.memory[A + off:A + off + 16]) == b"\x22" * 16
    cpu.wrmsr(0x6A7, 0x7FFF_0000_2000)
    cpu.xsaves(A, ALL)
    assert struct.unpack_from("<Q", cpu.memory, A + off + 8)[0] == 0x7FFF_0000_2000


def test_xfd_armed_component_saved_as_init_and_touch_raises_nm() -> None:
    cpu = booted("sapphirerapids")
    tiles = cpu.host.layout.standard_offset(18)
    cpu.set_component(17, component_data(17, 64))
    cpu.set_reg("tmm2", b"\x42" * 1024)
    cpu.wrmsr(0x1C4, xf.XTILEDATA)
    cpu.memory[B:B + 0x3000] = b"\xcc" * 0x3000
    cpu.xsave(B, ALL)                     # no #NM: saved as if not in use, init bytes written
    assert bv_at(cpu, B) & xf.XTILEDATA == 0
    assert bytes(cpu.memory[B + tiles:B + tiles + 8192]) == bytes(8192)
    cpu.xsavec(B, ALL)
    assert header(cpu, B)[0] & xf.XTILEDATA == 0
    with pytest.raises(DeviceNotAvailable) as info:
        cpu.use(xf.XTILEDATA, "TILELOADD")
    assert cpu.xfd_err == xf.XTILEDATA and "IA32_XFD_ERR" in info.value.reason
    cpu.wrmsr(0x1C4, 0)
    assert cpu.reg("tmm2") == int.from_bytes(b"\x42" * 1024, "little")   # state kept


def test_use_needs_xcr0() -> None:
    cpu = booted("sapphirerapids", xcr0=0x2E7)
    with pytest.raises(InvalidOpcode):
        cpu.use(xf.XTILEDATA, "TILELOADD")


def test_xgetbv1_is_xcr0_and_xinuse() -> None:
    cpu = booted("skylake-sp", xcr0=0x7)
    put(cpu, A, standard_area(cpu.host, 0))
    cpu.xrstor(A, ALL)
    assert cpu.xgetbv(1) == 0
    cpu.set_reg("ymm4", 1 << 130)
    assert cpu.xgetbv(1) == xf.YMM | xf.SSE


@pytest.mark.parametrize("host, expect", [("skylake-sp", 0x7), ("zen4", 0x0)])
def test_xinuse_after_loading_init_values(host: str, expect: int) -> None:
    """Intel: loading with XSTATE_BV[i]=1 sets XINUSE[i] (SDM §13.6); AMD compares the data
    with its initial configuration (measured on Zen 5)."""
    cpu = booted(host, xcr0=0x7)
    area = bytearray(0x1000)
    struct.pack_into("<H", area, legacy.FCW, legacy.FCW_INIT)
    struct.pack_into("<IQ", area, legacy.MXCSR, 0x1F80, 0)
    struct.pack_into("<Q", area, legacy.XSTATE_BV, 0x7)
    cpu.memory[A:A + 0x1000] = area
    cpu.xrstor(A, ALL)
    assert cpu.xinuse == expect


def test_amd_xgetbv1_counts_mxcsr_but_xsave_does_not() -> None:
    cpu = booted("zen4", xcr0=0x7)
    put(cpu, A, standard_area(cpu.host, 0, mxcsr=0x1F00))
    cpu.xrstor(A, ALL)
    assert cpu.xgetbv(1) == xf.SSE
    cpu.xsave(B, ALL)
    assert bv_at(cpu, B) & xf.SSE == 0


def test_x87_canonical_form() -> None:
    cpu = booted("skylake-sp")
    area = standard_area(cpu.host, 1)
    struct.pack_into("<HHBBHQQ", area, 0, 0xFFFF, 0x0001, 0x81, 0x5A, 0xFFFF,
                     0x1122_3344_5566_7788, 0x99AA_BBCC_DDEE_FF00)
    area[legacy.ST_SPACE + 10:legacy.ST_SPACE + 16] = b"\xff" * 6
    cpu.memory[A:A + len(area)] = area
    cpu.xrstor(A, ALL)
    assert cpu.reg("fcw") == 0x1F7F                  # bits 6 set, 7 and 13-15 clear
    assert cpu.reg("fsw") == 0x0001                  # IE masked: ES and B clear
    assert cpu.reg("fop") == 0x7FF
    assert cpu.reg("fip") == 0x1122_3344_5566_7788   # Intel keeps 64 bits
    cpu.xsave(B, ALL)
    assert cpu.memory[B + 5] == 0 and bytes(cpu.memory[B + 42:B + 48]) == bytes(6)


def test_amd_x87_pointers_need_a_pending_exception_and_57_bits() -> None:
    cpu = booted("zen4")
    area = standard_area(cpu.host, 1)
    struct.pack_into("<HHBBHQQ", area, 0, 0x037E, 0x0001, 0, 0, 0x123, 0x0100_0000_0000_0001, 8)
    cpu.memory[A:A + len(area)] = area
    cpu.xrstor(A, ALL)                               # IE unmasked: pointers kept
    assert cpu.reg("fsw") == 0x8081
    assert cpu.reg("fip") == 0xFF00_0000_0000_0001   # sign-extended from bit 56
    struct.pack_into("<H", area, 0, 0x037F)          # everything masked: pointers dropped
    cpu.memory[A:A + len(area)] = area
    cpu.xrstor(A, ALL)
    assert cpu.reg("fop") == cpu.reg("fip") == cpu.reg("fdp") == 0


def test_32bit_forms_use_offset_and_selector() -> None:
    cpu = booted("zen4")
    area = standard_area(cpu.host, 1)
    struct.pack_into("<HH", area, 0, 0x037E, 1)
    struct.pack_into("<IHHIHH", area, 8, 0x1122_3344, 0x5566, 0x7788, 0x99AA_BBCC, 0xDDEE, 0xFF)
    cpu.memory[A:A + len(area)] = area
    cpu.xrstor(A, ALL, rex_w=False)
    cpu.xsave(B, 1, rex_w=False)
    assert struct.unpack_from("<IHHIHH", cpu.memory, B + 8) == (
        0x1122_3344, 0x5566, 0, 0x99AA_BBCC, 0xDDEE, 0)
    cpu.xsave(B, 1)
    assert struct.unpack_from("<QQ", cpu.memory, B + 8) == (0x1122_3344, 0x99AA_BBCC)


def test_intel_zero_fcs_fds_where_deprecated() -> None:
    cpu = booted("skylake-sp")                       # CPUID.7.0:EBX[13] set
    assert cpu.host.has("zero_fcs_fds")
    cpu.set_reg("fcs", 0x1234)
    cpu.fxsave(B, rex_w=False)
    assert struct.unpack_from("<H", cpu.memory, B + legacy.FCS)[0] == 0


def test_xsetbv_preserves_disabled_components() -> None:
    """SDM Vol. 1 13.3: clearing XCR0[7:5] leaves AVX-512 state unmodified."""
    cpu = booted("skylake-sp")
    cpu.set_reg("zmm20", 7)
    cpu.set_reg("pkru", 0x55555554)
    cpu.xsetbv(0, 0x7)
    assert cpu.xinuse & xf.AVX512
    cpu.xsetbv(0, 0x2E7)
    assert cpu.reg("zmm20") == 7
    assert cpu.reg("pkru") == 0x55555554


def test_compacted_xrstor_initialises_mxcsr_when_sse_not_in_bv() -> None:
    cpu = booted("skylake-sp")
    cpu.set_reg("mxcsr", 0x1F00)
    struct.pack_into("<QQ", cpu.memory, A + legacy.XSTATE_BV, 0, XCOMP_COMPACTED | 3)
    cpu.xrstor(A, ALL)
    assert cpu.reg("mxcsr") == 0x1F80


def test_cpuid_sizes_follow_xcr0_and_xss() -> None:
    cpu = booted("sapphirerapids", xcr0=0x7)
    assert cpu.cpuid(0xD, 0)[1] == 832
    cpu.xsetbv(0, 0x602E7)
    cpu.wrmsr(0xDA0, xf.CET)
    assert cpu.cpuid(0xD, 0)[1] == cpu.host.cpuid(0xD, 0)[2] == 0x2B00
    assert cpu.cpuid(0xD, 1)[1] == cpu.host.layout.compacted_size(0x602E7 | xf.CET)


def test_memory_must_be_writable() -> None:
    with pytest.raises(TypeError):
        Cpu("skylake-sp", bytes(4096))


def test_snapshot_round_trip() -> None:
    cpu = booted("sapphirerapids", xss=xf.CET)
    cpu.set_reg("zmm30", 99)
    cpu.wrmsr(0x6A7, 0x7FFF_0000_1000)
    snap = cpu.snapshot()
    cpu.set_reg("zmm30", 1)
    cpu.xsetbv(0, 0x3)
    cpu.wrmsr(0xDA0, 0)
    assert cpu.snapshot() != snap
    cpu.restore_snapshot(snap)
    assert cpu.snapshot() == snap and cpu.reg("zmm30") == 99 and cpu.xcr0 == 0x602E7


def apx_host() -> HostModel:
    """Synthetic: Granite Rapids' real dump plus APX (XCR0[19]; CPUID.(0DH,19) = 128 bytes at
    960, SDM table 13-1; CPUID.(7,1):EDX[21]). No APX dump was available; test only."""
    from kvmfpu import cpus
    from kvmfpu.cpus.model import HostModel
    real = cpus.load("graniterapids")
    table = dict(real.table)
    a, b, c, d = table[(0xD, 0)]
    table[(0xD, 0)] = (a | xf.APX, b, c, d)
    table[(0xD, 19)] = (128, 960, 0, 0)
    a, b, c, d = table.get((7, 1), (0, 0, 0, 0))
    table[(7, 1)] = (a, b, c, d | 1 << 21)
    return HostModel(table, name="synthetic-apx")


def test_apx_registers_save_and_restore() -> None:
    host = apx_host()
    cpu = booted(host)
    assert cpu.xcr0 & xf.APX
    cpu.set_reg("r31", 0xFEED)
    cpu.xsave(A, ALL)
    assert struct.unpack_from("<Q", cpu.memory, A + 960 + 15 * 8)[0] == 0xFEED
    cpu.set_reg("r31", 0)
    cpu.xrstor(A, ALL)
    assert cpu.reg("r31") == 0xFEED
    cpu.xsavec(B, xf.APX | 3)
    assert struct.unpack_from("<Q", cpu.memory, B + 576 + 15 * 8)[0] == 0xFEED
