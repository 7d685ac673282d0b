"""What the subcommands share: the one-line usage error and value formatting."""

from __future__ import annotations

import argparse
from typing import NoReturn

ALL = (1 << 64) - 1


class UsageError(Exception):
    """Bad input from the user: reported in one line, exit 2."""


def input_options(p: argparse.ArgumentParser, *, json_doc: str | None = None) -> None:
    """--format and --max-size for commands that read captures (and --json with the name
    of the document it prints)."""
    from kvmfpu.blob.sources import FORMATS, MAX_SIZE
    p.add_argument("--format", choices=FORMATS, help="input format (default: detected)")
    p.add_argument("--max-size", type=int, default=MAX_SIZE,
                   help=f"largest input read, in bytes (default {MAX_SIZE})")
    if json_doc:
        p.add_argument("--json", action="store_true", help=f"print the {json_doc} document")


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def short(v: int) -> str:
    """A register value in hex, long ones elided in the middle."""
    text = f"{v:#x}"
    return text if len(text) <= 26 else f"{text[:12]}...{text[-8:]} ({v.bit_length()} bits)"
