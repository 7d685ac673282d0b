"""Decode plans: every byte of an image in exactly one place, components where CPUID puts
them, plans shared per layout and length."""

from __future__ import annotations

import pytest

from kvmfpu import cpus
from kvmfpu.arch import legacy
from kvmfpu.arch.xfeatures import XCOMP_COMPACTED
from kvmfpu.blob import decode_plan as dp

XSAVE_HOSTS = [h for h in cpus.names() if cpus.load(h).has("xsave")]


def _coverage(plan: dp.DecodePlan) -> bytearray:
    seen = bytearray(plan.length)
    spans = [(off, size) for _, off, size in (*dp.LEGACY_GROUP, *dp.ST_FIELDS, *dp.XMM_FIELDS)]
    spans += [(legacy.XSTATE_BV, 8), (legacy.XCOMP_BV, 8)]
    spans += [(off, size) for c in plan.components for _, off, size in c.fields]
    spans += [(a, b - a) for a, b in plan.gaps]
    for off, size in spans:
        for i in range(off, off + size):
            seen[i] += 1
    return seen


@pytest.mark.parametrize("host", XSAVE_HOSTS)
def test_every_byte_is_in_one_place(host: str) -> None:
    """The decode.py contract (module docstring): every byte lands in exactly one field,
    header word or unnamed run, in both formats and for a buffer cut short."""
    layout = cpus.load(host).layout
    full = layout.standard_size(layout.user_mask)
    for n, xcomp in ((4096, 0), (full, 0), (700, 0), (12000, 0),
                     (layout.compacted_size(layout.user_mask), XCOMP_COMPACTED | layout.user_mask)):
        plan = dp.plan_for(layout, n, xcomp)
        assert set(_coverage(plan)) == {1}, (host, n)
        assert dp.plan_for(layout, n, xcomp) is plan      # built once


@pytest.mark.parametrize("host", ["skylake-sp", "sapphirerapids", "zen4"])
def test_components_sit_where_cpuid_says(host: str) -> None:
    """Standard offsets are CPUID.(0DH,i).EBX, compacted ones follow XCOMP_BV (SDM 13.4.2-3);
    a component past the end is cut, not placed."""
    layout = cpus.load(host).layout
    plan = dp.plan_for(layout, 4096, 0)
    placed = {c.bit: c.offset for c in plan.components}
    assert placed == {b: c.offset for b, c in layout.components.items()
                      if not c.supervisor and c.offset + c.size <= 4096}
    assert {b for b, _, _ in plan.cut} == {b for b, c in layout.components.items()
                                           if not c.supervisor and c.offset + c.size > 4096}
    mask = layout.user_mask & ~dp.XFeature.XTILEDATA.mask
    offsets, size = layout.compacted(mask)
    compacted = dp.plan_for(layout, size, XCOMP_COMPACTED | mask)
    assert {c.bit: c.offset for c in compacted.components} == {b: offsets[b] for b in offsets}


def test_register_rows() -> None:
    """Register offsets inside components (Linux struct mpx_bndreg_state, avx_512_hi16_state,
    xtile_data: arch/x86/include/asm/fpu/types.h); a short component keeps what fits."""
    bnd = dp.component_fields(dp.XFeature.BNDREGS, 64)
    assert bnd[:3] == (("bnd0_lower", 0, 8), ("bnd0_upper", 8, 8), ("bnd1_lower", 16, 8))
    assert dp.component_fields(dp.XFeature.HI16_ZMM, 1024)[0] == ("zmm16", 0, 64)
    assert [f[0] for f in dp.component_fields(dp.XFeature.XTILEDATA, 2048 + 100)] == ["tmm0", "tmm1"]
    assert dp.component_fields(dp.XFeature.OPMASK, 20) == (("k0", 0, 8), ("k1", 8, 8))
