"""``kvmfpu migrate``, ``kvmfpu matrix`` and ``kvmfpu models``."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from kvmfpu.cli.common import UsageError, snapshot_option


def add_parser(sub: Any) -> None:
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
    m.add_argument("--guest", required=True, metavar="MODEL",
                   help="QEMU -cpu value: Model[-vN][,+feature,-feature] or host")
    m.add_argument("--blob", help="the state that left the source (a KVM_GET_XSAVE capture, "
                                  "core file or QEMU stream) instead of the modelled guest's")
    snapshot_option(m, what="--blob")                 # qcow2 internal snapshots (S12b)
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
        description="Writes a self-contained HTML heat map (and optionally CSV).")
    x.add_argument("--guest", required=True, metavar="MODEL")
    x.add_argument("--hosts", nargs="+", metavar="HOST", help="default: every packaged host")
    x.add_argument("--kernels", nargs="+", metavar="K|SRC:DST",
                   help="kernel on both hosts, or a SRC:DST pair (default: the named profiles)")
    x.add_argument("--vmm", default="qemu", metavar="NAME[@VERSION]",
                   help="the VMM on both hosts (as for migrate)")
    x.add_argument("--html", required=True, metavar="FILE")
    x.add_argument("--csv", metavar="FILE")
    x.set_defaults(func=cmd_matrix)

    g = sub.add_parser("models", help="QEMU's CPU models and the XSAVE state they enable")
    g.add_argument("--versions", action="store_true", help="one line per version")
    g.add_argument("--json", action="store_true")
    g.set_defaults(func=cmd_models)


def _bad_input(exc: Exception) -> UsageError:
    return UsageError(str(exc).strip('"'))


def cmd_migrate(args: argparse.Namespace) -> int:
    from kvmfpu.blob.errors import InputError
    from kvmfpu.kvm.profiles import UnknownKernel
    from kvmfpu.migrate.check import INCOMPATIBLE, check, read_blob
    from kvmfpu.qemu.models import UnknownModel
    try:
        blob = read_blob(args.blob) if args.blob and not args.snapshot else None
        if args.snapshot:                              # as read_blob, for that snapshot (S12b)
            if not args.blob:
                raise InputError("--snapshot picks the snapshot of a qcow2 --blob; give --blob")
            from kvmfpu.blob import sources
            blob = bytes(sources.read(args.blob, None, sources.MAX_SIZE,
                                      snapshot=args.snapshot)[0].data)
        report = check(args.src, args.dst, args.guest, vmm=args.vmm, dst_vmm=args.dst_vmm,
                       blob=blob, blob_name=args.blob, advise=not args.no_advice)
    except (InputError, UnknownKernel, UnknownModel) as exc:
        raise _bad_input(exc) from None
    if args.json:
        json.dump({"schema": "kvmfpu-migrate/1", **report.to_json()}, sys.stdout, indent=2)
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
        print("\nregisters (source -> destination):")
        for name, a, b in r.lost[:12]:
            print(f"  {name:10} {_short(a)} -> {_short(b)}")
        if len(r.lost) > 12:
            print(f"  ... {len(r.lost) - 12} more")
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


def _short(text: str) -> str:
    from kvmfpu.cli.common import short
    return short(int(text, 16)) if text.startswith("0x") else text


def cmd_matrix(args: argparse.Namespace) -> int:
    from kvmfpu import cpus
    from kvmfpu.blob.errors import InputError
    from kvmfpu.cli.common import STDOUT, check_output
    from kvmfpu.kvm.profiles import UnknownKernel
    from kvmfpu.migrate.matrix import compute, to_csv
    from kvmfpu.migrate.report_html import render
    from kvmfpu.qemu.models import UnknownModel
    check_output(args.html, args.csv)
    try:
        m = compute(args.guest, args.hosts, args.kernels, vmm=args.vmm)
    except (InputError, UnknownKernel, UnknownModel, cpus.UnknownHost) as exc:
        raise _bad_input(exc) from None
    _write(args.html, render(m))
    if args.csv:
        _write(args.csv, to_csv(m))
    c = m.counts()
    say = sys.stderr if STDOUT in (args.html, args.csv) else sys.stdout   # the page is on stdout
    print(f"{m.count} verdicts in {m.seconds:.2f} s ({m.count / max(m.seconds, 1e-9):,.0f}/s): "
          f"{c['compatible']} compatible, {c['compatible with conditions']} with conditions, "
          f"{c['incompatible']} incompatible; wrote {args.html}"
          + (f" and {args.csv}" if args.csv else ""), file=say)
    return 0


def _write(path: str, text: str) -> None:
    """Atomically, never through a planted symlink, never over a device (common.write_output)."""
    from kvmfpu.cli.common import write_output
    write_output(path, text)


def cmd_models(args: argparse.Namespace) -> int:
    from kvmfpu.qemu import models
    rows = []
    for m in models.catalogue():
        versions = [models.resolve(f"{m.name}-v{v.version}") for v in m.versions]
        for g in versions if args.versions else versions[-1:]:
            rows.append(g)
    if args.json:
        json.dump({"schema": "kvmfpu-models/1", "sources": list(models.sources()),
                   "models": [g.to_json() for g in rows]}, sys.stdout, indent=2)
        print()
        return 0
    for g in rows:
        extra = f"  (unverified: {g.unverified})" if g.unverified else ""
        feats = ",".join(sorted(f for f in g.features if f.startswith("xsave") or f in
                                ("xgetbv1", "xfd")))
        print(f"{g.label:28} XCR0 {g.xcr0:#9x}  XSS {g.xss:#7x}  {feats or '-'}{extra}")
    return 0
