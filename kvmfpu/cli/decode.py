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
                                      "signal frames, QEMU streams)")
    d.add_argument("file", help="the capture ('-' for standard input)")
    d.add_argument("--host", help="host CPU model or dump whose layout the capture uses "
                                  "(default: inferred; asked for when ambiguous)")
    input_options(d, json_doc="kvmfpu-decode/1")
    d.add_argument("--all", action="store_true", help="show registers that are zero too")
    d.add_argument("--xfd", type=integer, default=None,
                   help="the vCPU's IA32_XFD, to flag armed components with XSTATE_BV set "
                        "(QEMU streams carry it)")
    d.add_argument("--list-snapshots", action="store_true",
                   help="list a qcow2 image's internal snapshots (with --json: the "
                        "kvmfpu-qcow2-snapshots/1 document) instead of decoding")
    d.set_defaults(func=cmd_decode)


def load(args: argparse.Namespace) -> list[Any]:
    """kvmfpu.blob.load.Loaded for each xsave image in args.file ('-': standard input)."""
    import sys

    from kvmfpu.blob.errors import InputError
    from kvmfpu.blob.load import load as load_blob
    from kvmfpu.blob.sources import read_stream

    try:
        source: str | bytes = args.file
        if args.file == "-":   # read in chunks: a large --max-size allocates nothing
            source = read_stream(sys.stdin.buffer, args.max_size, "standard input")
        return load_blob(source, args.host, args.format, max_size=args.max_size, xfd=args.xfd,
                         snapshot=args.snapshot)
    except InputError as exc:
        raise UsageError(str(exc)) from None


def cmd_decode(args: argparse.Namespace) -> int:
    from kvmfpu.blob import render

    if args.list_snapshots:                  # qcow2 internal snapshots (S12b)
        from kvmfpu.cli.qcow2_list import list_snapshots
        return list_snapshots(args)
    items = load(args)
    if args.json:
        print(json.dumps({"schema": render.SCHEMA, "captures": [
            render.to_json(it.decoded, origin=it.capture.origin, fmt=it.capture.fmt,
                           host=it.choice.host, how=it.choice.how, notes=it.capture.notes)
            for it in items]}, indent=2))
        return 0
    for n, it in enumerate(items):
        if n:
            print()
        print("\n".join(render.text(it.decoded, origin=it.capture.origin, host=it.choice.host,
                                    how=it.choice.how, all_registers=args.all,
                                    notes=it.capture.notes)))
    return 0
