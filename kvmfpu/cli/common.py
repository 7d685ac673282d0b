"""What the subcommands share: the one-line usage error, value formatting, and the one way
every output file is written (``write_output``)."""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import stat
import sys
from typing import NoReturn

ALL = (1 << 64) - 1


class UsageError(Exception):
    """Bad input from the user: reported in one line, exit 2."""


def one_line(text: str) -> str:
    """``text`` with every control character (newline, carriage return, escape...) shown as
    an escape, so nothing a user gives (a file or host name) can forge a second line of
    output or drive the terminal."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def max_size(text: str) -> int:
    """``--max-size``: a byte count from 1 to sources.MAX_SIZE_LIMIT (a larger one used to
    overflow the reads)."""
    from kvmfpu.blob.sources import MAX_SIZE_LIMIT
    try:
        n = int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a byte count: {text[:40]!r}") from None
    if not 0 < n <= MAX_SIZE_LIMIT:
        raise argparse.ArgumentTypeError(f"{text[:40]} is not 1 to {MAX_SIZE_LIMIT} bytes")
    return n


def input_options(p: argparse.ArgumentParser, *, json_doc: str | None = None) -> None:
    """--format and --max-size for commands that read captures (and --json with the name
    of the document it prints)."""
    from kvmfpu.blob.sources import FORMATS, MAX_SIZE
    p.add_argument("--format", choices=FORMATS, help="input format (default: detected)")
    p.add_argument("--max-size", type=max_size, default=MAX_SIZE,
                   help=f"most bytes decoded from an input (a small capture's size; a QEMU "
                        f"stream's device state and description), default {MAX_SIZE}")
    snapshot_option(p)
    if json_doc:
        p.add_argument("--json", action="store_true", help=f"print the {json_doc} document")


def snapshot_option(p: argparse.ArgumentParser, flag: str = "--snapshot",
                    what: str = "the input") -> None:
    """--snapshot: which internal snapshot of a qcow2 image."""
    p.add_argument(flag, metavar="NAME_OR_ID",
                   help=f"when {what} is a qcow2 image: the internal snapshot whose vm state to "
                        "read: a name (as QEMU's loadvm takes it) or an ID (default: "
                        "the only snapshot with a vm state; with several, they are listed)")


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


STDOUT = "-"


def write_output(path: str, data: bytes | str, *, stdout: bool = True) -> None:
    """Write ``data`` to ``path`` atomically, or to standard output for ``-`` (when the
    command allows it). UsageError (one line) when it cannot be written.

    - The bytes go to a new temp file created with O_CREAT|O_EXCL|O_NOFOLLOW in the target's
      directory (so a symlink planted at the temp name is never followed), are fsync'd, and
      the temp file is renamed over the target: readers see the old file or the new one.
    - On any failure (ENOSPC, EIO, Ctrl-C) the temp file is removed and the previous output
      stays as it was; that cleanup never raises.
    - An existing target must be a regular file, or a symlink owned by the user (or root)
      which is then followed to the file it names; devices, FIFOs, sockets, directories and
      symlinks owned by someone else are refused (root once replaced /dev/full with an HTML
      page). A replaced file keeps its permission bits.
    """
    raw = data.encode("utf-8") if isinstance(data, str) else data
    if path == STDOUT:
        if not stdout:
            raise UsageError("'-' (standard output) is not an output this option takes")
        sys.stdout.flush()
        sys.stdout.buffer.write(raw)
        sys.stdout.buffer.flush()
        return
    if not path:
        raise UsageError("an empty output file name")
    target = _target(path)
    directory = os.path.dirname(target) or "."
    try:
        old: os.stat_result | None = os.stat(target, follow_symlinks=False)
    except FileNotFoundError:
        old = None
    except OSError as exc:
        raise UsageError(f"{path}: cannot write: {exc.strerror}") from None
    fd, tmp = _create_temp(path, directory, os.path.basename(target))
    try:
        view = memoryview(raw)
        while view:
            n = os.write(fd, view)
            view = view[n:]
        if old is not None:
            _keep_owner_and_mode(fd, old)
        os.fsync(fd)
        os.close(fd)
        fd = -1
        os.rename(tmp, target)
        tmp = ""
    except OSError as exc:
        raise UsageError(f"{path}: cannot write: {exc.strerror or exc}"
                         + ("; the previous file is unchanged" if os.path.lexists(target) else ""))\
            from None
    finally:
        _cleanup(fd, tmp)
    _sync_directory(directory)


def check_output(*paths: str | None, stdout: bool = True) -> None:
    """Refuse, before any work is done, outputs ``write_output`` would refuse (and ``-``
    given twice); ``None`` is an option not given."""
    given = [p for p in paths if p is not None]
    if given.count(STDOUT) > 1:
        raise UsageError("only one output can be '-' (standard output)")
    for path in given:
        if path == STDOUT:
            if not stdout:
                raise UsageError("'-' (standard output) is not an output this option takes")
            continue
        if not path:
            raise UsageError("an empty output file name")
        target = _target(path)
        directory = os.path.dirname(target) or "."
        if not os.path.isdir(directory):
            raise UsageError(f"{path}: cannot write: no directory {directory}")


def _target(path: str) -> str:
    """The file the output replaces: ``path``, or what a symlink the user owns names."""
    for _ in range(40):                       # SYMLOOP_MAX on Linux
        try:
            st = os.stat(path, follow_symlinks=False)
        except FileNotFoundError:
            return path
        except OSError as exc:
            raise UsageError(f"{path}: cannot write: {exc.strerror}") from None
        if stat.S_ISREG(st.st_mode):
            return path
        if stat.S_ISDIR(st.st_mode):
            raise UsageError(f"{path}: is a directory")
        if not stat.S_ISLNK(st.st_mode):
            kind = ("a device" if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode) else
                    "a FIFO" if stat.S_ISFIFO(st.st_mode) else "a socket")
            raise UsageError(f"{path}: is {kind}, not a regular file; kvmfpu does not write "
                             "over it")
        if st.st_uid not in (os.geteuid(), 0):
            # fs.protected_symlinks' rule: another user's link is not followed.
            raise UsageError(f"{path}: is a symbolic link owned by uid {st.st_uid}; kvmfpu "
                             "neither follows nor replaces it")
        link = os.readlink(path)
        path = os.path.join(os.path.dirname(path), link)
    raise UsageError(f"{path}: too many levels of symbolic links")


def _keep_owner_and_mode(fd: int, old: os.stat_result) -> None:
    """The replaced file's permission bits (and, for root, its owner: root rewriting a
    user's report must not take it from them)."""
    if os.geteuid() == 0 and (old.st_uid, old.st_gid) != (os.getuid(), os.getgid()):
        with contextlib.suppress(OSError):    # e.g. NFS root squash: keep root's
            os.fchown(fd, old.st_uid, old.st_gid)
    os.fchmod(fd, stat.S_IMODE(old.st_mode))


