"""The ``kvmfpu`` command line.

Bad input never produces a traceback: one line on stderr and exit status 2.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Sequence

from kvmfpu import cpus
from kvmfpu.blob.errors import InputError
from kvmfpu.cli import audit, check_cpu, decode, demo, hosts, inspect_cmds, kernels, migrate, probe, replay
from kvmfpu.cli.common import Parser, UsageError, one_line

__all__ = ["UsageError", "build_parser", "main"]


def build_parser() -> Parser:
    p = Parser(prog="kvmfpu", description="An executable model of x86 XSAVE and the Linux "
                                          "KVM FPU/xstate ABI")
    sub = p.add_subparsers(dest="command", required=True, parser_class=Parser)
    for module in (hosts, demo, decode, inspect_cmds, check_cpu, kernels, replay, probe, migrate, audit):
        module.add_parser(sub)
    return p


#: The shell's status for a command ended by SIGINT (128 + 2).
EXIT_INTERRUPTED = 130


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        return int(args.func(args))
    except (UsageError, cpus.UnknownHost, cpus.DumpError, InputError) as exc:
        _error(str(exc))
    except BrokenPipeError:
        return 0
    except KeyboardInterrupt:
        # Outputs are written through common.write_output, which removes its temp file on
        # the way out: nothing partial is left behind.
        _error("interrupted", prefix="kvmfpu: ")
        return EXIT_INTERRUPTED
    return 2


def _error(text: str, prefix: str = "kvmfpu: error: ") -> None:
    """One line on stderr, whatever the message holds (see common.one_line)."""
    with contextlib.suppress(OSError, ValueError):    # stdout closed or a broken pipe
        sys.stdout.flush()
    print(prefix + one_line(text), file=sys.stderr)


if __name__ == "__main__":
    raise SystemExit(main())
