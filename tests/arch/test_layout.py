"""Geometry from real leaf 0xD dumps against the numbers the spec collected."""

import pytest

from kvmfpu import cpus


@pytest.mark.parametrize("host, expected", [
    # bit: (size, standard offset)
    ("skylake-sp", {2: (0x100, 0x240), 3: (0x40, 0x3C0), 4: (0x40, 0x400), 5: (0x40, 0x440),
                    6: (0x200, 0x480), 7: (0x400, 0x680), 9: (8, 0xA80)}),
    ("sapphirerapids", {9: (8, 0xA80), 17: (0x40, 0xAC0), 18: (0x2000, 0xB00)}),
    ("zen4", {5: (0x40, 0x340), 6: (0x200, 0x380), 7: (0x400, 0x580), 9: (8, 0x980)}),
    ("zen3", {9: (8, 0x980)}),
])
def test_standard_offsets(host: str, expected: dict[int, tuple[int, int]]) -> None:
    lay = cpus.load(host).layout
    for bit, (size, off) in expected.items():
        assert (lay.size(bit), lay.standard_offset(bit)) == (size, off)


def test_compacted_alignment_bit() -> None:
    lay = cpus.load("sapphirerapids").layout
    # XTILECFG (ECX[1]) and XTILEDATA (ECX[1]) are 64-byte aligned when compacted.
    offsets, size = lay.compacted(0x3 | 1 << 9 | 1 << 17 | 1 << 18)
    assert offsets[9] == 576
    assert offsets[17] == (576 + 8 + 63) & ~63 == 640
    assert offsets[18] == 704 and size == 704 + 8192
    assert lay.components[18].xfd and not lay.components[17].xfd


def test_sapphire_rapids_sizes_match_cpuid() -> None:
    m = cpus.load("sapphirerapids")
    assert m.layout.standard_size(m.supported_xcr0) == 0x2B00 == m.cpuid(0xD, 0)[2]


def test_supervisor_components_have_no_standard_offset() -> None:
    lay = cpus.load("sapphirerapids").layout
    with pytest.raises(ValueError):
        lay.standard_offset(11)
    with pytest.raises(KeyError):
        lay.size(3)      # no MPX on Sapphire Rapids
