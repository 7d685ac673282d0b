"""Hypothesis strategies for xsave state: buffers (valid for a host, near-valid with one
field off, garbage), XCR0 values and guest CPUID tables (leaf 0xD variants).

Needs ``hypothesis`` (the ``test`` extra); kvmfpu itself does not import it.
"""

from __future__ import annotations

import struct
from typing import Any

from hypothesis import strategies as st

from kvmfpu import cpus
from kvmfpu.arch import legacy
from kvmfpu.arch import xfeatures as xf
from kvmfpu.arch.xfeatures import bits
from kvmfpu.cpus.model import HostModel
from kvmfpu.kvm.cpuid import CpuidEntry
from kvmfpu.testing.areas import HostLike, component_data

#: How a near-valid buffer is broken (the names appear in failure reports).
NEAR_MISSES = ("reserved-header", "xcomp-bv", "bv-outside-host", "mxcsr-reserved",
               "supervisor-bv", "dynamic-bv", "fcw-reserved", "mxcsr-mask", "sw-bytes")


def _host(host: HostLike) -> HostModel:
    return host if isinstance(host, HostModel) else cpus.load(host)


def valid_xcr0(host: HostLike) -> st.SearchStrategy[int]:
    """XCR0 values XSETBV accepts on ``host``: FP, optionally SSE, YMM (with SSE), each
    group whole (MPX pair, AVX-512 triple with YMM, AMX pair), PKRU."""
    supported = _host(host).supported_xcr0
    groups = [xf.SSE, xf.YMM | xf.SSE, xf.MPX, xf.AVX512 | xf.YMM | xf.SSE, xf.PKRU, xf.XTILE,
              xf.APX]
    usable = [g for g in groups if supported & g == g]
    return st.lists(st.sampled_from(usable), unique=True).map(
        lambda gs: xf.FP | _or(gs)) if usable else st.just(xf.FP)


def xcr0_values(host: HostLike) -> st.SearchStrategy[int]:
    """Valid values, valid values with one bit flipped, and arbitrary 64-bit values."""
    valid = valid_xcr0(host)
    flipped = st.tuples(valid, st.integers(0, 63)).map(lambda t: t[0] ^ (1 << t[1]))
    return st.one_of(valid, valid, flipped, st.integers(0, (1 << 64) - 1))


def _or(values: list[int]) -> int:
    out = 0
    for v in values:
        out |= v
    return out


@st.composite
def valid_xsave(draw: Any, host: HostLike, *, size: int = 4096, features: int | None = None
                ) -> bytearray:
    """A standard-format buffer KVM_SET_XSAVE accepts on ``host`` (6.6+ rules): XSTATE_BV
    within the host's user features that fit in ``size``, valid MXCSR, zero reserved
    header, random register contents."""
    model = _host(host)
    layout = model.layout
    allowed = (model.supported_xcr0 if features is None else features) & ~xf.SUPERVISOR_MASK
    allowed &= ~_too_big(model, allowed, size)
    bv = draw(st.integers(0, (1 << 64) - 1)) & allowed
    buf = bytearray(size)
    mask = model.behaviour.mxcsr_mask
    legacy_bytes = draw(st.binary(min_size=160, max_size=160))
    buf[0:160] = legacy_bytes
    struct.pack_into("<I", buf, legacy.MXCSR, draw(st.integers(0, 0xFFFF_FFFF)) & mask)
    struct.pack_into("<I", buf, legacy.MXCSR_MASK, mask)
    buf[legacy.XMM_SPACE:legacy.RESERVED] = draw(st.binary(min_size=256, max_size=256))
    struct.pack_into("<QQ", buf, legacy.XSTATE_BV, bv, 0)
    for b in bits(bv & ~xf.FPSSE):
        c = layout.components[b]
        if b in (9, 17):      # PKRU padding, TILECFG palette: keep them architecturally valid
            data = component_data(b, c.size, draw(st.integers(0, 255)))
        else:
            data = draw(st.binary(min_size=c.size, max_size=c.size))
        buf[c.offset:c.offset + c.size] = data
    return buf


def _too_big(model: HostModel, features: int, size: int) -> int:
    """Components that end beyond ``size`` bytes in the standard format."""
    out = 0
    for b in bits(features & ~xf.FPSSE):
        c = model.layout.components.get(b)
        if c is None or c.offset + c.size > size:
            out |= 1 << b
    return out


