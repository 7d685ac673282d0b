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
from kvmfpu.migrate.check import guest_at, guest_findings, run_destination, run_source, vmm_of
from kvmfpu.migrate.guest_spec import is_file_spec
from kvmfpu.migrate.host_order import ordered
from kvmfpu.migrate.report import RANK, Advice, Endpoint, Finding, Report, Scope
from kvmfpu.migrate.vmm import Vmm
from kvmfpu.qemu import libvirt_cpu
from kvmfpu.qemu.models import GuestModel, UnknownModel

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
    #: What ``kvmfpu migrate --guest`` takes for this guest when it is not ``guest.spec``:
    #: a libvirt mode name as given, a guest description file's absolute path.
    guest_arg: str | None = None
    #: A guest CPU that depends on the host it starts on (libvirt's host-model, a domain's
    #: optional features): what it is on each (source host, source kernel), or why it
    #: cannot start there. Empty: one guest CPU for every source (``guest``).
    per_source: dict[Pair, GuestModel | str] = field(default_factory=dict)

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

    @property
    def guest_label(self) -> str:
        """The guest as the views title it, saying when its CPU is each source's own."""
        if self.per_source:
            return f"{self.guest_arg or self.guest.spec} (resolved on each source host)"
        if self.guest.passthrough:
            return f"{self.guest.label} (each source host's own CPU)"
        return self.guest.label

    def source_guest(self, src: str, kernel: str) -> str:
        """What the guest CPU is on one source (a -cpu label), or why it cannot start there."""
        got = self.per_source.get((src, kernel), self.guest)
        return got.label if isinstance(got, GuestModel) else f"cannot start: {got}"

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
            self.guest_arg or self.guest.spec,
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


def _guest_arg(guest: str | GuestModel) -> str | None:
    """What ``kvmfpu migrate --guest`` takes to resolve the guest as the matrix did, where
    the normalised -cpu value would not (a libvirt mode, a file)."""
    if isinstance(guest, GuestModel):
        return None
    if is_file_spec(guest):
        return os.path.abspath(guest)
    return guest.strip() if guest.strip() in libvirt_cpu.MODES[1:] else None


@dataclass(frozen=True)
class _Unit:
    """One source (host, kernel) of one matrix: its guest CPU, the source run, and a cell for
    every destination under each kernel pair with that source kernel."""

    guest: str | GuestModel
    per_source: bool
    vmm: Vmm
    src: str
    kernel: str
    pairs: tuple[Pair, ...]
    dsts: tuple[str, ...]
    advise: bool


@dataclass
class _Worker:
    """What one process keeps between units: the hosts, and each destination's /dev/kvm
    (built once per host and kernel; every run on it is a fresh VMM process)."""

    models: dict[str, HostModel]
    kvms: dict[tuple[str, str], Kvm] = field(default_factory=dict)

    def kvm(self, host: str, kernel: str) -> Kvm:
        kvm = self.kvms.get((host, kernel))
        if kvm is None:
            kvm = self.kvms[(host, kernel)] = Kvm(self.models[host], kernel)
        return kvm

    def run(self, u: _Unit) -> tuple[GuestModel | str, list[Cell]]:
        model = self.models[u.src]
        if u.per_source:
            try:
                # as `kvmfpu migrate` resolves it: on the source (check.check)
                g = guest_at(u.guest, u.vmm, host=lambda: Kvm(model, u.kernel))
            except (InputError, UnknownModel) as exc:
                return str(exc).strip('"'), [_refused(u, model, d, kd, str(exc).strip('"'))
                                             for _, kd in u.pairs for d in u.dsts]
        else:
            g = u.guest if isinstance(u.guest, GuestModel) else guest_at(u.guest, u.vmm)
        run = run_source(Endpoint(model, u.kernel), g, u.vmm)
        notes = guest_findings(g)
        cells = []
        for _, kd in u.pairs:
            for d in u.dsts:
                r = run_destination(run, Endpoint(self.models[d], kd), kvm=self.kvm(d, kd))
                r.findings[:0] = notes
                if u.advise and r.verdict != "compatible":
                    from kvmfpu.migrate.advice import advise as what_would_work

                    r.advice = what_would_work(r)
                cells.append(_cell(r, u.kernel, kd))
        return g, cells


def _refused(u: _Unit, src: HostModel, dst: str, kd: str, why: str) -> Cell:
    """A source the guest CPU cannot be resolved on: libvirt does not start the guest there
    (`kvmfpu migrate` from that source exits 2 with ``why``)."""
    f = Finding("error", "source", f"the guest cannot start on {src.name}@{u.kernel}: {why}")
    return Cell(src.name, dst, u.kernel, kd, "incompatible", f.text, (f,))


#: The process pool's own worker state (set by _start in each worker process).
_POOL_WORKER: _Worker | None = None


def _start(models: dict[str, HostModel]) -> None:
    global _POOL_WORKER
    _POOL_WORKER = _Worker(models)


