"""``kvmfpu decode FILE``: what is in captured xsave state."""

from __future__ import annotations

import argparse
import json
from typing import Any

from kvmfpu.cli.common import UsageError, input_options


def integer(text: str) -> int:
    """An integer in any base Python reads (0x..., 0b..., decimal)."""
    try:
        return int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None


def add_parser(sub: Any) -> None:
    d = sub.add_parser("decode", help="decode xsave state (KVM buffers, hex dumps, core files, "
                                      "signal frames, QEMU streams, libvirt save images)",
                       description="Exit status 0; with --strict, 1 when any anomaly is "
                                   "reported; 2 on bad input (a bad file among several is "
                                   "one line on stderr, the others are still decoded).")
    d.add_argument("file", nargs="+",
                   help="the captures ('-' for standard input); a bad file is reported in "
                        "one line on stderr, the others are still decoded, and the exit "
                        "status is 2")
    d.add_argument("--host", help="host CPU model or dump whose layout the capture uses "
                                  "(default: inferred; asked for when ambiguous)")
    input_options(d, json_doc="kvmfpu-decode/1")
    d.add_argument("--all", action="store_true", help="show registers that are zero too")
    d.add_argument("--strict", action="store_true",
                   help="exit 1 when any image has an anomaly (0: none; 2 stays bad input)")
    d.add_argument("--xfd", type=integer, default=None,
                   help="the vCPU's IA32_XFD, to flag armed components with XSTATE_BV set "
                        "(QEMU streams carry it)")
    d.add_argument("--list-snapshots", action="store_true",
                   help="list a qcow2 image's internal snapshots (with --json: the "
                        "kvmfpu-qcow2-snapshots/1 document) instead of decoding")
    d.set_defaults(func=cmd_decode)


def load(args: argparse.Namespace, file: str | None = None) -> list[Any]:
    """kvmfpu.blob.load.Loaded for each xsave image in ``file`` (default: the first of
    args.file; '-': standard input, read as a stream)."""
    import sys

    from kvmfpu.blob.errors import InputError
    from kvmfpu.blob.load import load as load_blob

    name = args.file[0] if file is None else file
    try:
        source: Any = sys.stdin.buffer if name == "-" else name
        return load_blob(source, args.host, args.format, max_size=args.max_size, xfd=args.xfd,
                         snapshot=args.snapshot)
    except InputError as exc:
        raise UsageError(str(exc)) from None


def load_all(args: argparse.Namespace) -> list[tuple[str, list[Any] | None, str | None]]:
    """(file, its items or None, its error or None) for every file, in order: a bad file
    does not stop the others (as grep and file do). A bad --host stops them all."""
    out: list[tuple[str, list[Any] | None, str | None]] = []
    for name in args.file:
        try:
            out.append((name, load(args, name), None))
        except UsageError as exc:
            out.append((name, None, str(exc)))
    return out


def _error_line(name: str, error: str, several: bool) -> str:
    """The file's one line: its name first when several files are decoded (unless the
    message already starts with it)."""
    return error if not several or error.startswith(f"{name}:") else f"{name}: {error}"


def cmd_decode(args: argparse.Namespace) -> int:
    import sys

    from kvmfpu.blob import render
    from kvmfpu.cli.common import one_line
    from kvmfpu.cli.document import document

    if args.list_snapshots:                  # qcow2 internal snapshots
        from kvmfpu.cli.qcow2_list import list_snapshots
        return list_snapshots(args)
    results = load_all(args)
    several = len(results) > 1
    if not several and results[0][2] is not None:
        raise UsageError(results[0][2])
    if args.json:
        captures: list[dict[str, Any]] = []
        files = []
        for name, items, error in results:
            first = len(captures)
            for it in items or []:
                captures.append(render.to_json(
                    it.decoded, origin=it.capture.origin, fmt=it.capture.fmt,
                    host=it.choice.host, how=it.choice.how, notes=it.capture.notes,
                    shape=it.choice.shape, hosts=it.choice.hosts))
            files.append({"file": name, "error": error,
                          "captures": list(range(first, len(captures))),
                          "container": items[0].capture.container if items else {}})
        print(json.dumps(document(render.SCHEMA, {"captures": captures, "files": files}),
                         indent=2))
    else:
        shown = 0
        for name, items, _error in results:
            for it in items or []:
                if shown:
                    print()
                if several:
                    print(f"== {one_line(name)} ==")
                shown += 1
                print("\n".join(render.text(it.decoded, origin=it.capture.origin,
                                            host=it.choice.host, how=it.choice.how,
                                            all_registers=args.all, notes=it.capture.notes,
                                            shape="" if args.host else it.choice.shape)))
    # --strict: an anomaly is a finding a script can act on (exit 1), as `validate` does.
    anomalies = any(it.decoded.anomalies for _, items, _ in results for it in items or [])
    bad = [(name, error) for name, _, error in results if error is not None]
    for name, error in bad:
        sys.stdout.flush()
        print("kvmfpu: error: " + one_line(_error_line(name, error, several)), file=sys.stderr)
    return 2 if bad else 1 if args.strict and anomalies else 0
