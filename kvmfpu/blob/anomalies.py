"""The anomaly rules: what in a decoded XSAVE image XRSTOR, KVM_SET_XSAVE or a restore
would not take as written, and the facts a length alone tells (gdb's core sizes).

Every rule reads the image's bytes through its decode plan (kvmfpu.blob.decode_plan), never
through field objects, so checking an image builds none; every rule runs on every image.
"""

from __future__ import annotations

import struct
import weakref
from typing import Final

from kvmfpu.arch import legacy
from kvmfpu.arch import tilecfg as arch_tilecfg
from kvmfpu.arch import xfeatures as xf
from kvmfpu.arch.layout import XsaveLayout
from kvmfpu.arch.xfeatures import XCOMP_COMPACTED, name_of
from kvmfpu.blob import producers
from kvmfpu.blob.decode_plan import X87_END, X87_MASK, DecodePlan

_MXCSR_PAIR: Final = struct.Struct("<II")
_HEADER: Final = struct.Struct("<QQ")
_ZERO_48: Final = bytes(48)
_ZERO_XMM: Final = bytes(legacy.RESERVED - legacy.XMM_SPACE)
#: struct xtile_cfg: a TILECFG component cut shorter (a layout note) holds no configuration.
TILECFG_BYTES: Final = 64
#: MXCSR_MASK 0 in an image means the default mask (SDM vol. 1 §11.6.6).
DEFAULT_MXCSR_MASK: Final = 0xFFBF

_LENGTHS: weakref.WeakKeyDictionary[XsaveLayout, dict[int | None, dict[int, str]]] = (
    weakref.WeakKeyDictionary()
)


