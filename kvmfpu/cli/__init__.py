"""The ``kvmfpu`` command line.

Bad input never produces a traceback: one line on stderr and exit status 2.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from kvmfpu import cpus
from kvmfpu.cli import check_cpu, decode, demo, hosts, inspect_cmds, kernels, migrate, probe, replay
from kvmfpu.cli.common import Parser, UsageError

__all__ = ["UsageError", "build_parser", "main"]


def build_parser() -> Parser:
    p = Parser(prog="kvmfpu", description="An executable model of x86 XSAVE and the Linux "
                                          "KVM FPU/xstate ABI")
    sub = p.add_subparsers(dest="command", required=True, parser_class=Parser)
    for module in (hosts, demo, decode, inspect_cmds, check_cpu, kernels, replay, probe, migrate):
        module.add_parser(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        return int(args.func(args))
    except UsageError as exc:
        print(f"kvmfpu: error: {exc}", file=sys.stderr)
    except (cpus.UnknownHost, cpus.DumpError) as exc:
        print(f"kvmfpu: error: {exc}", file=sys.stderr)
    except BrokenPipeError:
        return 0
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