def _create_temp(shown: str, directory: str, base: str) -> tuple[int, str]:
    """A new file next to the target. O_EXCL fails on any existing name, a dangling symlink
    included, so nothing planted at the name is opened; the name is also unpredictable."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    for _ in range(100):
        tmp = os.path.join(directory, f".{base[:200]}.{secrets.token_hex(8)}.kvmfpu-tmp")
        try:
            return os.open(tmp, flags, 0o666), tmp   # the umask applies, as for open(..., "w")
        except FileExistsError:
            continue                          # someone holds that name: draw another
        except OSError as exc:
            raise UsageError(f"{shown}: cannot write: {exc.strerror}") from None
    raise UsageError(f"{shown}: cannot create a temporary file in {directory}")


def _cleanup(fd: int, tmp: str) -> None:
    """Close and remove what a failed write left; never raises (the first error counts)."""
    if fd >= 0:
        with contextlib.suppress(OSError):
            os.close(fd)
    if tmp:
        with contextlib.suppress(OSError):
            os.unlink(tmp)


def _sync_directory(directory: str) -> None:
    """fsync the directory so the rename survives a crash (best effort: some file systems
    refuse O_RDONLY directory fsync)."""
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass                                  # the file itself is already fsync'd
    finally:
        os.close(fd)
