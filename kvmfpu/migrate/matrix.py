"""Source x destination verdicts for one guest model over hosts and kernel pairs.

Each cell is a full check (check.run_destination); the source half runs once per (host,
kernel) and each destination host's /dev/kvm is built once per kernel, so a cell costs a
VM, a vCPU and the put sequence."""

from __future__ import annotations

import csv
import io
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from kvmfpu import cpus
from kvmfpu.blob.errors import InputError
from kvmfpu.kvm.profiles import NAMED, profile
from kvmfpu.kvm.system import Kvm
from kvmfpu.migrate.check import SourceRun, run_destination, run_source, vmm_of
from kvmfpu.migrate.report import Endpoint, Report
from kvmfpu.migrate.vmm import Vmm
from kvmfpu.qemu.models import GuestModel, resolve

#: Short codes for the verdicts (CSV and the page's cells).
CODES = {"compatible": "ok", "compatible with conditions": "cond", "incompatible": "fail"}


@dataclass(frozen=True)
class Cell:
    src: str
    dst: str
    src_kernel: str
    dst_kernel: str
    verdict: str
    reason: str
    findings: tuple[str, ...] = ()


@dataclass
class Matrix:
    guest: GuestModel
    vmm: str
    hosts: list[str]
    pairs: list[tuple[str, str]]
    cells: dict[tuple[str, str, str, str], Cell] = field(default_factory=dict)
    seconds: float = 0.0

    def cell(self, pair: tuple[str, str], src: str, dst: str) -> Cell:
        return self.cells[(pair[0], pair[1], src, dst)]

    @property
    def count(self) -> int:
        return len(self.cells)

    def counts(self) -> dict[str, int]:
        out = dict.fromkeys(CODES, 0)
        for c in self.cells.values():
            out[c.verdict] += 1
        return out


def kernel_pairs(items: Sequence[str]) -> list[tuple[str, str]]:
    """``K`` (the same kernel on both hosts) or ``SRC:DST``."""
    out = []
    for item in items:
        a, _, b = item.partition(":")
        b = b or a
        for k in (a, b):
            profile(k)                    # UnknownKernel for bad input
        out.append((a, b))
    return out


def compute(guest: str | GuestModel, hosts: Sequence[str] | None = None,
            kernels: Sequence[str] | None = None, *, vmm: str | Vmm = "qemu") -> Matrix:
    g = guest if isinstance(guest, GuestModel) else resolve(guest)
    v = vmm_of(vmm)
    names = list(hosts) if hosts else list(cpus.names())
    models = {h: cpus.load(h) for h in names}
    labels = [models[h].name for h in names]
    if len(set(labels)) != len(labels):
        raise InputError("the same host appears twice in --hosts")
    pairs = kernel_pairs(kernels or list(NAMED))
    m = Matrix(g, v.label, labels, pairs)
    t0 = time.perf_counter()
    sources: dict[tuple[str, str], SourceRun] = {}
    for ks, kd in pairs:
        dst_kvm = {h: Kvm(models[h], kd) for h in names}
        for s in names:
            run = sources.get((s, ks))
            if run is None:
                run = sources[(s, ks)] = run_source(Endpoint(models[s], ks), g, v)
            for d in names:
                r = run_destination(run, Endpoint(models[d], kd), kvm=dst_kvm[d])
                m.cells[(ks, kd, models[s].name, models[d].name)] = _cell(r, ks, kd)
    m.seconds = time.perf_counter() - t0
    return m


def _cell(r: Report, ks: str, kd: str) -> Cell:
    shown = tuple(f"{f.level}: {f.text}" for f in r.findings if f.level != "info")
    return Cell(r.src.host.name, r.dst.host.name, ks, kd, r.verdict, r.reason, shown)


#: Cell openings a spreadsheet runs as a formula (OWASP "CSV Injection": = + - @, tab and
#: carriage return); such a cell gets a leading apostrophe, which spreadsheets hide.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(text: str) -> str:
    """``text`` safe to open in a spreadsheet: host names come from user files."""
    return "'" + text if text.startswith(FORMULA_STARTS) else text


def to_csv(m: Matrix) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["guest", "vmm", "source", "source_kernel", "destination", "destination_kernel",
                "verdict", "reason"])
    for c in m.cells.values():
        w.writerow([csv_cell(v) for v in (m.guest.label, m.vmm, c.src, c.src_kernel, c.dst,
                                          c.dst_kernel, c.verdict, c.reason)])
    return buf.getvalue()
