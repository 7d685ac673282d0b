"""Copy plans for kvmfpu.linux.uabi: what the fpstate <-> uABI copies of KVM_GET/SET_XSAVE
move for one (XSTATE_BV, XCOMP_BV), worked out once per host kernel instead of on every
ioctl, and the profile switches those copies consult (a profile never changes).

A plan moves the same bytes to the same places as the kernel's copies one at a time
(__copy_xstate_to_uabi_buf, copy_uabi_to_xstate); runs contiguous on both sides are
merged. KVM_GET_XSAVE's plan is one struct: its fields, in offset order, are the fpstate
runs, init_fpstate's legacy bytes, the software bytes, XSTATE_BV and PKRU, the rest zero
padding, so one pack builds the buffer.
"""

from __future__ import annotations

import struct
from typing import Any

from kvmfpu.arch import legacy
from kvmfpu.arch import xfeatures as xf
from kvmfpu.linux.kernel import HostKernel

Copies = tuple[tuple[int, int, int], ...]
#: (slice of the fpstate, slice of the uABI buffer) pairs.
InCopies = tuple[tuple[slice, slice], ...]
#: A uABI buffer as KVM_SET_XSAVE reads it (byte-addressed; never written).
Buffer = bytes | bytearray | memoryview
PKRU_BIT = 9
LEGACY_MXCSR = xf.FP | xf.SSE | xf.YMM


def ext_plan(k: HostKernel, bv: int, xcomp_bv: int) -> Copies:
    """(offset in the kernel buffer, offset in the uABI buffer, size) for each extended
    component of ``bv`` except PKRU, coalesced."""
    key = (bv, xcomp_bv)
    cache: dict[tuple[int, int], Copies] = k.__dict__.setdefault("_uabi_plans", {})
    plan = cache.get(key)
    if plan is not None:
        return plan
    comps = k.layout.components
    if k.compacted:
        offsets = k.layout.compacted(xcomp_bv)[0]
    out: list[tuple[int, int, int]] = []
    for b in xf.bits(bv & ~xf.FPSSE & ~xf.PKRU):
        c = comps[b]
        out.append((offsets[b] if k.compacted else c.offset, c.offset, c.size))
    plan = cache[key] = coalesce(out)
    return plan


def coalesce(copies: list[tuple[int, int, int]]) -> Copies:
    """(a, b, n) copies in order, each run contiguous on both sides merged into one."""
    out: list[tuple[int, int, int]] = []
    for a, b, n in copies:
        if out and out[-1][0] + out[-1][2] == a and out[-1][1] + out[-1][2] == b:
            pa, pb, pn = out.pop()
            out.append((pa, pb, pn + n))
        else:
            out.append((a, b, n))
    return tuple(out)


class Switches:
    """A host kernel's switches the copies consult, where PKRU sits, and the plans made."""

    __slots__ = (
        "amx_oops",
        "has_xsave",
        "in_plans",
        "mxcsr_reserved",
        "out_plans",
        "pkru_always",
        "pkru_offset",
        "pve_pkru_mask",
        "xfd_clears",
    )

    def __init__(self, k: HostKernel):
        p = k.kernel
        self.amx_oops = p.has("get_xsave2_amx_oops_bug")
        self.pkru_always = p.has("pkru_always_written_bug")
        self.pve_pkru_mask = p.has("pve_set_xsave_mask_pkru")
        self.xfd_clears = p.has("xfd_clears_xstate_bv")
        self.has_xsave = k.cfg.has_xsave
        #: MXCSR bits copy_uabi_to_xstate refuses (outside mxcsr_feature_mask).
        self.mxcsr_reserved = ~k.cfg.mxcsr_feature_mask & 0xFFFF_FFFF
        comps = k.layout.components
        #: PKRU's standard-format offset (-1: the host has no PKRU component).
        self.pkru_offset = comps[PKRU_BIT].offset if PKRU_BIT in comps else -1
        self.out_plans: dict[tuple[int, int, bool, int], OutPlan] = {}
        self.in_plans: dict[tuple[int, int], InCopies] = {}


def switches(k: HostKernel) -> Switches:
    found: Switches | None = k.__dict__.get("_uabi_switches")
    if found is None:
        found = k.__dict__["_uabi_switches"] = Switches(k)
    return found


