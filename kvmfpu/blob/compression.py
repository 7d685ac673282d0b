"""Compressed captures read as streams: gzip, xz and bzip2 with Python's own modules; zstd and
lzop through the ``zstd`` and ``lzop`` programs, fed and drained through pipes.

Why programs for zstd and lzop: they are what writes these files (libvirt's save_image_format
runs ``zstd``/``lzop`` as its compressor, src/qemu/qemu_saveimage.c), so reading with the same
tool is the faithful choice; Python has no lzop module at all, and zstandard would be a
compiled dependency for one codec. A missing program is a one-line InputError naming it.

Detection is by the first bytes (each format's magic number); expanding is bounded by the
reader, which never asks for more than it decodes.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import threading
import zlib
from collections.abc import Callable
from typing import Any, Final

from kvmfpu.blob.errors import InputError
from kvmfpu.blob.stream import CHUNK, Readable, Source

#: (name, magic): gzip RFC 1952, xz (.xz format spec 2.1.1.1), bzip2 "BZh1".."BZh9", zstd
#: RFC 8878 frame magic 0xFD2FB528 little-endian, lzop's 9-byte signature (lzop.c magic[]).
MAGICS: Final = (
    ("gzip", b"\x1f\x8b"),
    ("xz", b"\xfd7zXZ\x00"),
    ("bzip2", b"BZh"),
    ("zstd", b"\x28\xb5\x2f\xfd"),
    ("lzop", b"\x89LZO\x00\r\n\x1a\n"),
)
#: The most bytes a magic needs.
PEEK: Final = 9
#: The programs for the codecs Python lacks, and their arguments to expand stdin to stdout.
PROGRAMS: Final = {"zstd": ("zstd", "-dcq"), "lzop": ("lzop", "-dc")}


def sniff(head: bytes) -> str | None:
    """The compression whose magic ``head`` starts with, or None."""
    for name, magic in MAGICS:
        if head.startswith(magic):
            if name == "bzip2" and not head[3:4].isdigit():
                return None
            return name
    return None


class _Reader:
    """``read`` of a decompressor, turning its errors into InputError."""

    def __init__(self, kind: str, inner: Readable, errors: tuple[type[Exception], ...]):
        self.caught: tuple[type[Exception], ...] = (OSError, EOFError, ValueError, zlib.error, *errors)
        self.kind = kind
        self.inner = inner
        self.errors = errors

    def read(self, size: int = -1, /) -> bytes:
        try:
            return self.inner.read(size)
        except self.caught as exc:
            raise InputError(f"{self.kind}-compressed input does not expand: {exc}") from None


def open_stdlib(kind: str, src: Source) -> Source:
    """A gzip/xz/bzip2 decompressor reading ``src``."""
    try:
        opener, errors = _stdlib(kind)
    except ImportError:
        raise InputError(f"{kind}-compressed input, and this Python lacks the {kind} module") from None
    inner: Any = opener(_Plain(src))  # a GzipFile, LZMAFile or BZ2File
    return Source(_Reader(kind, inner, errors), src.name, close=inner.close)


def _stdlib(kind: str) -> tuple[Callable[[Readable], Readable], tuple[type[Exception], ...]]:
    """The stdlib reader and its own error types (lzma and bz2 are optional in Python
    builds, so they are imported here)."""
    if kind == "gzip":
        import gzip

        return (lambda f: gzip.GzipFile(fileobj=f)), ()
    if kind == "xz":
        import lzma

        return (lambda f: lzma.LZMAFile(f)), (lzma.LZMAError,)
    import bz2

    return (lambda f: bz2.BZ2File(f)), ()


class _Plain:
    """A Source as the file object the stdlib decompressors read."""

    def __init__(self, src: Source):
        self.src = src

    def read(self, size: int = -1, /) -> bytes:
        return self.src.read_some(CHUNK if size is None or size < 0 else size)

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        pass

    @property
    def closed(self) -> bool:
        return False


class _Piped:
    """A program expanding ``src``: a thread writes the compressed bytes to its stdin, its
    stdout is read. Its exit status and last stderr line are checked at the end."""

    def __init__(self, kind: str, src: Source):
        program, *args = PROGRAMS[kind]
        found = shutil.which(program)
        if found is None:
            raise InputError(
                f"{kind}-compressed input: the {program} program is needed to expand it "
                f"(Debian package {program})"
            )
        self.kind = kind
        self.src = src
        self.proc = subprocess.Popen(
            [found, *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        self.failure: str | None = None
        self.feeder = threading.Thread(target=self._feed, daemon=True)
        self.feeder.start()
        self.done = False

    def _feed(self) -> None:
        stdin = self.proc.stdin
        assert stdin is not None
        try:
            while True:
                chunk = self.src.read_some(CHUNK)
                if not chunk:
                    break
                stdin.write(chunk)
        except BrokenPipeError:
            pass  # the program stopped reading: its exit status says why
        except (InputError, OSError) as exc:
            self.failure = str(exc)
        finally:
            with contextlib.suppress(OSError):
                stdin.close()

    def read(self, size: int = -1, /) -> bytes:
        if self.done:
            return b""
        stdout = self.proc.stdout
        assert stdout is not None
        out = stdout.read(CHUNK if size < 0 else size)
        if not out:
            self.done = True
            self._finish()
        return out

    def _finish(self) -> None:
        self.feeder.join()
        code = self.proc.wait()
        err = b"" if self.proc.stderr is None else self.proc.stderr.read(4096)
        if self.failure is not None:
            raise InputError(self.failure)
        if code != 0:
            lines = [x for x in err.decode(errors="replace").splitlines() if x.strip()]
            why = lines[-1].strip()[:160] if lines else f"exit status {code}"
            raise InputError(f"{self.kind}-compressed input does not expand: {why}")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        with contextlib.suppress(OSError):
            self.proc.wait()
        for f in (self.proc.stdout, self.proc.stderr):
            if f is not None:
                with contextlib.suppress(OSError):
                    f.close()


def open_program(kind: str, src: Source) -> Source:
    """A zstd/lzop decompressor reading ``src`` through the program."""
    piped = _Piped(kind, src)
    return Source(piped, src.name, close=piped.close)


def expand(kind: str, src: Source) -> Source:
    """``src`` expanded (a non-seekable stream)."""
    if kind in PROGRAMS:
        return open_program(kind, src)
    return open_stdlib(kind, src)