@st.composite
def near_valid_xsave(draw: Any, host: HostLike, *, size: int = 4096) -> tuple[str, bytearray]:
    """(what was broken, buffer): a valid buffer with exactly one field off."""
    model = _host(host)
    buf = draw(valid_xsave(model, size=size))
    how = draw(st.sampled_from(NEAR_MISSES))
    bv = struct.unpack_from("<Q", buf, legacy.XSTATE_BV)[0]
    if how == "reserved-header":
        buf[draw(st.integers(legacy.HEADER_RESERVED, legacy.EXTENDED - 1))] = draw(st.integers(1, 255))
    elif how == "xcomp-bv":
        struct.pack_into("<Q", buf, legacy.XCOMP_BV, draw(st.integers(1, (1 << 64) - 1)))
    elif how == "bv-outside-host":
        outside = [b for b in range(64) if not model.supported_xcr0 >> b & 1]
        struct.pack_into("<Q", buf, legacy.XSTATE_BV, bv | 1 << draw(st.sampled_from(outside)))
    elif how == "mxcsr-reserved":
        reserved = ~model.behaviour.mxcsr_mask & 0xFFFF_FFFF
        bit = draw(st.sampled_from([i for i in range(32) if reserved >> i & 1]))
        struct.pack_into("<I", buf, legacy.MXCSR, struct.unpack_from("<I", buf, legacy.MXCSR)[0]
                         | 1 << bit)
        struct.pack_into("<Q", buf, legacy.XSTATE_BV, bv | draw(st.sampled_from([1, 2, 4, 3])))
    elif how == "supervisor-bv":
        struct.pack_into("<Q", buf, legacy.XSTATE_BV,
                         bv | 1 << draw(st.sampled_from([8, 10, 11, 12, 13, 14, 15, 16])))
    elif how == "dynamic-bv":
        struct.pack_into("<Q", buf, legacy.XSTATE_BV, bv | xf.XTILEDATA)
    elif how == "fcw-reserved":
        struct.pack_into("<H", buf, legacy.FCW, 0xFFFF)
    elif how == "mxcsr-mask":
        struct.pack_into("<I", buf, legacy.MXCSR_MASK, draw(st.integers(0, 0xFFFF_FFFF)))
    else:
        buf[464:512] = draw(st.binary(min_size=48, max_size=48))
    return how, buf


def garbage_xsave(size: int = 4096) -> st.SearchStrategy[bytes]:
    return st.binary(min_size=size, max_size=size)


def xsave_blobs(host: HostLike, *, size: int = 4096) -> st.SearchStrategy[bytes]:
    """Valid, near-valid and garbage buffers, mixed."""
    return st.one_of(valid_xsave(host, size=size).map(bytes),
                     near_valid_xsave(host, size=size).map(lambda t: bytes(t[1])),
                     garbage_xsave(size))


def leaf_0xd(entries: list[CpuidEntry], xcr0: int, host: HostModel) -> list[CpuidEntry]:
    """``entries`` with leaf 0xD restricted to ``xcr0`` (subleaf 0 mask and sizes; the
    subleaves of removed components dropped)."""
    size = host.layout.standard_size(xcr0)
    out = []
    for e in entries:
        if e.function != 0xD:
            out.append(e)
        elif e.index == 0:
            out.append(e._replace(eax=xcr0 & 0xFFFF_FFFF, edx=xcr0 >> 32, ebx=size, ecx=size))
        elif e.index == 1 or xcr0 >> e.index & 1:
            out.append(e)
    return out


@st.composite
def guest_cpuids(draw: Any, supported: list[CpuidEntry], host: HostLike
                 ) -> tuple[str, list[CpuidEntry]]:
    """(kind, table): KVM_GET_SUPPORTED_CPUID as is, with leaf 0xD trimmed to a valid
    XCR0 subset, without XSAVE (leaf 1 bit 26 clear, no leaf 0xD), or empty."""
    model = _host(host)
    kind = draw(st.sampled_from(["full", "trimmed", "no-xsave", "empty"]))
    if kind == "full":
        return kind, list(supported)
    if kind == "empty":
        return kind, []
    if kind == "no-xsave":
        return kind, [e._replace(ecx=e.ecx & ~(1 << 26)) if e.function == 1 else e
                      for e in supported if e.function != 0xD]
    d0 = next((e for e in supported if (e.function, e.index) == (0xD, 0)), None)
    offered = 0 if d0 is None else d0.eax | d0.edx << 32
    xcr0 = draw(valid_xcr0(model)) & offered | xf.FP
    return kind, leaf_0xd(list(supported), xcr0, model)
