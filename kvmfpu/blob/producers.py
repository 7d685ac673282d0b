"""Producers that write XSAVE images at sizes (and offsets) of their own, not the kernel's.

gdb 13 and earlier (gdb 13.1 is Debian 12's) size a core file's NT_X86_XSTATE note from
XCR0 alone, for Intel's layout: ``X86_XSTATE_SIZE(xcr0)`` in gdbsupport/x86-xstate.h
(bminor/binutils-gdb 223f25a3b6ee) is 2696 with PKRU, 2688 with AVX-512, 1088 with MPX,
832 with AVX, else 576. Its register tables (gdb/i387-tdep.c of that era:
``xsave_avxh_offset`` 576, ``xsave_mpx_offset`` 960/1024, AVX-512 k at 1088, ZMM_H at 1152,
ZMM16-31 at 1664, PKRU at 2688) are Intel's offsets too; ``gcore`` zeroes the buffer, sets
XSTATE_BV to XCR0, and copies each register from the PTRACE_GETREGSET buffer at those
offsets. Later gdb sizes and places the note by the host's own layout
(``i386_gdbarch_tdep::xsave_layout``, ``sizeof_xsave``).

Measured here (gdb 13.1, AMD EPYC, Linux 6.18, XCR0 0xe7): ``gcore`` of a process holding
k1 = 0x1234 and known zmm0/5/7/20 wrote a 2688-byte note whose bytes 0x340-0x43f (AMD's
opmask component and the upper halves of zmm0-zmm5) were zero while the process's own
XSAVE held data there; every other byte matched the process's XSAVE (bytes 0x440-0x97f
sit where Intel's k, ZMM_H and ZMM16-31 ranges are). tests/blob/test_gdb_core.py repeats
the measurement.
"""

from __future__ import annotations

import re
from typing import Final

from kvmfpu.arch import legacy
from kvmfpu.arch import xfeatures as xf
from kvmfpu.arch.layout import XsaveLayout

# gdb <= 13: (feature mask in XCR0, offset, bytes) of each Intel component whose registers
# it copies (BNDCSR's registers are its first 16 bytes, PKRU's its first 4: the rest is
# padding the kernel leaves zero, so whole components are what is covered).
GDB13_RANGES: Final = (
    (xf.YMM, 576, 256),
    (xf.BNDREGS, 960, 64),
    (xf.BNDCSR, 1024, 64),
    (xf.OPMASK, 1088, 64),
    (xf.ZMM_HI256, 1152, 512),
    (xf.HI16_ZMM, 1664, 1024),
    (xf.PKRU, 2688, 8),
)


def gdb13_note_size(xcr0: int) -> int:
    """gdb <= 13's NT_X86_XSTATE size for ``xcr0`` (X86_XSTATE_SIZE)."""
    if xcr0 & xf.PKRU:
        return 2696
    if xcr0 & xf.AVX512:
        return 2688
    if xcr0 & xf.MPX:
        return 1088
    if xcr0 & xf.YMM:
        return 832
    return 576


def gdb13_unsaved(layout: XsaveLayout, xcr0: int, length: int) -> list[tuple[int, int]]:
    """Byte ranges of ``layout``'s components in ``xcr0`` (within ``length``) that gdb <= 13
    does not copy into its note: they hold zeros there, not the process's registers."""
    covered = bytearray(length)
    covered[: legacy.EXTENDED] = b"\1" * min(length, legacy.EXTENDED)
    for mask, off, size in GDB13_RANGES:
        if xcr0 & mask:
            covered[off : off + size] = b"\1" * max(0, min(size, length - off))
    out: list[tuple[int, int]] = []
    for bit in xf.bits(xcr0 & layout.user_mask & ~3):
        c = layout.components.get(bit)
        if c is None or c.supervisor:
            continue
        i, end = c.offset, min(c.offset + c.size, length)
        while i < end:
            j = covered.find(b"\0", i, end)
            if j < 0:
                break
            k = covered.find(b"\1", j, end)
            k = end if k < 0 else k
            if out and out[-1][1] == j:  # one component ends where the next begins
                out[-1] = (out[-1][0], k)
            else:
                out.append((j, k))
            i = k
    return out


def name_ranges(names: list[str]) -> str:
    """``["k0", ..., "k7", "zmm0_hi256", "zmm1_hi256"]`` -> ``"k0-k7, zmm0-1_hi256"``."""
    groups: list[tuple[str, str, int, int]] = []
    for name in names:
        m = re.fullmatch(r"([a-z]+)(\d+)(.*)", name)
        if m is None:
            groups.append((name, "", -1, -1))
            continue
        head, n, tail = m.group(1), int(m.group(2)), m.group(3)
        if groups and groups[-1][0] == head and groups[-1][1] == tail and groups[-1][3] == n - 1:
            groups[-1] = (head, tail, groups[-1][2], n)
        else:
            groups.append((head, tail, n, n))
    out = []
    for head, tail, lo, hi in groups:
        if lo < 0:
            out.append(head)
        elif lo == hi:
            out.append(f"{head}{lo}{tail}")
        elif tail:
            out.append(f"{head}{lo}-{hi}{tail}")
        else:
            out.append(f"{head}{lo}-{head}{hi}")
    return ", ".join(out)
