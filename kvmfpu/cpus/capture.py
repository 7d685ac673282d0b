"""This machine as a host description: CPUID read through the native probe (kvmfpu.native).

``kvmfpu.cpus.load("this")`` (or ``"."``) returns :func:`this_host`, read once per process.
The walk over leaves is :func:`kvmfpu.native.hostcpuid.capture` (every basic and extended
leaf up to the reported maximum, and the non-zero subleaves of indexed leaves, as ``cpuid -r``
prints them). Inside a virtual machine this is the CPUID its hypervisor presents, which is
also what a KVM running there builds KVM_GET_SUPPORTED_CPUID from (boot_cpu_data): the
source records ``hypervisor``. :func:`write_capture` stores it as kvmfpu-host/1 JSON.
"""

from __future__ import annotations

import datetime
import errno
import os
import platform
import secrets
from collections.abc import Callable
from functools import cache
from pathlib import Path

from kvmfpu.cpus.dumps import Dump, DumpError, to_json
from kvmfpu.cpus.model import HostModel

#: The names ``--host`` takes for this machine.
THIS: tuple[str, ...] = ("this", ".")
_CPUINFO = "/proc/cpuinfo"


class CaptureUnavailable(DumpError):
    """This machine's CPUID cannot be read here (not x86-64 Linux, no compiler or cffi)."""


def capture_unavailable() -> str | None:
    """None when this machine's CPUID can be read, else why not (tests skip on it)."""
    from kvmfpu.native.xsave_probe import probe_unavailable

    return probe_unavailable()


def microcode_revision(path: str = _CPUINFO) -> str | None:
    """The first "microcode" field of /proc/cpuinfo, as Firecracker's fingerprint dump reads it
    (cpu-template-helper fingerprint/dump.rs get_microcode_version); None when absent (in
    many guests, or not Linux)."""
    try:
        with open(path, encoding="latin-1") as fh:
            for n, line in enumerate(fh):
                key, sep, value = line.partition(":")
                if sep and key.strip() == "microcode":
                    return value.strip()[:32] or None
                if n > 4096:  # the field is in every CPU's block: the first block has it
                    return None
    except OSError:
        return None
    return None


def _capture(name: str) -> Dump:
    reason = capture_unavailable()
    if reason is not None:
        raise CaptureUnavailable(f"cannot read this machine's CPUID: {reason}")
    from kvmfpu.native.hostcpuid import capture

    table = capture()
    hypervisor = bool(table.get((1, 0), (0, 0, 0, 0))[2] >> 31 & 1)
    kernel = platform.release() or None
    source = {
        "kind": "captured",
        "tool": "kvmfpu.cpus.capture",
        "date": datetime.datetime.now(datetime.UTC).date().isoformat(),
        "kernel": kernel,
        "hypervisor": hypervisor,
    }
    return Dump(table=table, name=name, source=source, kernel=kernel, microcode=microcode_revision())


@cache
def _this(name: str) -> tuple[Dump, HostModel]:
    dump = _capture(name)
    brand = HostModel(dump.table, name=name).brand
    dump.title = f"{brand or 'x86 CPU'} (this machine, captured {dump.source['date']})"
    return dump, _model(dump)


def _model(dump: Dump) -> HostModel:
    return HostModel(
        dump.table,
        name=dump.name or "this",
        title=dump.title,
        source=dump.source,
        kernel=dump.kernel,
        microcode=dump.microcode,
    )


def this_host(name: str = "this") -> HostModel:
    """This machine's processor, read once per process and name."""
    return _this(name)[1]


def write_atomic(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` to ``path`` whole or not at all, never through a symlink.

    A new file (O_CREAT|O_EXCL|O_NOFOLLOW, so a planted name fails instead of being followed)
    in the target's directory, fsync, then rename over the target; rename replaces a name,
    it never writes through one, and a target that is a symlink is refused outright.
    Raises OSError with the failing call's errno.
    """
    target = Path(path)
    if target.is_symlink():
        raise OSError(errno.ELOOP, "is a symbolic link: not written through", str(target))
    if target.is_dir():
        raise OSError(errno.EISDIR, "is a directory", str(target))
    tmp = target.with_name(f".{target.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(tmp, flags, 0o644)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        if target.is_symlink():  # planted while we wrote
            raise OSError(errno.ELOOP, "is a symbolic link: not written through", str(target))
        os.rename(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    try:
        dfd = os.open(target.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return
    try:
        os.fsync(dfd)  # the rename itself survives a crash
    finally:
        os.close(dfd)


def write_capture(path: str | os.PathLike[str], name: str | None = None,
                  write: Callable[[str, str], None] | None = None) -> HostModel:
    """Capture this machine and write it to ``path`` as kvmfpu-host/1 JSON; the model written.

    ``name`` defaults to the file's stem, the name :func:`kvmfpu.cpus.load` gives a dump file.
    """
    stem = name or Path(path).stem.lower() or "this"
    dump, _ = _this("this")
    out = Dump(
        table=dict(dump.table),
        name=stem,
        title=dump.title,
        source=dict(dump.source),
        kernel=dump.kernel,
        microcode=dump.microcode,
    )
    # The CLI passes its one output writer (kvmfpu.cli.common.write_output), which also
    # refuses devices and FIFOs.
    (write or write_atomic)(os.fspath(path), to_json(out))
    return _model(out)
