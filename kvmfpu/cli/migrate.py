"""``kvmfpu migrate`` and ``kvmfpu matrix`` (``kvmfpu models``: cli/models.py)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from kvmfpu.cli.common import UsageError, snapshot_option

#: What --guest (and validate --guest-cpu) take: kvmfpu.migrate.guest_spec.
GUEST_HELP = ("QEMU -cpu value (Model[-vN][,+f,-f,f=on...], host, max), libvirt's "
              "host-passthrough, host-model or maximum, or a file: a libvirt domain XML "
              "(its <cpu>) or a QEMU query-cpu-model-expansion reply")


def add_parser(sub: Any) -> None:
    from kvmfpu.blob.sources import FORMATS
    from kvmfpu.migrate.vmm import VMMS
    m = sub.add_parser(
        "migrate", help="can guest state from SRC be restored on DST?",
        description="Runs the migration on the models: the guest on the source, the VMM's "
                    "save, the transport, the destination's KVM_SET_* in the VMM's order, "
                    "then compares registers, XCR0, xstate MSRs and the guest's own restore. "
                    "Exit status 0: compatible (conditions listed); 1: incompatible; 2: bad "
                    "input.")
    m.add_argument("--src", required=True, metavar="HOST[@KERNEL]",
                   help="source host (model name or dump file) and kernel (default: newest)")
    m.add_argument("--dst", required=True, metavar="HOST[@KERNEL]", help="destination")
    m.add_argument("--guest", required=True, metavar="CPU", help=GUEST_HELP)
    m.add_argument("--blob", help="the state that left the source (a KVM_GET_XSAVE capture, "
                                  "core file or QEMU stream) instead of the modelled guest's")
    snapshot_option(m, what="--blob")                 # qcow2 internal snapshots
    m.add_argument("--format", choices=FORMATS, help="--blob's format (default: detected)")
    m.add_argument("--vmm", default="qemu", metavar="NAME[@VERSION]",
                   help=f"how the state travels (qemu: field by field; raw and the named "
                        f"snapshot VMMs: the buffer verbatim); one of {', '.join(VMMS)}; "
                        "qemu, firecracker and cloud-hypervisor take @VERSION (default: the "
                        "newest modelled)")
    m.add_argument("--dst-vmm", metavar="NAME[@VERSION]",
                   help="the destination's VMM when it differs (e.g. qemu@6.2, raw-noperm)")
    m.add_argument("--no-advice", action="store_true", help="skip the what-would-work re-runs")
    m.add_argument("--json", action="store_true", help="print the kvmfpu-migrate/1 document")
    m.set_defaults(func=cmd_migrate)

    x = sub.add_parser(
        "matrix", help="verdicts for every source x destination host and kernel pair",
        description="Runs `kvmfpu migrate` for every source x destination host and kernel "
                    "pair. Writes a self-contained HTML heat map (each cell opens a panel "
                    "with its error, findings, scope, advice and the command that reproduces "
                    "it), a CSV, the kvmfpu-matrix/1 JSON document, or without any of them "
                    "prints the tables as text. Hosts are listed by vendor and generation; "
                    "kernel pairs whose tables agree everywhere are shown once (HTML, text).")
    x.add_argument("--guest", required=True, metavar="CPU", help=GUEST_HELP)
    x.add_argument("--hosts", nargs="+", metavar="HOST",
                   help="host model names or dump files (default: every packaged host)")
    x.add_argument("--kernels", nargs="+", metavar="K|SRC:DST",
                   help="kernel on both hosts, or a SRC:DST pair (default: the named profiles)")
    x.add_argument("--vmm", default="qemu", metavar="NAME[@VERSION]",
                   help="the VMM on both hosts (as for migrate)")
    x.add_argument("--html", metavar="FILE", help="write the HTML page ('-': standard output)")
    x.add_argument("--csv", metavar="FILE",
                   help="write one row per cell as CSV ('-': standard output)")
    x.add_argument("--json", nargs="?", const="-", metavar="FILE",
                   help="write the kvmfpu-matrix/1 document (to standard output without FILE)")
    x.add_argument("--jobs", type=_jobs, metavar="N",
                   help="worker processes for the sources (default: the CPU count); the "
                        "verdicts are the same and in the same order as with --jobs 1")
    x.add_argument("--advice", action="store_true",
                   help="also re-run every cell that is not compatible with one thing changed "
                        "and list what would work (slow: several checks per cell)")
    x.set_defaults(func=cmd_matrix)


def _jobs(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: a number of processes, 1 or more")
    return n


def _bad_input(exc: Exception) -> UsageError:
    return UsageError(str(exc).strip('"'))


def cmd_migrate(args: argparse.Namespace) -> int:
    from kvmfpu.blob.errors import InputError
    from kvmfpu.blob.validate import first_capture, restore_warning
    from kvmfpu.kvm.profiles import UnknownKernel
    from kvmfpu.migrate.check import INCOMPATIBLE, check
    from kvmfpu.migrate.report import Finding
    from kvmfpu.qemu.models import UnknownModel
    try:
        if args.snapshot and not args.blob:
            raise InputError("--snapshot picks the snapshot of a qcow2 --blob; give --blob")
        if args.format and not args.blob:
            raise InputError("--format is --blob's format; give --blob")
        cap = first_capture(args.blob, args.snapshot, args.format) if args.blob else None
        blob = bytes(cap.data) if cap is not None else None
        report = check(args.src, args.dst, args.guest, vmm=args.vmm, dst_vmm=args.dst_vmm,
                       blob=blob, blob_name=args.blob, advise=not args.no_advice)
    except (InputError, UnknownKernel, UnknownModel) as exc:
        raise _bad_input(exc) from None
    warning = restore_warning(cap) if cap is not None else None
    if warning:            # the registers do not arrive: as a source that loses them
        report.findings.append(Finding("error", "source", f"the state given: {warning}"))
    if args.json:
        from kvmfpu.cli.document import document
        json.dump(document("kvmfpu-migrate/1", report.to_json()), sys.stdout, indent=2)
        print()
    else:
        _print(report)
    return 1 if report.verdict == INCOMPATIBLE else 0


def _print(r: Any) -> None:
    vmm = r.vmm.label + (f" -> {r.dst_vmm.label}" if r.dst_vmm else "")
    print(f"{r.src.label} -> {r.dst.label}, guest {r.guest.label} "
          f"(XCR0 {r.guest_xcr0:#x}, XSS {r.guest_xss:#x}), VMM {vmm}")
    if r.blob:
        print(f"state: {r.blob}")
    print(f"verdict: {r.verdict.upper()}")
    for level, title in (("error", "why not"), ("condition", "conditions"),
                         ("info", "harmless differences and notes")):
        items = [f for f in r.findings if f.level == level]
        if items:
            print(f"\n{title}:")
            for f in items:
                print(f"  - [{f.stage}] {f.text}")
    if r.lost:
        from kvmfpu.blob import regdiff
        print("\nregisters (source -> destination):")
        for line in regdiff.lines(r.lost, limit=60):
            print(f"  {line}")
    print("\nsteps:")
    for side, step, outcome in r.steps:
        print(f"  {side:11} {step}: {outcome}")
    print("\nchecked:")
    for item in r.scope.checked:
        print(f"  - {item}")
    print("not checked:")
    for item in r.scope.not_checked:
        print(f"  - {item}")
    if r.advice:
        print("\nwhat would work (each re-run on the models):")
        for a in r.advice:
            print(f"  - {a.kind}: {a.change} -> {a.verdict}")


def cmd_matrix(args: argparse.Namespace) -> int:
    from kvmfpu import cpus
    from kvmfpu.blob.errors import InputError
    from kvmfpu.cli.common import STDOUT, check_output, one_line
    from kvmfpu.cli.document import document
    from kvmfpu.kvm.profiles import UnknownKernel
    from kvmfpu.migrate import matrix_views
    from kvmfpu.migrate.matrix import compute, default_jobs, to_csv
    from kvmfpu.migrate.report_html import render
    from kvmfpu.qemu.models import UnknownModel
    outputs = [p for p in (args.html, args.csv, args.json) if p is not None]
    check_output(*outputs)
    try:
        # the guest as text: resolved on each source when it depends on the host (host-model)
        m = compute(args.guest, args.hosts, args.kernels, vmm=args.vmm, advise=args.advice,
                    jobs=args.jobs or default_jobs())
    except (InputError, UnknownKernel, UnknownModel, cpus.UnknownHost) as exc:
        raise _bad_input(exc) from None
    if args.html is not None:
        _write(args.html, render(m))
    if args.csv is not None:
        _write(args.csv, to_csv(m))
    if args.json is not None:
        doc = document(matrix_views.SCHEMA, matrix_views.to_json(m))
        _write(args.json, json.dumps(doc, indent=2) + "\n")
    if not outputs:
        sys.stdout.write(matrix_views.to_text(m))
    c = m.counts()
    say = sys.stderr if STDOUT in outputs else sys.stdout   # an output is on stdout
    files = [one_line(p) for p in outputs if p != STDOUT]
    print(f"{m.count} verdicts in {m.seconds:.2f} s ({m.count / max(m.seconds, 1e-9):,.0f}/s): "
          f"{c['compatible']} compatible, {c['compatible with conditions']} with conditions, "
          f"{c['incompatible']} incompatible"
          + (f"; wrote {' and '.join(files)}" if files else ""), file=say)
    return 0


def _write(path: str, text: str) -> None:
    """Atomically, never through a planted symlink, never over a device (common.write_output)."""
    from kvmfpu.cli.common import write_output
    write_output(path, text)