def expected_lengths(layout: XsaveLayout, xcr0: int | None = None) -> dict[int, str]:
    """The lengths a standard-format image of this host comes in, and who writes each."""
    cached = _LENGTHS.setdefault(layout, {})
    if xcr0 in cached:
        return dict(cached[xcr0])
    user = layout.user_mask
    full = layout.standard_size(user)
    out = {4096: "KVM_GET_XSAVE"}
    out.setdefault(full, "every user component: KVM_GET_XSAVE2, ptrace, core notes")
    out.setdefault(-(-full // 4096) * 4096, "QEMU's KVM_GET_XSAVE2 buffer, whole pages")
    out.setdefault(
        layout.standard_size(user & ~xf.DYNAMIC_MASK),
        "without AMX tile data: signal frames, threads without AMX permission",
    )
    if xcr0 is not None:
        out.setdefault(layout.standard_size(xcr0), f"XSAVE of XCR0 {xcr0:#x}")
    if len(cached) < 64:  # one per XCR0 a capture reports: few
        cached[xcr0] = dict(out)
    return out


def _known_length(layout: XsaveLayout, xcr0: int | None, n: int) -> bool:
    cached = _LENGTHS.get(layout)
    sizes = cached.get(xcr0) if cached is not None else None
    return n in (sizes if sizes is not None else expected_lengths(layout, xcr0))


def cut_short(plan: DecodePlan, xstate_bv: int) -> list[str]:
    """The components XSTATE_BV sets that the buffer ends before."""
    return [
        f"XSTATE_BV sets {name_of(b)} but the buffer ends at {plan.length}, "
        f"before the component ({off:#x}+{size:#x})"
        for b, off, size in plan.cut
        if xstate_bv >> b & 1
    ]


def check(
    data: bytes,
    plan: DecodePlan,
    layout: XsaveLayout,
    host: str,
    xcr0: int | None,
    mxcsr_mask: int | None,
    xfd: int,
) -> tuple[list[str], list[str]]:
    """(anomalies, notes) of the image ``data`` laid out by ``plan``: every rule, in the
    order the output shows them; the notes are the facts its length tells."""
    n = plan.length
    bv, cb = _HEADER.unpack_from(data, legacy.XSTATE_BV)
    compacted = bool(cb & XCOMP_COMPACTED)
    a = cut_short(plan, bv)
    notes: list[str] = []
    if not compacted and not _known_length(layout, xcr0, n):
        notes = gdb_notes(data, plan, layout, host, xcr0)
        if not notes:
            sizes = expected_lengths(layout, xcr0)
            known = ", ".join(f"{size} ({who})" for size, who in sorted(sizes.items()))
            a.append(f"{n} bytes is none of the lengths {host or 'this host'}'s images come in: {known}")
    reserved = data[legacy.HEADER_RESERVED : legacy.EXTENDED]
    if reserved != _ZERO_48:
        a.append(f"header reserved bytes 528-575 are not zero ({48 - reserved.count(0)} non-zero bytes)")
    if cb and not compacted:
        a.append(f"XCOMP_BV is {cb:#x} without bit 63: neither format accepts it")
    user = layout.user_mask
    outside = bv & ~user & ~(layout.supervisor_mask if compacted else 0)
    if outside:
        a.append(f"XSTATE_BV sets {xf.describe_mask(outside)} outside the host's XCR0 {user:#x}")
    if xcr0 is not None and bv & ~xcr0 & user:
        a.append(
            f"XSTATE_BV sets {xf.describe_mask(bv & ~xcr0 & user)} outside the "
            f"XCR0 the capture reports ({xcr0:#x})"
        )
    # XRSTOR loads the initial state of a component whose XSTATE_BV bit is clear (SDM
    # 13.8.1), so data there is lost on restore; MXCSR is loaded regardless (RFBM[1]|[2]).
    if not bv & xf.FP and int.from_bytes(data[:X87_END], "little") & X87_MASK != legacy.FCW_INIT:
        a.append(
            "x87 registers hold data but XSTATE_BV[0] is clear (XRSTOR loads FCW 037Fh "
            "and empty registers instead)"
        )
    if not bv & xf.SSE and data[legacy.XMM_SPACE : legacy.RESERVED] != _ZERO_XMM:
        a.append("XMM registers hold data but XSTATE_BV[1] is clear (XRSTOR loads zeros instead)")
    tilecfg = None
    for c in plan.components:
        if not bv >> c.bit & 1:
            if data.count(0, c.offset, c.offset + c.size) != c.size:
                a.append(
                    f"{name_of(c.bit)} holds data but XSTATE_BV[{c.bit}] is clear (XRSTOR "
                    "loads its initial state instead)"
                )
        elif c.bit == xf.XFeature.XTILECFG and c.size >= TILECFG_BYTES:
            tilecfg = c.offset
    mxcsr, image_mask = _MXCSR_PAIR.unpack_from(data, legacy.MXCSR)
    mask = mxcsr_mask if mxcsr_mask is not None else (image_mask or DEFAULT_MXCSR_MASK)
    if mxcsr & ~mask:
        a.append(
            f"MXCSR {mxcsr:#x} sets bits {mxcsr & ~mask:#x} outside MXCSR_MASK {mask:#x} "
            "(XRSTOR and KVM_SET_XSAVE reject it)"
        )
    if tilecfg is not None:
        why = arch_tilecfg.problem(data[tilecfg : tilecfg + TILECFG_BYTES])
        if why:  # the emulated core's XRSTOR check (kvmfpu.arch.tilecfg, SDM LDTILECFG)
            a.append(f"TILECFG is not a valid tile configuration: {why} (XRSTOR raises #GP)")
    if xfd & bv:
        a.append(
            f"XSTATE_BV sets {xf.describe_mask(xfd & bv)}, which IA32_XFD "
            f"{xfd:#x} arms: XRSTOR under that XFD raises #NM (the seed 003 host "
            "crash before b45f72177594; KVM_SET_XSAVE clears the bit after it)"
        )
    return a, notes


def gdb_notes(data: bytes, plan: DecodePlan, layout: XsaveLayout, host: str, xcr0: int | None) -> list[str]:
    """What a length that is gdb <= 13's NT_X86_XSTATE size says (kvmfpu.blob.producers):
    the producer, and the registers its Intel offsets did not copy on this layout."""
    if xcr0 is None:
        word = int.from_bytes(data[legacy.SW_RESERVED : legacy.SW_RESERVED + 8], "little")
        xcr0 = word if word & 3 == 3 else None  # ptrace/core: XCR0 at 464
    if xcr0 is None or plan.length != producers.gdb13_note_size(xcr0):
        return []
    out = [
        f"{plan.length} bytes is the NT_X86_XSTATE size gdb 13 and earlier write for XCR0 "
        f"{xcr0:#x} (X86_XSTATE_SIZE, Intel's layout), not a size the kernel writes on "
        f"{host or 'this host'}: a core from gdb's gcore"
    ]
    lost = producers.gdb13_unsaved(layout, xcr0, plan.length)
    names = [
        name
        for c in plan.components
        for name, off, size in c.fields
        if any(off < hi and lo < off + size for lo, hi in lost)
    ]
    if names:
        where = ", ".join(f"{lo:#x}-{hi - 1:#x}" for lo, hi in lost)
        out.append(
            f"that gdb copies registers at Intel's offsets: on this layout it does not "
            f"save {producers.name_ranges(names)} (bytes {where}), which read as zero "
            "here, not as the process's values"
        )
    return out
