"""Construct schemas for the XSAVE binary layouts.

These describe the bytes for documentation, decoding and building. Hot paths (the
emulated instructions, validation, KVM get/set) use precomputed offsets instead.

Sources: Intel SDM Vol. 1 §10.5.1 (legacy region), §13.4 (header, standard and
compacted formats), §13.5 (each component); Linux ``arch/x86/include/asm/fpu/types.h``
(``fxregs_state``, ``xstate_header``, ``mpx_bndreg_state``, ``cet_user_state``,
``arch_lbr_state``, ``apx_state``) and ``arch/x86/include/uapi/asm/kvm.h``
(``struct kvm_xsave``).
"""

from __future__ import annotations

from typing import Any, Final

from construct import (
    Array,
    Bytes,
    BytesInteger,
    Construct,
    GreedyBytes,
    If,
    Int8ul,
    Int16ul,
    Int32ul,
    Int64ul,
    Padded,
    Peek,
    Pointer,
    Struct,
    this,
)

from kvmfpu.arch import legacy
from kvmfpu.arch.layout import XsaveLayout
from kvmfpu.arch.xfeatures import XFeature

U128 = BytesInteger(16, swapped=True)
U256 = BytesInteger(32, swapped=True)
U512 = BytesInteger(64, swapped=True)

st_register = Struct(
    "significand" / Int64ul,
    "sign_exponent" / Int16ul,
    "reserved" / Bytes(6),
)

_legacy_tail = (
    "mxcsr" / Int32ul,
    "mxcsr_mask" / Int32ul,
    "st" / Array(8, st_register),
    "xmm" / Array(legacy.XMM_COUNT, U128),
    "reserved" / Bytes(48),
    "sw_reserved" / Bytes(48),
)

#: The legacy region as FXSAVE64/XSAVE64 (REX.W) write it.
legacy_area = Struct(
    "fcw" / Int16ul,
    "fsw" / Int16ul,
    "ftw" / Int8ul,
    "reserved1" / Int8ul,
    "fop" / Int16ul,
    "fip" / Int64ul,
    "fdp" / Int64ul,
    *_legacy_tail,
)

#: The legacy region as the forms without REX.W write it (FIP/FDP as offset + selector).
legacy_area32 = Struct(
    "fcw" / Int16ul,
    "fsw" / Int16ul,
    "ftw" / Int8ul,
    "reserved1" / Int8ul,
    "fop" / Int16ul,
    "fip" / Int32ul,
    "fcs" / Int16ul,
    "reserved2" / Int16ul,
    "fdp" / Int32ul,
    "fds" / Int16ul,
    "reserved3" / Int16ul,
    *_legacy_tail,
)

xstate_header = Struct(
    "xstate_bv" / Int64ul,
    "xcomp_bv" / Int64ul,
    "reserved" / Bytes(48),
)

tilecfg = Struct(
    "palette" / Int8ul,
    "start_row" / Int8ul,
    "reserved" / Bytes(14),
    "colsb" / Array(16, Int16ul),
    "rows" / Array(16, Int8ul),
)

