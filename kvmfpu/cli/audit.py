"""``kvmfpu audit``: every guest and stored state file against every host class."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import stat
import sys
import time
from typing import IO, Any

from kvmfpu.cli.common import UsageError, check_output, max_size, one_line, write_output

#: Checkpoint lines are made durable at most this often (an fsync per verdict is slow).
FSYNC_SECONDS = 2.0


def add_parser(sub: Any) -> None:
    a = sub.add_parser(
        "audit",
        help="which guests and stored snapshots come back on which host classes",
        description="Reads a fleet inventory (host classes: CPU, kernel, VMM, count) and a "
        "population (guest CPUs and state files), reduces every file to its state "
        "signature, runs each distinct (signature or guest, source class) once "
        "through the migration check against every destination class and writes "
        "one JSON Lines row per file or guest and destination. Exit status 0: "
        "everything comes back; 1: something is incompatible; 2: bad input or a "
        "file that could not be checked.",
    )
    a.add_argument(
        "--fleet",
        required=True,
        metavar="FILE",
        help="host classes: TOML ([[class]] name, host, kernel, vmm, count), JSON "
        "or CSV (name,host,kernel,vmm,count)",
    )
    a.add_argument(
        "--population",
        metavar="FILE",
        help="TOML or JSON with [[guests]] (name, cpu, source, count) and "
        "[[files]] (path: a file or a tree, source, guest, format)",
    )
    a.add_argument("--source", metavar="CLASS", help="the class the --guest and --files given here run on")
    a.add_argument(
        "--guest",
        action="append",
        default=[],
        metavar="CPU",
        help="a guest CPU (QEMU -cpu value or libvirt mode) on --source; repeatable",
    )
    a.add_argument(
        "--files",
        action="append",
        default=[],
        metavar="PATH",
        help="a state file or directory tree taken on --source; repeatable",
    )
    a.add_argument("--files-guest", metavar="CPU", help="the guest CPU the --files ran with")
    a.add_argument(
        "--to", action="append", metavar="CLASS", help="destination class (repeatable; default: every class)"
    )
    a.add_argument(
        "-o",
        "--output",
        metavar="FILE",
        help="the JSON Lines rows ('-': standard output); while it runs, verdicts "
        "are checkpointed to FILE.partial",
    )
    a.add_argument(
        "--resume",
        action="store_true",
        help="reuse the verdicts of an earlier run of -o FILE (its FILE.partial "
        "after an interruption, else FILE)",
    )
    a.add_argument("--html", metavar="FILE", help="a self-contained HTML report")
    a.add_argument(
        "--json", action="store_true", help="print the kvmfpu-audit-summary/1 document instead of the table"
    )
    a.add_argument(
        "--jobs",
        type=_jobs,
        default=None,
        metavar="N",
        help="local worker processes (default: the CPU count)",
    )
    a.add_argument(
        "--scheduler",
        metavar="tcp://HOST:PORT",
        help="run on this Dask distributed cluster (pip install 'kvmfpu[dask]'); "
        "the workers must see the files at the same paths",
    )
    a.add_argument(
        "--max-size",
        type=max_size,
        default=256 << 20,
        metavar="BYTES",
        help="largest state decoded from one file",
    )
    a.add_argument(
        "--progress",
        choices=("auto", "always", "never"),
        default="auto",
        help="progress on stderr (auto: when stderr is a terminal)",
    )
    a.set_defaults(func=cmd_audit)


def _jobs(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of processes: {text[:40]!r}") from None
    if not 1 <= n <= 1024:
        raise argparse.ArgumentTypeError("--jobs must be 1 to 1024")
    return n


def _population(args: argparse.Namespace, classes: Any) -> Any:
    from kvmfpu.audit.inventory import FilesEntry, GuestEntry, Population, load_population

    pop = load_population(args.population, classes) if args.population else Population((), ())
    if (args.guest or args.files) and not args.source:
        raise UsageError("--guest and --files need --source CLASS")
    if args.source and args.source not in {c.name for c in classes}:
        raise UsageError(f"--source {args.source!r} is not a class of the fleet")
    guests = tuple(GuestEntry(g, g, args.source) for g in args.guest)
    for p in args.files:
        if not os.path.exists(p):
            raise UsageError(f"{p}: no such file or directory")
    files = tuple(FilesEntry(os.path.abspath(p), args.source, args.files_guest) for p in args.files)
    pop = Population(pop.guests + guests, pop.files + files)
    if not pop.guests and not pop.files:
        raise UsageError("nothing to audit: give --population, or --source with --guest/--files")
    return pop


class _Checkpoint:
    """FILE.partial: the verdicts so far, one JSON line each, appended and made durable as
    they arrive, so an interrupted audit resumes without redoing them."""

    def __init__(self, path: str, resume: bool, head: dict[str, Any]) -> None:
        self.path = path
        flags = os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            if resume and os.path.lexists(path):
                fd = os.open(path, flags)
                st = os.fstat(fd)
                if not stat.S_ISREG(st.st_mode) or st.st_uid not in (os.geteuid(), 0):
                    os.close(fd)
                    raise UsageError(f"{path}: not a regular file of this user")
            else:
                fd = os.open(path, flags | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            raise UsageError(
                f"{path} exists: an earlier audit was interrupted; --resume continues it, or remove the file"
            ) from None
        except OSError as exc:
            raise UsageError(f"{path}: {exc.strerror}") from None
        self.f: IO[str] = os.fdopen(fd, "a", encoding="utf-8")
        self._synced = time.monotonic()
        if not resume:
            self._write([head])

    def _write(self, objs: list[dict[str, Any]]) -> None:
        self.f.write("".join(json.dumps(o, sort_keys=True) + "\n" for o in objs))
        self.f.flush()
        if time.monotonic() - self._synced > FSYNC_SECONDS:
            os.fsync(self.f.fileno())
            self._synced = time.monotonic()

    def add(self, outcomes: list[Any]) -> None:
        from kvmfpu.audit.results import verdict_line

        self._write([verdict_line(o) for o in outcomes])

    def close(self, remove: bool) -> None:
        with contextlib.suppress(OSError):
            self.f.flush()
            os.fsync(self.f.fileno())
        self.f.close()
        if remove:
            with contextlib.suppress(OSError):
                os.unlink(self.path)


def _earlier(args: argparse.Namespace) -> Any:
    from kvmfpu.audit.results import Earlier, read_earlier
    from kvmfpu.blob.sources import read_bytes

    if not args.resume:
        return Earlier()
    if not args.output or args.output == "-":
        raise UsageError("--resume needs -o FILE (the output of the run it continues)")
    for path in (args.output + ".partial", args.output):
        if os.path.lexists(path):
            return read_earlier(read_bytes(path, 1 << 34).decode("utf-8", "replace"), path)
    raise UsageError(f"--resume: neither {args.output}.partial nor {args.output} exists")


def cmd_audit(args: argparse.Namespace) -> int:
    from kvmfpu.audit import engine, results
    from kvmfpu.audit.inventory import load_fleet
    from kvmfpu.cli.document import document

    check_output(args.output, args.html)
    classes = load_fleet(args.fleet)
    pop = _population(args, classes)
    earlier = _earlier(args)
    asked = {"population": {"guests": len(pop.guests), "files": len(pop.files)}}
    show = args.progress == "always" or (args.progress == "auto" and sys.stderr.isatty())
    progress = engine.Progress(show=show)
    jobs = args.jobs or (1 if args.scheduler else engine.cpu_count())
    ckpt = None
    if args.output and args.output != "-":
        head = {"schema": results.HEADER, "checkpoint": True}
        ckpt = _Checkpoint(args.output + ".partial", args.resume, head)
    finished = False
    try:
        with engine.Engine(jobs, args.scheduler) as eng:
            audit = engine.run(
                classes,
                pop,
                destinations=args.to,
                engine=eng,
                max_size=args.max_size,
                known=earlier.outcomes(),
                on_result=ckpt.add if ckpt else None,
                progress=progress,
            )
        if args.output:
            head = document(results.HEADER, results.header(audit, asked))
            rows = results.rows(audit)
            write_output(args.output, results.jsonl(head, results.verdicts(audit), rows))
        if args.html:
            from kvmfpu.audit.report_html import render

            write_output(args.html, render(audit, results.rows(audit)), stdout=False)
        finished = True
    except KeyboardInterrupt:
        if ckpt is not None:
            print(
                f"kvmfpu: the verdicts so far are in {ckpt.path}; run again with --resume to continue",
                file=sys.stderr,
            )
        raise
    finally:
        if ckpt is not None:
            ckpt.close(remove=finished)
    out = sys.stderr if args.output == "-" else sys.stdout
    if args.json:
        counts = results.counts(audit)
        print(
            json.dumps(
                document(
                    "kvmfpu-audit-summary/1",
                    {
                        "destinations": counts,
                        "distinct_tasks": audit.distinct_tasks,
                        "tasks_run": audit.tasks_run,
                        "engine": audit.engine,
                        "seconds": round(audit.seconds, 3),
                    },
                ),
                indent=2,
            ),
            file=out,
        )
    else:
        for line in results.summary(audit).splitlines():
            print(one_line(line), file=out)
        print(
            f"{len(audit.items)} items, {audit.distinct_tasks} distinct source runs "
            f"({audit.tasks_run} run now) x {len(audit.destinations)} destinations, on "
            f"{audit.engine}, in {audit.seconds:.1f} s",
            file=out,
        )
    seen = {v for c in results.counts(audit) for v, n in c["verdicts"].items() if n}
    return 1 if "incompatible" in seen else 2 if results.ERROR in seen else 0
