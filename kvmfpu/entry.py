"""The ``kvmfpu`` command's entry point (the console script and ``python -m kvmfpu``).

It exists so that Ctrl-C is answered with one line and exit status 130 whenever it comes:
the handler is installed here, before the command line's modules (most of kvmfpu) are
imported, which takes a noticeable fraction of a second. Only the interpreter's own start-up
and ``import kvmfpu`` (a few names, see kvmfpu/__init__.py) come before it.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Sequence
from types import FrameType

#: The shell's status for a command ended by SIGINT (128 + 2).
EXIT_INTERRUPTED = 130
_MESSAGE = b"kvmfpu: interrupted\n"


def _leave_now(signum: int, frame: FrameType | None) -> None:
    """While modules load nothing has been written: stop at once, without a traceback."""
    os.write(2, _MESSAGE)
    os._exit(EXIT_INTERRUPTED)


def _raise_once(signum: int, frame: FrameType | None) -> None:
    """While a command runs: KeyboardInterrupt, so write_output removes its temp file and
    kvmfpu.cli.main prints the line; a second Ctrl-C during that unwinding leaves at once."""
    signal.signal(signal.SIGINT, _leave_now)
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    """The console script ``kvmfpu`` (``sys.exit(main())``): kvmfpu.cli.main with Ctrl-C
    answered as the module docstring says."""
    interactive = signal.getsignal(signal.SIGINT) is signal.default_int_handler
    if interactive:  # not when the parent ignored SIGINT (nohup, `cmd &` in sh)
        signal.signal(signal.SIGINT, _leave_now)
    try:
        from kvmfpu.cli import main as cli_main
    except KeyboardInterrupt:  # SIGINT sent some other way (e.g. a debugger)
        os.write(2, _MESSAGE)
        return EXIT_INTERRUPTED
    if interactive:
        signal.signal(signal.SIGINT, _raise_once)
    try:
        status = cli_main(argv)
    except KeyboardInterrupt:  # past cli.main's own handler (e.g. while it reports)
        os.write(2, _MESSAGE)
        status = EXIT_INTERRUPTED
    if interactive:  # the interpreter's exit (flushing stdout) is not interrupted
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    return status
