"""Properties of the core on every XSAVE host: XRSTOR then XSAVE is a fixed point, XSAVEC
writes exactly the compacted size CPUID reports, and XSAVE -> compacted -> standard
conversions agree with what the instructions themselves write."""

from __future__ import annotations

import random
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kvmfpu import cpus
from kvmfpu.arch import legacy
from kvmfpu.arch.convert import compacted_to_standard, standard_to_compacted
from kvmfpu.arch.xfeatures import XCOMP_COMPACTED, bits
from kvmfpu.core import Cpu
from kvmfpu.testing import booted
from kvmfpu.testing.areas import component_data

HOSTS = [n for n in cpus.names() if cpus.load(n).has("xsave")]
COMPACT_HOSTS = [n for n in HOSTS if cpus.load(n).has("xsavec")]
AREA, OUT, OUT2 = 0x0, 0x4000, 0x8000
ALL = (1 << 64) - 1
SETTINGS = settings(max_examples=60, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@st.composite
def random_area(draw: st.DrawFn, host: str) -> tuple[bytearray, int]:
    """A standard-format area XRSTOR accepts: random x87/XMM bytes, valid MXCSR, random
    BV within XCR0, per-component either zero, patterned-valid or random-valid data."""
    model = cpus.load(host)
    xcr0 = model.supported_xcr0
    size = model.layout.standard_size(xcr0)
    rng = random.Random(draw(st.integers(0, 2**32)))
    area = bytearray(rng.randbytes(size))
    area[legacy.HEADER:legacy.EXTENDED] = bytes(64)
    mxcsr = draw(st.integers(0, 0xFFFFFFFF)) & model.behaviour.mxcsr_mask
    struct.pack_into("<I", area, legacy.MXCSR, mxcsr)
    bv = draw(st.integers(0, ALL)) & xcr0
    struct.pack_into("<Q", area, legacy.XSTATE_BV, bv)
    for b in bits(xcr0 & ~3):
        c = model.layout.components[b]
        kind = draw(st.sampled_from(["zero", "pattern", "random"]))
        if kind == "zero" or (kind == "random" and b in (9, 17)):
            data = bytes(c.size) if kind == "zero" else component_data(b, c.size, 3)
        elif kind == "pattern":
            data = component_data(b, c.size, draw(st.integers(0, 50)))
        else:
            data = rng.randbytes(c.size)
        area[c.offset:c.offset + c.size] = data
    return area, xcr0


@pytest.mark.parametrize("host", HOSTS)
def test_xrstor_then_xsave_is_a_fixed_point(host: str) -> None:
    @SETTINGS
    @given(random_area(host), st.booleans())
    def check(case: tuple[bytearray, int], rex_w: bool) -> None:
        area, _ = case
        cpu = booted(host)
        mem = cpu.memory
        mem[AREA:AREA + len(area)] = area
        cpu.xrstor(AREA, ALL, rex_w=rex_w)
        cpu.xsave(OUT, ALL, rex_w=rex_w)
        first = bytes(mem[OUT:OUT + len(area)])
        state = cpu.snapshot()
        cpu.xrstor(OUT, ALL, rex_w=rex_w)
        assert cpu.snapshot().regs == state.regs
        cpu.xsave(OUT2, ALL, rex_w=rex_w)
        assert bytes(mem[OUT2:OUT2 + len(area)]) == first
        # Extended components in XSTATE_BV come back byte for byte (they have no
        # reserved bits, PKRU/TILECFG data are canonical by construction).
        bv = struct.unpack_from("<Q", area, legacy.XSTATE_BV)[0]
        for b in bits(bv & ~3):
            c = cpu.host.layout.components[b]
            assert first[c.offset:c.offset + c.size] == area[c.offset:c.offset + c.size]
    check()


@pytest.mark.parametrize("host", COMPACT_HOSTS)
def test_xsavec_writes_the_cpuid_compacted_size(host: str) -> None:
    model = cpus.load(host)

    @SETTINGS
    @given(st.integers(0, ALL), st.integers(0, ALL))
    def check(xcr0_bits: int, in_use: int) -> None:
        xcr0 = 3 | xcr0_bits & model.supported_xcr0
        # make it a legal XCR0: pairs and AVX-512 all-or-nothing
        for group in (0x18, 0xE0, 0x60000):
            if xcr0 & group and xcr0 & group != group:
                xcr0 &= ~group
        if xcr0 & 0xE0:
            xcr0 |= 4
        cpu = booted(model, xcr0=xcr0)
        mem = cpu.memory
        for b in bits(in_use & xcr0 & ~3):
            cpu.set_component(b, component_data(b, model.layout.components[b].size))
        mem[OUT:OUT + 0x4000] = b"\xa5" * 0x4000
        cpu.xsavec(OUT, ALL)
        size = cpu.cpuid(0xD, 1)[1]
        assert size == model.layout.compacted_size(xcr0)
        written = [i for i in range(0x4000) if mem[OUT + i] != 0xA5]
        assert max(written) < size
        bv, cb = struct.unpack_from("<QQ", mem, OUT + legacy.XSTATE_BV)
        assert cb == xcr0 | XCOMP_COMPACTED
        top = max(bits(xcr0))
        if top >= 2 and bv >> top & 1:
            c = model.layout.components[top]
            if any(component_data(top, c.size)):
                assert max(written) >= size - 64   # the last component reaches the end
    check()


@pytest.mark.parametrize("host", HOSTS)
def test_cpuid_sizes_match_the_layout(host: str) -> None:
    """CPUID.(0DH,0).ECX, the size for every supported feature, is what the layout gives."""
    model = cpus.load(host)
    assert model.cpuid(0xD, 0)[2] == model.layout.standard_size(model.supported_xcr0)


def test_devhost_sizes_match_its_cpuid() -> None:
    """The dev machine runs with XCR0=0xe7, IA32_XSS=0x1800: CPUID.(0DH,0).EBX and
    CPUID.(0DH,1).EBX as captured are the standard and compacted sizes for those."""
    model = cpus.load("devhost-zen5")
    assert model.cpuid(0xD, 0)[1] == model.layout.standard_size(0xE7) == 0x980
    assert model.cpuid(0xD, 1)[1] == model.layout.compacted_size(0xE7 | 0x1800) == 0x9A8


@pytest.mark.parametrize("host", COMPACT_HOSTS)
def test_standard_compacted_round_trip(host: str) -> None:
    model = cpus.load(host)

    @SETTINGS
    @given(random_area(host), st.integers(0, ALL))
    def check(case: tuple[bytearray, int], extra: int) -> None:
        area, xcr0 = case
        bv = struct.unpack_from("<Q", area, legacy.XSTATE_BV)[0]
        # Only the legacy region, the header and components in XSTATE_BV carry data; gaps
        # between components and components outside BV belong to neither format.
        clean = bytearray(len(area))
        clean[:legacy.EXTENDED] = area[:legacy.EXTENDED]
        for b in bits(bv & ~3):
            c = model.layout.components[b]
            clean[c.offset:c.offset + c.size] = area[c.offset:c.offset + c.size]
        area = clean
        comp = bv | (extra & xcr0)
        cmp = standard_to_compacted(area, model.layout, comp)
        assert len(cmp) == model.layout.compacted_size(comp)
        back = compacted_to_standard(cmp, model.layout, size=len(area))
        assert back == area
        assert standard_to_compacted(back, model.layout, comp) == cmp
    check()


@pytest.mark.parametrize("host", COMPACT_HOSTS)
def test_conversion_matches_the_instructions(host: str) -> None:
    """XRSTOR(std); XSAVEC == standard_to_compacted(XSAVE output) on the components XSAVEC
    writes, for a state with every component in use."""
    model = cpus.load(host)
    cpu = booted(model)
    for b in bits(model.supported_xcr0 & ~3):
        cpu.set_component(b, component_data(b, model.layout.components[b].size, 7))
    cpu.set_reg("xmm0", 1)
    cpu.set_reg("fcw", 0x27F)
    cpu.xsave(AREA, ALL)
    cpu.xsavec(OUT, ALL)
    xcr0 = model.supported_xcr0
    conv = standard_to_compacted(bytes(cpu.memory[AREA:AREA + model.layout.standard_size(xcr0)]),
                                 model.layout, xcr0)
    size = model.layout.compacted_size(xcr0)
    got = bytes(cpu.memory[OUT:OUT + size])
    assert got[legacy.EXTENDED:] == bytes(conv[legacy.EXTENDED:])
    assert got[:legacy.RESERVED] == bytes(conv[:legacy.RESERVED])


def test_zen2_pkru_quirk_is_followed() -> None:
    """EPYC 7502 enumerates XCR0[9] with a 64-byte subleaf 9 at 0x340 but no PKU in leaf 7;
    the core follows CPUID.(0DH,0) for XSETBV (Linux drops the bit: xsave_cpuid_features)."""
    cpu = Cpu("zen2", bytearray(8192))
    cpu.cr4_osxsave = True
    cpu.xsetbv(0, 0x207)
    assert cpu.host.layout.components[9].size == 0x40
    assert not cpu.host.has("pku")
