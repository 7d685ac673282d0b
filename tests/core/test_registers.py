"""Registers by name: where they live and what writing them does."""

from __future__ import annotations

import pytest

from kvmfpu.arch import xfeatures as xf
from kvmfpu.core import REGISTERS, GeneralProtection
from kvmfpu.testing import booted

ALL = (1 << 64) - 1


@pytest.mark.parametrize("host", ["skylake-sp", "sapphirerapids", "zen4", "kabylake"])
def test_every_register_round_trips(host: str) -> None:
    cpu = booted(host, xss=booted(host).host.supported_xss)
    for name, reg in REGISTERS.items():
        if not all(p.bit in cpu._rf.ranges for p in reg.pieces) or not reg.writable:
            with pytest.raises((KeyError, ValueError)):
                cpu.set_reg(name, 0)
            continue
        if name == "mxcsr":
            value = 0x1F00
        elif name == "tilecfg" or name in ("u_cet",):
            value = 1
        elif name.endswith("_ssp"):
            value = 0x7FFF_0000_1000
        elif name in ("fcw", "fsw", "fop", "fip", "fdp"):
            continue   # canonicalised: covered in test_x87_fields_are_canonical
        else:
            value = int.from_bytes(bytes(i % 251 + 1 for i in range(reg.size)), "little")
        cpu.set_reg(name, value)
        assert cpu.reg(name) == value, name
        assert cpu.xmodified & reg.mask == reg.mask or name == "mxcsr"


def test_ymm_and_zmm_span_components() -> None:
    cpu = booted("skylake-sp")
    cpu.set_reg("zmm3", (0xAA << 504) | (0xBB << 248) | 0xCC)
    assert cpu.reg("xmm3") == 0xCC
    assert cpu.reg("ymm3") == (0xBB << 248) | 0xCC
    assert cpu.xinuse & (xf.SSE | xf.YMM | xf.ZMM_HI256) == xf.SSE | xf.YMM | xf.ZMM_HI256
    cpu.set_reg("ymm19", 5)
    assert cpu.reg("zmm19") == 5 and cpu.xinuse & xf.HI16_ZMM


def test_component_bytes_follow_registers() -> None:
    cpu = booted("zen4")
    cpu.set_reg("k7", 0x1234)
    assert cpu.component_bytes(5)[56:64] == (0x1234).to_bytes(8, "little")


def test_x87_fields_are_canonical() -> None:
    cpu = booted("zen4")
    cpu.set_reg("fcw", 0xFFFF)
    cpu.set_reg("fop", 0xFFFF)
    cpu.set_reg("fip", 0x0100_0000_0000_0000)
    assert (cpu.reg("fcw"), cpu.reg("fop"), cpu.reg("fip")) == (0x1F7F, 0x7FF, 0xFF00_0000_0000_0000)


def test_bad_values_are_refused() -> None:
    cpu = booted("skylake-sp")
    with pytest.raises(ValueError):
        cpu.set_reg("k0", 1 << 64)
    with pytest.raises(ValueError):
        cpu.set_reg("xmm0", b"short")
    with pytest.raises(KeyError):
        cpu.reg("xmm99")
    with pytest.raises(GeneralProtection):
        cpu.set_reg("mxcsr", 1 << 20)
    with pytest.raises(KeyError):
        cpu.reg("tmm0")      # no AMX on Skylake-SP


def test_amd_xinuse_tracks_values_intel_tracks_writes() -> None:
    amd, intel = booted("zen4"), booted("skylake-sp")
    for cpu in (amd, intel):
        cpu.set_reg("k1", 0)
    assert amd.xinuse & xf.OPMASK == 0
    assert intel.xinuse & xf.OPMASK