#: Each extended component's registers (padded to the host's size by :func:`xsave_area`).
COMPONENTS: Final[dict[XFeature, Construct]] = {
    XFeature.YMM: Struct("ymmh" / Array(16, U128)),
    XFeature.BNDREGS: Struct("bnd" / Array(4, Struct("lower" / Int64ul, "upper" / Int64ul))),
    XFeature.BNDCSR: Struct("bndcfgu" / Int64ul, "bndstatus" / Int64ul),
    XFeature.OPMASK: Struct("k" / Array(8, Int64ul)),
    XFeature.ZMM_HI256: Struct("zmmh" / Array(16, U256)),
    XFeature.HI16_ZMM: Struct("zmm" / Array(16, U512)),
    # SDM §13.5.6: the nine trace MSRs, then reserved space.
    XFeature.PT: Struct(
        "rtit_ctl" / Int64ul, "rtit_output_base" / Int64ul, "rtit_output_mask_ptrs" / Int64ul,
        "rtit_status" / Int64ul, "rtit_cr3_match" / Int64ul,
        "rtit_addr0_a" / Int64ul, "rtit_addr0_b" / Int64ul,
        "rtit_addr1_a" / Int64ul, "rtit_addr1_b" / Int64ul,
    ),
    XFeature.PKRU: Struct("pkru" / Int32ul, "pad" / Int32ul),
    XFeature.PASID: Struct("pasid" / Int64ul),
    XFeature.CET_U: Struct("u_cet" / Int64ul, "pl3_ssp" / Int64ul),
    XFeature.CET_S: Struct("pl0_ssp" / Int64ul, "pl1_ssp" / Int64ul, "pl2_ssp" / Int64ul),
    XFeature.HDC: Struct("pm_ctl1" / Int64ul),
    XFeature.UINTR: Struct("raw" / Bytes(48)),
    XFeature.LBR: Struct(
        "lbr_ctl" / Int64ul, "lbr_depth" / Int64ul,
        "ler_from" / Int64ul, "ler_to" / Int64ul, "ler_info" / Int64ul,
    ),
    XFeature.HWP: Struct("hwp_request" / Int64ul),
    XFeature.XTILECFG: tilecfg,
    XFeature.XTILEDATA: Struct("tmm" / Array(8, Bytes(1024))),
    XFeature.APX: Struct("egpr" / Array(16, Int64ul)),
}


def component_schema(bit: int, size: int) -> Construct:
    """The schema for one component, padded to ``size`` (the host's CPUID size)."""
    try:
        inner = COMPONENTS[XFeature(bit)]
    except (KeyError, ValueError):
        inner = Struct("raw" / Bytes(size))
    return Padded(size, inner)


def _has(mask: int) -> Any:
    return lambda ctx: bool(ctx.header.xstate_bv & mask)


def _compacted_at(layout: XsaveLayout, bit: int) -> Any:
    return lambda ctx: layout.compacted(ctx.header.xcomp_bv)[0][bit]


def _in_cb(mask: int) -> Any:
    return lambda ctx: bool(ctx.header.xcomp_bv & mask)


def xsave_area(layout: XsaveLayout, *, compacted: bool = False, rex_w: bool = True) -> Construct:
    """An XSAVE area for one host.

    Standard format: each user component at its CPUID offset, parsed when its
    XSTATE_BV bit is set. Compacted format: each component in XCOMP_BV at its compacted
    offset (64-byte alignment per CPUID ECX[1]), parsed when XSTATE_BV also has it.
    """
    fields = [
        "legacy" / (legacy_area if rex_w else legacy_area32),
        "header" / xstate_header,
    ]
    for bit, comp in sorted(layout.components.items()):
        schema = component_schema(bit, comp.size)
        name = XFeature(bit).name.lower() if bit in XFeature._value2member_map_ else f"bit{bit}"
        mask = 1 << bit
        if compacted:
            both = mask
            fields.append(name / If(
                lambda ctx, m=both: bool(ctx.header.xcomp_bv & ctx.header.xstate_bv & m),
                Pointer(_compacted_at(layout, bit), schema)))
        elif not comp.supervisor:
            fields.append(name / If(_has(mask), Pointer(comp.offset, schema)))
    return Struct(*fields)


def kvm_xsave(layout: XsaveLayout) -> Construct:
    """``struct kvm_xsave { __u32 region[1024]; __u32 extra[]; }`` in the host's standard format.

    ``area`` is the decoded view across region and extra (KVM_GET_XSAVE2 buffers are
    larger than 4096 bytes when AMX is enabled).
    """
    return Struct(
        "area" / Peek(xsave_area(layout, compacted=False)),
        "region" / Array(1024, Int32ul),
        "extra" / GreedyBytes,
    )


__all__ = [
    "COMPONENTS",
    "component_schema",
    "kvm_xsave",
    "legacy_area",
    "legacy_area32",
    "st_register",
    "this",
    "tilecfg",
    "xsave_area",
    "xstate_header",
]
