"""Source x destination verdicts for one guest model over hosts and kernel pairs.

Each cell is a full check (check.run_destination); the source half runs once per (host,
kernel) and each destination host's /dev/kvm is built once per kernel, so a cell costs a
VM, a vCPU and the put sequence. Hosts are listed by vendor and generation (host_order);
kernel-pair tables with the same verdicts everywhere fold into one (``folds``). The page,
the JSON document and the text view are in report_html and matrix_views."""

from __future__ import annotations

import csv
import io
import os
import shlex
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from kvmfpu import cpus
from kvmfpu.blob.errors import InputError
from kvmfpu.cpus import capture
from kvmfpu.cpus.model import HostModel
from kvmfpu.kvm.profiles import NAMED, profile
from kvmfpu.kvm.system import Kvm
from kvmfpu.migrate.check import SourceRun, guest_at, run_destination, run_source, vmm_of
from kvmfpu.migrate.host_order import ordered
from kvmfpu.migrate.report import RANK, Advice, Endpoint, Finding, Report, Scope
from kvmfpu.migrate.vmm import Vmm
from kvmfpu.qemu.models import GuestModel

#: Short codes for the verdicts (CSV and the page's cells).
CODES = {"compatible": "ok", "compatible with conditions": "cond", "incompatible": "fail"}
#: The levels a cell's findings are listed in: what breaks it first.
LEVELS = ("error", "condition", "info")

Pair = tuple[str, str]


@dataclass(frozen=True)
class Cell:
    src: str
    dst: str
    src_kernel: str
    dst_kernel: str
    verdict: str
    reason: str
    #: Every finding of the check, errors first, then conditions, then notes.
    details: tuple[Finding, ...] = ()
    scope: Scope = field(default_factory=Scope, hash=False)  # Scope and Advice are mutable
    #: The what-would-work re-runs (compute(advise=True) only: each costs full checks).
    advice: tuple[Advice, ...] = field(default=(), hash=False)

    @property
    def pair(self) -> Pair:
        return (self.src_kernel, self.dst_kernel)

    @property
    def findings(self) -> tuple[str, ...]:
        """The errors and conditions, one line each."""
        return tuple(f"{f.level}: {f.text}" for f in self.details if f.level != "info")


@dataclass
class Matrix:
    guest: GuestModel
    vmm: str
    hosts: list[str]
    pairs: list[Pair]
    cells: dict[tuple[str, str, str, str], Cell] = field(default_factory=dict)
    seconds: float = 0.0
    #: Each host's model, by its name in ``hosts``.
    models: dict[str, HostModel] = field(default_factory=dict)
    #: What to pass to ``kvmfpu migrate`` for each host: the packaged name, ``this``, or
    #: the dump file's absolute path.
    given: dict[str, str] = field(default_factory=dict)
    advised: bool = False

    def cell(self, pair: Pair, src: str, dst: str) -> Cell:
        return self.cells[(pair[0], pair[1], src, dst)]

    @property
    def count(self) -> int:
        return len(self.cells)

    def counts(self) -> dict[str, int]:
        out = dict.fromkeys(CODES, 0)
        for c in self.cells.values():
            out[c.verdict] += 1
        return out

    def reproduce(self, c: Cell) -> str:
        """The ``kvmfpu migrate`` command line that gives this cell's verdict."""
        args = [
            "kvmfpu",
            "migrate",
            "--src",
            f"{self.given.get(c.src, c.src)}@{c.src_kernel}",
            "--dst",
            f"{self.given.get(c.dst, c.dst)}@{c.dst_kernel}",
            "--guest",
            self.guest.spec,
            "--vmm",
            self.vmm,
            "--no-advice",
        ]
        return shlex.join(args)

    def folds(self) -> list[list[Pair]]:
        """The kernel pairs grouped by their table: pairs whose verdicts agree in every cell
        share one group, the first of each group stands for the others (given order)."""
        groups: dict[tuple[str, ...], list[Pair]] = {}
        for pair in self.pairs:
            key = tuple(self.cell(pair, s, d).verdict for s in self.hosts for d in self.hosts)
            groups.setdefault(key, []).append(pair)
        return list(groups.values())

    def better_elsewhere(self, c: Cell) -> list[tuple[Pair, str]]:
        """Kernel pairs of this matrix under which the same two hosts do better."""
        out = []
        for pair in self.pairs:
            other = self.cell(pair, c.src, c.dst)
            if RANK[other.verdict] < RANK[c.verdict]:
                out.append((pair, other.verdict))
        return out