def _pool_run(u: _Unit) -> tuple[GuestModel | str, list[Cell]]:
    assert _POOL_WORKER is not None
    return _POOL_WORKER.run(u)


def default_jobs() -> int:
    return os.cpu_count() or 1


class Pool:
    """Worker processes for :func:`compute` (``jobs`` of them), kept across matrices over
    the same hosts so that their destination /dev/kvm and caches are reused."""

    def __init__(self, models: dict[str, HostModel], jobs: int):
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
        self.models = models
        self.executor = ProcessPoolExecutor(
            jobs, mp_context=multiprocessing.get_context(method), initializer=_start, initargs=(models,)
        )

    def map(self, units: list[_Unit]) -> list[tuple[GuestModel | str, list[Cell]]]:
        return list(self.executor.map(_pool_run, units))

    def close(self) -> None:
        self.executor.shutdown(cancel_futures=True)

    def __enter__(self) -> Pool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def load_hosts(hosts: Sequence[str | HostModel] | None) -> tuple[dict[str, HostModel], dict[str, str]]:
    """The hosts by name in the matrix's order, and what `kvmfpu migrate` takes for each."""
    args: list[str | HostModel] = list(hosts) if hosts else list(cpus.names())
    loaded = [cpus.load(h) for h in args]
    labels = [h.name for h in loaded]
    if len(set(labels)) != len(labels):
        raise InputError("the same host appears twice in --hosts")
    order = ordered(loaded)
    return {labels[i]: loaded[i] for i in order}, {labels[i]: _given(args[i]) for i in order}


def compute(
    guest: str | GuestModel,
    hosts: Sequence[str | HostModel] | None = None,
    kernels: Sequence[str] | None = None,
    *,
    vmm: str | Vmm = "qemu",
    advise: bool = False,
    jobs: int = 1,
    pool: Pool | None = None,
) -> Matrix:
    """Every source x destination cell for each kernel pair; ``advise``: also the
    what-would-work re-runs of each cell that is not compatible (slow: full checks each).

    A guest given as text is resolved as ``kvmfpu migrate`` resolves it; when that needs
    the host (libvirt's host-model, optional features) it is resolved on each source host
    and kernel, as libvirt computes it where the guest starts and sends the result on
    migration. ``jobs`` > 1 (or a ``pool``): the sources run in worker processes; the
    cells are the same, in the same order."""
    v = vmm_of(vmm)
    models, given = load_hosts(hosts)
    pairs = kernel_pairs(kernels or list(NAMED))
    names = list(models)
    first, per_source = _probe(guest, v, models[names[0]], pairs[0][0])
    spec = guest if per_source or first is None else first
    kernels_src = list(dict.fromkeys(ks for ks, _ in pairs))
    units = [_Unit(spec, per_source, v, s, ks, tuple(p for p in pairs if p[0] == ks), tuple(names),
                   advise) for ks in kernels_src for s in names]
    t0 = time.perf_counter()
    if pool is not None:
        results = pool.map(units)
    elif min(jobs, len(units)) > 1:
        with Pool(models, min(jobs, len(units))) as own:
            results = own.map(units)
    else:
        worker = _Worker(models)
        results = [worker.run(u) for u in units]
    seconds = time.perf_counter() - t0
    by_key: dict[tuple[str, str, str, str], Cell] = {}
    on_source: dict[Pair, GuestModel | str] = {}
    for u, (g, cells) in zip(units, results, strict=True):
        on_source[(u.src, u.kernel)] = g
        by_key.update(((c.src_kernel, c.dst_kernel, c.src, c.dst), c) for c in cells)
    resolved = [g for g in on_source.values() if isinstance(g, GuestModel)]
    if not resolved:  # on no host at all: the input's fault (one line, exit 2)
        raise InputError(str(next(iter(on_source.values()))))
    m = Matrix(first or resolved[0], v.label, names, pairs, models=models, given=given,
               advised=advise, guest_arg=_guest_arg(guest), seconds=seconds,
               per_source=on_source if per_source else {})
    # the order compute always had: kernel pair, source, destination
    m.cells = {(ks, kd, s, d): by_key[(ks, kd, s, d)] for ks, kd in pairs for s in names for d in names}
    return m


def _probe(guest: str | GuestModel, v: Vmm, host: HostModel, kernel: str) -> tuple[GuestModel | None, bool]:
    """The guest resolved on the first source (None: it cannot start there), and whether
    resolving it asked for the host (then it is resolved on every source)."""
    if isinstance(guest, GuestModel):
        return guest_at(guest, v), False
    asked: list[bool] = []

    def on_host() -> Kvm:
        asked.append(True)
        return Kvm(host, kernel)

    try:
        return guest_at(guest, v, host=on_host), bool(asked)
    except (InputError, UnknownModel):
        if not asked:
            raise  # bad whatever the host: one line, exit 2
        return None, True  # this host cannot run it; the others may (each row says)


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
                    m.source_guest(c.src, c.src_kernel),
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
