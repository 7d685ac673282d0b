"""This machine's CPUID, read with the native probe, as a :class:`HostModel`."""

from __future__ import annotations

import datetime
import platform
from functools import cache

from kvmfpu.cpus.dumps import CpuidTable
from kvmfpu.cpus.features import INDEXED_LEAVES
from kvmfpu.cpus.model import HostModel
from kvmfpu.native.xsave_probe import cpuid


def capture() -> CpuidTable:
    """Walk the leaves the way ``cpuid -r`` does: every basic and extended leaf up to the
    reported maximum; for leaves that take a subleaf, every non-zero subleaf (and 0)."""
    table: CpuidTable = {}
    for base in (0, 0x8000_0000):
        top = cpuid(base)[0]
        if not base <= top < base + 0x100:
            continue
        for leaf in range(base, top + 1):
            table[(leaf, 0)] = cpuid(leaf, 0)
            if leaf in INDEXED_LEAVES:
                for sub in range(1, 64):
                    regs = cpuid(leaf, sub)
                    if any(regs):
                        table[(leaf, sub)] = regs
    return table


@cache
def this_host(name: str = "this-host") -> HostModel:
    """A host model of the processor this process runs on."""
    table = capture()
    source = {
        "kind": "captured",
        "tool": "kvmfpu.native.hostcpuid",
        "date": datetime.date.today().isoformat(),
        "kernel": platform.release(),
    }
    return HostModel(table, name=name, source=source)
