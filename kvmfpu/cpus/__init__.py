"""Host CPU models.

``load(name_or_path)`` accepts a packaged model name (``kvmfpu cpus`` lists them), ``this``
or ``.`` (this machine, read through CPUID: :mod:`kvmfpu.cpus.capture`), a ``cpuid -r`` dump,
a libvirt cputestdata XML file, a kvmfpu JSON host file (what ``kvmfpu cpus NAME --json`` and
``kvmfpu cpus --capture`` write), or a Firecracker ``cpu-template-helper fingerprint dump``
(:mod:`kvmfpu.cpus.fingerprint`). Packaged models come from real CPUID dumps; each file names
its source. A model's ``kernel`` is the `uname -r` it was read under when the input records
one (a capture, a fingerprint), the default kernel for that host.
"""

from __future__ import annotations

import os
import re
from functools import cache
from importlib import resources
from importlib.abc import Traversable
from pathlib import Path

from kvmfpu.cpus import capture
from kvmfpu.cpus.dumps import MAX_DUMP_BYTES, Dump, DumpError, parse_json, parse_text
from kvmfpu.cpus.model import HostModel

__all__ = ["DumpError", "HostModel", "UnknownHost", "load", "names"]

_NAME = re.compile(r"^[a-z0-9][a-z0-9.-]*$")


class UnknownHost(LookupError):
    """Neither a packaged model name nor a readable dump file."""


def _data_dir() -> Traversable:
    return resources.files("kvmfpu.cpus").joinpath("data")


@cache
def names() -> tuple[str, ...]:
    """Names of the packaged models, sorted."""
    return tuple(sorted(p.name[:-5] for p in _data_dir().iterdir() if p.name.endswith(".json")))


@cache
def _packaged(name: str) -> HostModel:
    dump = parse_json(_data_dir().joinpath(f"{name}.json").read_text())
    return _model(dump, name)


def _model(dump: Dump, default_name: str) -> HostModel:
    return HostModel(dump.table, name=dump.name or default_name, title=dump.title,
                     source=dump.source, mxcsr_mask=dump.mxcsr_mask, kernel=dump.kernel,
                     microcode=dump.microcode, cpuid_view=dump.cpuid_view, msrs=dump.msrs)


def load(name_or_path: str | os.PathLike[str] | HostModel) -> HostModel:
    """A host model by packaged name, ``this``/``.``, or from a dump file (``cpuid -r``,
    libvirt XML, kvmfpu JSON, Firecracker fingerprint)."""
    if isinstance(name_or_path, HostModel):
        return name_or_path
    text = os.fspath(name_or_path)
    if text in capture.THIS:  # a file named "this": ./this
        return capture.this_host()
    if _NAME.match(text) and text in names():
        return _packaged(text)
    path = Path(text)
    if not path.exists():
        raise UnknownHost(
            f"unknown host {text[:80]!r}: not a model name ({', '.join(names())}), "
            "not 'this' and no such file")
    if path.is_dir():
        raise UnknownHost(f"{text}: is a directory, not a CPUID dump")
    if not path.is_file():  # a FIFO would block the open below
        raise UnknownHost(f"{text}: not a regular file (a FIFO, device or socket)")
    try:
        size = path.stat().st_size
        if size > MAX_DUMP_BYTES:
            raise UnknownHost(f"{text}: {size} bytes is too large for a CPUID dump")
        with path.open("rb") as fh:
            data = fh.read(MAX_DUMP_BYTES + 1)
    except OSError as exc:
        raise UnknownHost(f"{text}: cannot read: {exc.strerror or exc}") from None
    try:
        dump = parse_text(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise UnknownHost(f"{text}: not a text CPUID dump (binary data)") from None
    except DumpError as exc:
        raise UnknownHost(f"{text}: {exc}") from None
    dump.source.setdefault("file", str(path))
    return _model(dump, path.stem.lower())