def pair_label(pair: Pair) -> str:
    return pair[0] if pair[0] == pair[1] else f"{pair[0]}\u2192{pair[1]}"


def kernel_pairs(items: Sequence[str]) -> list[Pair]:
    """``K`` (the same kernel on both hosts) or ``SRC:DST``."""
    out = []
    for item in items:
        a, _, b = item.partition(":")
        b = b or a
        for k in (a, b):
            profile(k)  # UnknownKernel for bad input
        if (a, b) in out:
            raise InputError(f"kernel pair {item!r} given twice in --kernels")
        out.append((a, b))
    return out


def _given(host: str | HostModel) -> str:
    """The host argument a reproduce command can take from any directory (a model handed
    in as an object: its name)."""
    if isinstance(host, HostModel):
        return host.name
    text = os.fspath(host)
    if text in cpus.names() or text in capture.THIS:
        return text
    return os.path.abspath(text)


def compute(
    guest: str | GuestModel,
    hosts: Sequence[str | HostModel] | None = None,
    kernels: Sequence[str] | None = None,
    *,
    vmm: str | Vmm = "qemu",
    advise: bool = False,
) -> Matrix:
    """Every source x destination cell for each kernel pair; ``advise``: also the
    what-would-work re-runs of each cell that is not compatible (slow: full checks each)."""
    v = vmm_of(vmm)
    g = guest_at(guest, v)  # as `kvmfpu migrate` resolves it (the VMM's QEMU)
    args: list[str | HostModel] = list(hosts) if hosts else list(cpus.names())
    loaded = [cpus.load(h) for h in args]
    labels = [h.name for h in loaded]
    if len(set(labels)) != len(labels):
        raise InputError("the same host appears twice in --hosts")
    order = ordered(loaded)
    models = {labels[i]: loaded[i] for i in order}
    pairs = kernel_pairs(kernels or list(NAMED))
    m = Matrix(
        g,
        v.label,
        list(models),
        pairs,
        models=models,
        given={labels[i]: _given(args[i]) for i in order},
        advised=advise,
    )
    t0 = time.perf_counter()
    sources: dict[tuple[str, str], SourceRun] = {}
    for ks, kd in pairs:
        dst_kvm = {h: Kvm(models[h], kd) for h in m.hosts}
        for s in m.hosts:
            run = sources.get((s, ks))
            if run is None:
                run = sources[(s, ks)] = run_source(Endpoint(models[s], ks), g, v)
            for d in m.hosts:
                r = run_destination(run, Endpoint(models[d], kd), kvm=dst_kvm[d])
                if advise and r.verdict != "compatible":
                    from kvmfpu.migrate.advice import advise as what_would_work

                    r.advice = what_would_work(r)
                m.cells[(ks, kd, s, d)] = _cell(r, ks, kd)
    m.seconds = time.perf_counter() - t0
    return m


def _cell(r: Report, ks: str, kd: str) -> Cell:
    details = tuple(f for level in LEVELS for f in r.findings if f.level == level)
    return Cell(
        r.src.host.name, r.dst.host.name, ks, kd, r.verdict, r.reason, details, r.scope, tuple(r.advice)
    )


#: Cell openings a spreadsheet runs as a formula (OWASP "CSV Injection": = + - @, tab and
#: carriage return); such a cell gets a leading apostrophe, which spreadsheets hide.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(text: str) -> str:
    """``text`` safe to open in a spreadsheet: host names come from user files."""
    return "'" + text if text.startswith(FORMULA_STARTS) else text


CSV_COLUMNS = (
    "guest",
    "vmm",
    "source",
    "source_kernel",
    "destination",
    "destination_kernel",
    "verdict",
    "reason",
    "reproduce",
)


def to_csv(m: Matrix) -> str:
    """One row per cell, hosts in the matrix's order, every kernel pair (none folded)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_COLUMNS)
    for c in m.cells.values():
        w.writerow(
            [
                csv_cell(v)
                for v in (
                    m.guest.label,
                    m.vmm,
                    c.src,
                    c.src_kernel,
                    c.dst,
                    c.dst_kernel,
                    c.verdict,
                    c.reason,
                    m.reproduce(c),
                )
            ]
        )
    return buf.getvalue()
