"""The ``kvmfpu`` command line.

Bad input never produces a traceback: one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Sequence
from typing import Any

from kvmfpu import cpus
from kvmfpu.blob.errors import InputError
from kvmfpu.cli import (
    audit,
    check_cpu,
    decode,
    demo,
    hosts,
    inspect_cmds,
    kernels,
    migrate,
    models,
    probe,
    replay,
)
from kvmfpu.cli.common import Parser, UsageError, one_line

__all__ = ["UsageError", "build_parser", "main"]


def version_text() -> str:
    """``kvmfpu 0.1.0`` and, when it is known, the commit it was built from."""
    from kvmfpu import __version__
    from kvmfpu.cli.document import commit
    sha = commit()
    return f"kvmfpu {__version__}" + (f" (commit {sha})" if sha else "")


class _Version(argparse.Action):
    """--version: the text is only worked out (git asked for the commit) when it is asked for."""

    def __init__(self, option_strings: Sequence[str], dest: str = argparse.SUPPRESS,
                 default: str = argparse.SUPPRESS, help: str | None = None) -> None:
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:
        print(version_text())
        parser.exit()


def build_parser() -> Parser:
    p = Parser(prog="kvmfpu", description="An executable model of x86 XSAVE and the Linux "
                                          "KVM FPU/xstate ABI")
    p.add_argument("--version", action=_Version,
                   help="print the release (and the commit, when known) and exit")
    sub = p.add_subparsers(dest="command", required=True, parser_class=Parser,
                           metavar="COMMAND")
    for module in (hosts, demo, decode, inspect_cmds, check_cpu, kernels, replay, probe, migrate,
                   models, audit):
        module.add_parser(sub)
    return p


def usage(parser: Parser) -> str:
    """What bare ``kvmfpu`` prints: the usage line and one line per command."""
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    rows = [(c.dest, c.help or "") for c in sub._get_subactions()]
    width = max(len(name) for name, _ in rows)
    return (parser.format_usage() + "\ncommands:\n"
            + "".join(f"  {name:{width}}  {text}\n" for name, text in rows)
            + "\n'kvmfpu COMMAND --help' shows a command's options.\n")


#: The shell's status for a command ended by SIGINT (128 + 2).
EXIT_INTERRUPTED = 130


def main(argv: Sequence[str] | None = None) -> int:
    try:
        parser = build_parser()
        if not (sys.argv[1:] if argv is None else argv):
            # As argparse treats a missing command (stderr, exit 2), with the commands
            # listed: git prints its usage to stdout and exits 1, pip its help with exit 0;
            # a script that lost its arguments should fail, and not on stdout.
            sys.stderr.write(usage(parser))
            _error("no command given")
            return 2
        args = parser.parse_args(argv)
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


