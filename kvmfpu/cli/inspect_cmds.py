"""``kvmfpu validate``, ``kvmfpu diff`` and ``kvmfpu convert`` on captured xsave state.

JSON (``--json``):

- ``kvmfpu-validate/1``: ``host``, ``kernel``, ``flavor``, ``guest_cpu``, ``kvm_reads`` (the
  bytes KVM_SET_XSAVE reads), ``accepted`` (all of them), ``results``: one per image with
  ``origin``, ``accepted``, ``errno`` (e.g. ``"EINVAL"``), ``function`` (the kernel function
  that refuses), ``reason``, ``commit`` (the change that introduced the check, and its
  release), ``note``.
- ``kvmfpu-diff/1``: ``same`` (bool), ``pairs``: one per image pair with ``a``, ``b`` (file
  and image) and ``differences``: ``{"register", "a", "b", "parts", "more_parts"}`` with the
  full hex values (``"not in this layout"`` where one side's host has no such register) and
  each differing lane, tile row or field (kvmfpu.blob.regdiff: ``{"part", "bits", "a", "b"}``,
  tiles with a byte ``map``).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from kvmfpu.cli.common import STDOUT, UsageError, input_options, snapshot_option, write_output
from kvmfpu.cli.document import document


def add_parser(sub: Any) -> None:
    v = sub.add_parser("validate", help="would KVM_SET_XSAVE on HOST with KERNEL accept it?",
                       description="Exit status 0: accepted; 1: rejected (errno and reason).")
    v.add_argument("file", help="the capture ('-' for standard input)")
    v.add_argument("--host", required=True, help="destination host CPU model or dump")
    v.add_argument("--kernel", required=True, help="destination kernel (e.g. 5.17, 6.6.30)")
    v.add_argument("--guest-cpu", metavar="CPU",
                   help="the guest CPU, as migrate --guest takes it (a -cpu value, libvirt's "
                        "host-passthrough/host-model/maximum, a domain XML or expansion JSON "
                        "file), or a host description whose XSAVE features trim KVM's table "
                        "(default: KVM_GET_SUPPORTED_CPUID as is)")
    v.add_argument("--flavor", help="vmx, svm or pvm (default: by the host's vendor)")
    input_options(v, json_doc="kvmfpu-validate/1")
    v.set_defaults(func=cmd_validate)

    d = sub.add_parser("diff", help="differences between two captures, register by register",
                       description="Exit status 0: same state; 1: differences.")
    d.add_argument("a", help="the first capture")
    d.add_argument("b", help="the second capture")
    d.add_argument("--host", help="layout of both (default: inferred for each)")
    d.add_argument("--host-b", help="layout of B when it differs from A's")
    input_options(d, json_doc="kvmfpu-diff/1")
    snapshot_option(d, "--snapshot-b", "B")       # --snapshot is A's (and B's without this)
    d.set_defaults(func=cmd_diff)

    c = sub.add_parser("convert", help="re-lay a standard-format buffer for another host")
    c.add_argument("file", help="the standard-format buffer to re-lay")
    c.add_argument("--from", dest="src", required=True, help="the host the buffer comes from")
    c.add_argument("--to", dest="dst", required=True, help="the host to lay it out for")
    c.add_argument("-o", "--output", required=True,
                   help="where to write the new buffer, atomically ('-': standard output)")
    input_options(c, json_doc="kvmfpu-convert/1")
    c.set_defaults(func=cmd_convert)


def _captures(path: str, fmt: str | None, max_size: int, snapshot: str | None = None
              ) -> list[Any]:
    from kvmfpu.blob import sources
    from kvmfpu.blob.errors import InputError
    try:
        return sources.read(path, fmt, max_size, snapshot=snapshot)
    except InputError as exc:
        raise UsageError(str(exc)) from None


def cmd_validate(args: argparse.Namespace) -> int:
    from kvmfpu.blob.validate import Validator
    from kvmfpu.kvm.profiles import UnknownKernel

    caps = _captures(args.file, args.format, args.max_size, args.snapshot)
    try:
        guest = _guest_cpu(args)
        validator = Validator(args.host, args.kernel, guest, args.flavor)
    except UnknownKernel as exc:
        raise UsageError(str(exc)) from None
    except ValueError as exc:      # flavour/vendor mismatch
        raise UsageError(str(exc)) from None
    host = validator.kvm.host
    results = []
    for cap in caps:
        if cap.rebuild is not None:          # QEMU builds the buffer for the destination
            cap.data = cap.rebuild(host.layout)
        results.append((cap, validator.check_capture(cap)))
    ok = all(v.accepted for _, v in results)
    if args.json:
        print(json.dumps(document("kvmfpu-validate/1", {"host": host.name, "accepted": ok,
                          "kernel": validator.kvm.kernel.name, "flavor": validator.kvm.flavor,
                          "guest_cpu": args.guest_cpu or "host",
                          "kvm_reads": validator.size,
                          "results": [dict(origin=c.origin, **v.to_json()) for c, v in results]}),
                         indent=2))
    else:
        where = (f"{host.name}, Linux {validator.kvm.kernel.name} ({validator.kvm.flavor}), "
                 f"guest CPU {args.guest_cpu or 'host'}")
        for cap, v in results:
            if v.accepted:
                print(f"{cap.origin}: accepted by KVM_SET_XSAVE on {where}")
            else:
                print(f"{cap.origin}: rejected by KVM_SET_XSAVE on {where}: -{v.errno}: {v.reason}")
            if v.note:
                print(f"  note: {v.note}")
            for w in v.warnings:
                print(f"  warning: {w}")
    return 0 if ok else 1


def _guest_cpu(args: argparse.Namespace) -> Any:
    """--guest-cpu through the guest resolver (migrate.guest_spec); a value it refuses that
    names a host description keeps the older meaning (that host's XSAVE features)."""
    from kvmfpu import cpus
    from kvmfpu.blob.errors import InputError
    from kvmfpu.kvm.system import Kvm
    from kvmfpu.migrate.guest_spec import resolve_guest
    if args.guest_cpu is None:
        return None
    try:
        return resolve_guest(args.guest_cpu, host=lambda: Kvm(args.host, args.kernel, args.flavor))
    except InputError as exc:
        try:
            cpus.load(args.guest_cpu)
        except (cpus.UnknownHost, cpus.DumpError) as host_exc:
            raise UsageError(f"--guest-cpu: {exc}; nor a host description: {host_exc}") from None
        return args.guest_cpu


def _decoded(path: str, host: str | None, fmt: str | None, max_size: int,
             snapshot: str | None = None) -> list[Any]:
    from kvmfpu.blob.errors import InputError
    from kvmfpu.blob.load import load
    try:
        return [(it.capture, it.decoded)
                for it in load(path, host, fmt, max_size=max_size, snapshot=snapshot)]
    except InputError as exc:
        raise UsageError(str(exc)) from None


def cmd_diff(args: argparse.Namespace) -> int:
    from kvmfpu.blob import regdiff
    from kvmfpu.blob.compare import register_diff
    from kvmfpu.blob.qcow2 import is_image
    # --snapshot names A's snapshot, and B's too when B is a qcow2 image without --snapshot-b.
    snap_b = args.snapshot_b if args.snapshot_b is not None else \
        args.snapshot if is_image(args.b) else None
    a = _decoded(args.a, args.host, args.format, args.max_size, args.snapshot)
    b = _decoded(args.b, args.host_b or args.host, args.format, args.max_size, snap_b)
    if len(a) != len(b):
        raise UsageError(f"{args.a} holds {len(a)} xsave images, {args.b} holds {len(b)}")
    def label(path: str, n: int, cap: Any) -> str:
        return path if n == 1 else f"{path} ({cap.origin})"
    report = []
    for (ca, da), (cb, db) in zip(a, b, strict=True):
        report.append((label(args.a, len(a), ca), label(args.b, len(b), cb),
                       register_diff(da, db)))
    same = not any(d for _, _, d in report)
    if args.json:
        print(json.dumps(document("kvmfpu-diff/1", {"same": same, "pairs": [
            {"a": oa, "b": ob, "differences": [regdiff.to_json(d) for d in diffs]}
            for oa, ob, diffs in report]}), indent=2))
    else:
        for oa, ob, diffs in report:
            if not diffs:
                print(f"{oa} and {ob}: same register state")
            else:
                print(f"{oa} -> {ob}:")
            for line in regdiff.lines(diffs):
                print(f"  {line}")
    return 0 if same else 1


def cmd_convert(args: argparse.Namespace) -> int:
    import os

    from kvmfpu.blob.convert import ConversionError, convert
    from kvmfpu.blob.errors import InputError
    if args.json and args.output == STDOUT:
        raise UsageError("--json and -o - both want standard output: write the buffer to a file")
    if args.output != STDOUT and os.path.exists(args.output) and os.path.exists(args.file) \
            and os.path.samefile(args.file, args.output):
        raise UsageError(f"{args.output} is the input: write the converted buffer elsewhere")
    caps = _captures(args.file, args.format, args.max_size, args.snapshot)
    if len(caps) != 1:
        raise UsageError(f"{args.file} holds {len(caps)} xsave images; convert takes one")
    try:
        out, notes = convert(caps[0].data, args.src, args.dst)
    except (ConversionError, InputError) as exc:
        raise UsageError(str(exc)) from None
    write_output(args.output, out)
    if args.json:
        print(json.dumps(document("kvmfpu-convert/1", {
            "input": args.file, "output": args.output, "from": args.src, "to": args.dst,
            "bytes": len(out), "notes": notes}), indent=2))
        return 0
    # With the buffer on standard output, what would be said about it goes to stderr.
    say = sys.stderr if args.output == STDOUT else sys.stdout
    print(f"wrote {len(out)} bytes for {args.dst} to "
          f"{'standard output' if args.output == STDOUT else args.output}", file=say)
    for n in notes:
        print(f"  note: {n}", file=say)
    return 0