class OutPlan:
    """copy_guest_fpstate_to_uabi for one (XSTATE_BV, XCOMP_BV, PKRU written, size)."""

    __slots__ = ("args", "bv_at", "pack", "pack_into", "pkru_at", "runs", "size", "whole")

    def __init__(self, k: HostKernel, sw: Switches, bv: int, xcomp_bv: int, pkru: bool, size: int):
        mem: list[tuple[int, int, int]] = []
        init: list[tuple[int, int, int]] = []
        # x87 control/status and registers, or init_fpstate's where x87 is in its init
        # state; MXCSR with SSE or YMM, else init_fpstate's; the XMM registers with SSE.
        (mem if bv & xf.FP else init).append((0, 0, 24))
        (mem if bv & (xf.SSE | xf.YMM) else init).append((24, 24, 8))
        if bv & xf.FP:
            mem.append((32, 32, 128))
        if bv & xf.SSE:
            mem.append((160, 160, 256))
        mem += ext_plan(k, bv, xcomp_bv)
        # (uABI offset, size, struct code, constant or None)
        fields: list[tuple[int, int, str, Any]] = [(d, n, f"{n}s", (s,)) for s, d, n in coalesce(mem)]
        fields += [(d, n, f"{n}s", bytes(k.init_legacy[s : s + n])) for s, d, n in coalesce(init)]
        fields.append(
            (
                legacy.SW_RESERVED,
                legacy.HEADER - legacy.SW_RESERVED,
                f"{legacy.HEADER - legacy.SW_RESERVED}s",
                k.sw_bytes,
            )
        )
        fields.append((legacy.XSTATE_BV, 8, "Q", "bv"))
        if pkru:
            if sw.pkru_offset < 0:
                raise AssertionError("PKRU written on a host without a PKRU component")
            fields.append((sw.pkru_offset, 8, "I4x", "pkru"))  # struct pkru_state
        fields.sort(key=lambda f: f[0])
        code, at = ["<"], 0
        args: list[Any] = []
        runs: list[tuple[int, slice]] = []
        self.bv_at = self.pkru_at = -1
        for dst, n, fmt, what in fields:
            if dst < at:
                raise AssertionError(f"uABI fields overlap at {dst}")
            if dst > at:
                code.append(f"{dst - at}x")
            code.append(fmt)
            if isinstance(what, tuple):
                runs.append((len(args), slice(what[0], what[0] + n)))
            elif what == "bv":
                self.bv_at = len(args)
            elif what == "pkru":
                self.pkru_at = len(args)
            args.append(what if isinstance(what, bytes) else None)
            at = dst + n
        total = max(size, legacy.EXTENDED, at)
        if total > at:
            code.append(f"{total - at}x")
        packer = struct.Struct("".join(code))
        self.pack = packer.pack
        self.pack_into = packer.pack_into
        self.args = args
        self.runs = tuple(runs)
        self.size = size
        self.whole = total == size  # else membuf_write stops at the buffer's end


def out_plan(k: HostKernel, sw: Switches, bv: int, xcomp_bv: int, pkru: bool, size: int) -> OutPlan:
    plan = sw.out_plans[bv, xcomp_bv, pkru, size] = OutPlan(k, sw, bv, xcomp_bv, pkru, size)
    return plan


def in_plan(k: HostKernel, sw: Switches, bv: int, xcomp_bv: int) -> InCopies:
    """copy_uabi_to_guest_fpstate's copies, as (slice of the fpstate, slice of the uABI
    buffer): MXCSR alone (YMM without FP), the x87 area with MXCSR, the XMM registers,
    each extended component and PKRU (into its compacted slot where the kernel buffer is
    compacted)."""
    copies: list[tuple[int, int, int]] = []
    if bv & LEGACY_MXCSR and not bv & xf.FP:
        copies.append((24, 24, 8))
    if bv & xf.FP:
        copies.append((0, 0, 160))
    if bv & xf.SSE:
        copies.append((160, 160, 256))
    copies += ext_plan(k, bv, xcomp_bv)
    if bv & xf.PKRU:
        src = sw.pkru_offset
        dst = k.layout.compacted(xcomp_bv)[0][PKRU_BIT] if k.compacted else src
        copies.append((dst, src, 8))
    runs = coalesce(sorted(copies, key=lambda c: c[1]))
    plan = sw.in_plans[bv, xcomp_bv] = tuple((slice(s, s + n), slice(d, d + n)) for s, d, n in runs)
    return plan
