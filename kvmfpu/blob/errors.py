"""Errors about what a user handed in."""


class InputError(ValueError):
    """The input cannot be read as xsave state (reported in one line, exit 2)."""


class AmbiguousLayout(InputError):
    """More than one host layout fits the input: the user must name the host."""
