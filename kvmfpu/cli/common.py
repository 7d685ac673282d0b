"""What the subcommands share: the one-line usage error and value formatting."""

from __future__ import annotations

import argparse
from typing import NoReturn

ALL = (1 << 64) - 1


class UsageError(Exception):
    """Bad input from the user: reported in one line, exit 2."""


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def short(v: int) -> str:
    """A register value in hex, long ones elided in the middle."""
    text = f"{v:#x}"
    return text if len(text) <= 26 else f"{text[:12]}...{text[-8:]} ({v.bit_length()} bits)"
