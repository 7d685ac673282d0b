"""The audit: read the population down to signatures, run each distinct (signature or guest
CPU, source class) once against every destination class, and fan the verdicts back out to
one row per file (or guest entry) and destination class.

Engines: in this process (``jobs=1``), a local process pool (``jobs>1``), or an existing
Dask distributed cluster (``scheduler="tcp://HOST:PORT"``, the optional extra
``kvmfpu[dask]``). All three run the same pure functions (kvmfpu.audit.work) on the same
tasks and the rows are sorted before they are written, so their output is byte-identical.
On Dask, files are read by the workers where they are (the paths must be the same there);
only signatures (with one image per distinct signature) and verdicts travel. A task whose
worker dies is run again by Dask; results are keyed by task, so none is lost or counted
twice.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from typing import Any, Final, TypeVar

from kvmfpu.audit.inventory import HostClass, Population, walk
from kvmfpu.audit.work import FileRead, Outcome, Task, read_files, run_task
from kvmfpu.blob.errors import InputError

#: Files read per work unit (a unit's cost is about that of one verdict task).
FILE_BATCH: Final = 32
T = TypeVar("T")
R = TypeVar("R")


@dataclass(slots=True)
class Item:
    """One row subject before its destination: a file (all its vCPUs) or a guest entry."""

    id: str
    kind: str  # "file" or "guest"
    name: str
    source: HostClass
    guest: str | None
    count: int = 1
    tasks: tuple[str, ...] = ()  # one per vCPU (files) or one (guests)
    signatures: tuple[str, ...] = ()
    error: str | None = None
    notes: tuple[str, ...] = ()


@dataclass
class Progress:
    """Counts for the progress line (stderr, only when it is a terminal)."""

    files: int = 0
    signatures: int = 0
    verdicts: int = 0
    total_verdicts: int = 0
    started: float = field(default_factory=time.monotonic)
    show: bool = False
    _last: float = 0.0

    def tick(self, final: bool = False) -> None:
        if not self.show:
            return
        now = time.monotonic()
        if not final and now - self._last < 0.2:
            return
        self._last = now
        spent = max(now - self.started, 1e-9)
        rate = self.verdicts / spent
        left = self.total_verdicts - self.verdicts
        eta = f", ETA {left / rate:.0f} s" if rate and left > 0 else ""
        print(
            f"\rkvmfpu audit: {self.files} files, {self.signatures} signatures, "
            f"{self.verdicts}/{self.total_verdicts} verdicts, {rate:,.0f}/s{eta}   ",
            end="\n" if final else "",
            file=sys.stderr,
            flush=True,
        )


class Engine:
    """Runs work units in this process, a process pool, or on a Dask cluster."""

    def __init__(self, jobs: int = 1, scheduler: str | None = None) -> None:
        self.jobs, self.scheduler = max(1, jobs), scheduler
        self._pool: ProcessPoolExecutor | None = None
        self._client: Any = None

    def __enter__(self) -> Engine:
        if self.scheduler:
            try:
                from distributed import Client
            except ImportError:
                raise InputError(
                    "--scheduler needs Dask: pip install 'kvmfpu[dask]' (dask and distributed)"
                ) from None
            try:
                self._client = Client(self.scheduler, timeout="10s")  # type: ignore[no-untyped-call,unused-ignore]
            except (OSError, TimeoutError) as exc:
                raise InputError(f"cannot reach the Dask scheduler {self.scheduler}: {exc}") from None
        elif self.jobs > 1:
            import multiprocessing

            # fork: the workers inherit the loaded model and never re-import __main__
            # (kvmfpu's __main__ runs the command line; spawn and forkserver import it).
            method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
            self._pool = ProcessPoolExecutor(self.jobs, mp_context=multiprocessing.get_context(method))
        return self

    def __exit__(self, *exc: object) -> None:
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)
        if self._client is not None:
            self._client.close()

    @property
    def label(self) -> str:
        return (
            f"dask {self.scheduler}"
            if self.scheduler
            else f"{self.jobs} local processes"
            if self.jobs > 1
            else "this process"
        )

    def map(self, fn: Callable[[T], R], items: Sequence[T], keys: Sequence[str]) -> Iterator[tuple[str, R]]:
        """(key, fn(item)) for each item, in completion order; each key once."""
        if self._client is not None:
            from distributed import as_completed as dask_completed

            futures = self._client.map(
                fn, items, key=[f"kvmfpu-audit-{fn.__name__}-{k}" for k in keys], pure=False, retries=3
            )
            by = {f.key: k for f, k in zip(futures, keys, strict=True)}
            for fut in dask_completed(futures):  # type: ignore[no-untyped-call,unused-ignore]
                yield by[fut.key], fut.result()
        elif self._pool is not None:
            pending = {self._pool.submit(fn, it): k for it, k in zip(items, keys, strict=True)}
            for fut in as_completed(pending):
                yield pending[fut], fut.result()
        else:
            for it, k in zip(items, keys, strict=True):
                yield k, fn(it)


@dataclass
class Audit:
    classes: tuple[HostClass, ...]
    destinations: tuple[HostClass, ...]
    items: list[Item]
    outcomes: dict[str, Outcome]  # by Outcome.id
    engine: str
    seconds: float
    distinct_tasks: int
    tasks_run: int


def _batches(seq: Sequence[T], n: int) -> list[tuple[T, ...]]:
    return [tuple(seq[i : i + n]) for i in range(0, len(seq), n)]


def run(
    classes: tuple[HostClass, ...],
    population: Population,
    *,
    destinations: Iterable[str] | None = None,
    engine: Engine | None = None,
    max_size: int = 256 << 20,
    known: dict[str, Outcome] | None = None,
    on_result: Callable[[list[Outcome]], None] | None = None,
    progress: Progress | None = None,
    reads: Iterable[FileRead] = (),
) -> Audit:
    """The audit of ``population`` against ``destinations`` (default: every class).
    ``known`` holds verdicts an earlier run already computed (by Outcome.id): their tasks
    are not run again. ``on_result`` sees each task's verdicts as they arrive (the CLI's
    checkpoint). ``reads`` are files already reduced to signatures elsewhere (a
    signature is all the audit needs of a file)."""
    t0 = time.perf_counter()
    by_name = {c.name: c for c in classes}
    wanted = list(destinations) if destinations is not None else [c.name for c in classes]
    unknown = [d for d in wanted if d not in by_name]
    if unknown:
        raise InputError(f"unknown destination class(es): {', '.join(unknown)}")
    dsts = tuple(by_name[d] for d in dict.fromkeys(wanted))
    known = dict(known or {})
    progress = progress or Progress()
    engine = engine or Engine()
    items: list[Item] = []
    for g in population.guests:
        items.append(Item(f"guest:{g.name}@{g.source}", "guest", g.name, by_name[g.source], g.cpu, g.count))
    paths = []
    for entry in population.files:
        src = by_name[entry.source]
        for path in walk(entry.path):
            paths.append((path, src.name, src.host, entry.guest, entry.fmt, max_size))
    blobs: dict[str, bytes] = {}
    tcg: dict[str, int] = {}
    batches = _batches(paths, FILE_BATCH)
    got: dict[str, list[FileRead]] = {}
    for key, batch in engine.map(read_files, batches, [str(i) for i in range(len(batches))]):
        got[key] = batch
        progress.files += len(batch)
        progress.tick()
    done_reads = [fr for i in range(len(batches)) for fr in got[str(i)]]
    for group in (done_reads, reads):
        for fr in group:
            for v in fr.vcpus:
                if v.blob and v.digest not in blobs:
                    blobs[v.digest] = v.blob
                tcg[v.digest] = v.restores_init
            items.append(
                Item(
                    f"file:{fr.path}",
                    "file",
                    fr.path,
                    by_name[fr.source],
                    fr.guest,
                    signatures=tuple(v.digest for v in fr.vcpus),
                    error=fr.error,
                    notes=fr.notes,
                )
            )
    progress.signatures = len(blobs)
    tasks: dict[str, Task] = {}
    for item in items:
        if item.error:
            continue
        if item.guest is None:
            item.error = (
                "the file does not say which guest CPU it ran with: give `guest` "
                "in the population's files entry"
            )
            continue
        keys = []
        for digest in item.signatures or (None,):
            t = Task(
                item.guest,
                item.source,
                dsts,
                digest,
                blobs[digest] if digest else None,
                tcg.get(digest, 0) if digest else 0,
            )
            tasks.setdefault(t.key, t)
            keys.append(t.key)
        item.tasks = tuple(keys)
    outcomes: dict[str, Outcome] = {
        oid: known[oid] for k in tasks for d in dsts if (oid := f"{k}/{d.name}") in known
    }
    order = sorted(k for k in tasks if any(f"{k}/{d.name}" not in known for d in dsts))
    progress.total_verdicts = len(order) * len(dsts)
    failed: dict[str, str] = {}
    try:
        for key, answer in engine.map(_run_task_safe, [tasks[k] for k in order], order):
            if isinstance(answer, str):
                failed[key] = answer
            else:
                for got_one in answer:
                    outcomes[got_one.id] = got_one
                if on_result is not None:
                    on_result(answer)
            progress.verdicts += len(dsts)
            progress.tick()
    finally:
        progress.tick(final=True)
    for item in items:
        bad = next((failed[k] for k in item.tasks if k in failed), None)
        if bad is not None:
            item.error = bad
    return Audit(
        classes, dsts, items, outcomes, engine.label, time.perf_counter() - t0, len(tasks), len(order)
    )


def _run_task_safe(task: Task) -> list[Outcome] | str:
    """run_task, with a guest the source's QEMU cannot resolve reported as that item's
    error instead of ending the audit."""
    from kvmfpu.qemu.models import UnknownModel

    try:
        return run_task(task)
    except (UnknownModel, InputError) as exc:
        return str(exc) or type(exc).__name__


def cpu_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
