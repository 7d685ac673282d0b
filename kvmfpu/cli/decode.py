"""``kvmfpu decode FILE``: what is in captured xsave state."""

from __future__ import annotations

import argparse
import json
from typing import Any

from kvmfpu.cli.common import UsageError


def add_parser(sub: Any) -> None:
    from kvmfpu.blob.sources import FORMATS, MAX_SIZE
    d = sub.add_parser("decode", help="decode xsave state (KVM buffers, hex dumps, core files, "
                                      "signal frames, QEMU streams)")
    d.add_argument("file", help="the capture ('-' for standard input)")
    d.add_argument("--host", help="host CPU model or dump whose layout the capture uses "
                                  "(default: inferred; asked for when ambiguous)")
    d.add_argument("--format", choices=FORMATS, help="input format (default: detected)")
    d.add_argument("--json", action="store_true", help="kvmfpu-decode/1 JSON")
    d.add_argument("--all", action="store_true", help="show registers that are zero too")
    d.add_argument("--max-size", type=int, default=MAX_SIZE, help="largest input read (bytes)")
    d.add_argument("--xfd", type=lambda t: int(t, 0), default=None,
                   help="the vCPU's IA32_XFD, to flag armed components with XSTATE_BV set "
                        "(QEMU streams carry it)")
    d.set_defaults(func=cmd_decode)


def load(args: argparse.Namespace) -> list[tuple[Any, Any, Any]]:
    """(capture, layout choice, decoded) for each xsave image in args.file."""
    import sys

    from kvmfpu.blob import decode as dec
    from kvmfpu.blob import infer, sources
    from kvmfpu.blob.errors import InputError

    try:
        if args.file == "-":
            data = sys.stdin.buffer.read(args.max_size + 1)
            if len(data) > args.max_size:
                raise InputError(f"standard input exceeds the {args.max_size}-byte limit")
            captures = sources.read(data, args.format, args.max_size)
        else:
            captures = sources.read(args.file, args.format, args.max_size)
        out = []
        for cap in captures:
            choice = infer.choose(cap, args.host)
            xfd = args.xfd if args.xfd is not None else cap.extra.get("xfd", 0)
            decoded = dec.decode(cap.data, choice.layout, host=choice.host,
                                 xcr0=cap.xcr0_hint, mxcsr_mask=choice.mxcsr_mask, xfd=xfd)
            out.append((cap, choice, decoded))
        return out
    except InputError as exc:
        raise UsageError(str(exc)) from None


def cmd_decode(args: argparse.Namespace) -> int:
    from kvmfpu.blob import render

    items = load(args)
    if args.json:
        print(json.dumps({"schema": render.SCHEMA, "captures": [
            render.to_json(d, origin=cap.origin, fmt=cap.fmt, host=ch.host, how=ch.how,
                           notes=cap.notes)
            for cap, ch, d in items]}, indent=2))
        return 0
    for n, (cap, ch, d) in enumerate(items):
        if n:
            print()
        print("\n".join(render.text(d, origin=cap.origin, host=ch.host, how=ch.how,
                                    all_registers=args.all, notes=cap.notes)))
    return 0
