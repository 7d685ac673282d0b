"""What an audit is asked about: the fleet's host classes and the population of guests and
state files that live on them.

A host class is a CPU (a packaged host name, a CPUID dump, a Firecracker fingerprint, or
``this``), a kernel release and a VMM version; thousands of hosts collapse into a few
classes, so an inventory that lists hosts one by one is folded by that triple (counts add).
Inventories are TOML (``[[class]]`` tables), JSON (a list, or ``{"classes": [...]}``) or
CSV (header ``name,host,kernel,vmm,count``), as operators export them from a CMDB.

The population is TOML or JSON too: ``[[guests]]`` (a guest CPU description: a QEMU -cpu
string or libvirt mode, with the class it runs on and how many such guests) and
``[[files]]`` (a state file or a directory tree of them, the class they were taken on, and
the guest CPU they ran with when the file does not say).
"""

from __future__ import annotations

import csv
import io
import json
import os
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from kvmfpu.blob.errors import InputError
from kvmfpu.blob.sources import read_bytes

#: Inventories and population lists are small text files; a bigger one is a mistake.
MAX_LIST_BYTES: Final = 64 << 20
#: Host classes in one inventory, and entries in one population list.
MAX_ENTRIES: Final = 100_000
#: Files under one population directory (a tree walk is bounded like any other input).
MAX_FILES_PER_TREE: Final = 10_000_000


@dataclass(frozen=True, order=True)
class HostClass:
    """One kind of host: every host with this CPU, kernel and VMM behaves the same."""

    name: str
    host: str  # packaged host name, dump/fingerprint path, or "this"
    kernel: str
    vmm: str = "qemu"
    count: int = 1

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.host, self.kernel, self.vmm)

    @property
    def endpoint(self) -> str:
        return f"{self.host}@{self.kernel}"

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "host": self.host,
            "kernel": self.kernel,
            "vmm": self.vmm,
            "count": self.count,
        }


@dataclass(frozen=True)
class GuestEntry:
    """Guests described by their CPU, not by a file: ``count`` of them on ``source``."""

    name: str
    cpu: str
    source: str
    count: int = 1


@dataclass(frozen=True)
class FilesEntry:
    """State files (one file or a tree) taken on ``source``; ``guest`` is the guest CPU
    they ran with (None: the file must say, e.g. a libvirt save image's domain XML)."""

    path: str
    source: str
    guest: str | None = None
    fmt: str | None = None


@dataclass(frozen=True)
class Population:
    guests: tuple[GuestEntry, ...]
    files: tuple[FilesEntry, ...]


def _text(path: str | os.PathLike[str]) -> str:
    data = read_bytes(path, MAX_LIST_BYTES)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"{os.fspath(path)}: not UTF-8 text (byte {exc.start})") from None


def _records(path: str | os.PathLike[str], *tables: str) -> list[dict[str, Any]]:
    """The entries of the first of ``tables`` present in a TOML, JSON or CSV list file (a
    bare list, or CSV rows, are the first table's)."""
    table = tables[0]
    name = os.fspath(path)
    text = _text(path)
    stripped = text.lstrip()
    try:
        if name.endswith(".csv"):
            rows = list(csv.DictReader(io.StringIO(text)))
            doc: Any = {table: rows}
        elif stripped.startswith(("[", "{")) and not stripped.startswith("[["):
            doc = json.loads(text)
            if isinstance(doc, list):
                doc = {table: doc}
        else:
            doc = tomllib.loads(text)
    except (ValueError, RecursionError, csv.Error) as exc:
        raise InputError(f"{name}: not a TOML, JSON or CSV list: {str(exc)[:160]}") from None
    if not isinstance(doc, dict):
        raise InputError(f"{name}: expected a table of {table!r} entries")
    items: Any = next((doc[t] for t in tables if t in doc), [])
    if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
        raise InputError(f"{name}: {table!r} entries must be a list of tables")
    if len(items) > MAX_ENTRIES:
        raise InputError(f"{name}: {len(items)} {table!r} entries (at most {MAX_ENTRIES})")
    unknown = set(doc) - {"classes", "class", "guests", "files", "hosts"}
    if unknown:
        raise InputError(f"{name}: unknown section(s) {', '.join(sorted(unknown))}")
    return items


def _field(entry: dict[str, Any], key: str, where: str, *, default: Any = None, required: bool = True) -> Any:
    value = entry.get(key, default)
    if value is None and required:
        raise InputError(f"{where}: missing {key!r}")
    return value


def _str(value: Any, key: str, where: str) -> str:
    if not isinstance(value, str) or not value or len(value) > 4096 or "\n" in value:
        raise InputError(f"{where}: {key!r} must be a one-line string")
    return value


def _count(value: Any, where: str) -> int:
    try:
        n = int(value)
    except (TypeError, ValueError):
        raise InputError(f"{where}: 'count' must be a whole number, not {value!r}"[:160]) from None
    if not 0 < n < 1 << 40:
        raise InputError(f"{where}: 'count' must be 1 or more")
    return n


def _check_keys(entry: dict[str, Any], allowed: set[str], where: str) -> None:
    extra = set(entry) - allowed
    if extra:
        raise InputError(
            f"{where}: unknown key(s) {', '.join(sorted(map(str, extra)))} "
            f"(known: {', '.join(sorted(allowed))})"
        )


def load_fleet(path: str | os.PathLike[str]) -> tuple[HostClass, ...]:
    """The inventory's host classes, folded by (host, kernel, vmm) in first-seen order. A
    class without a name is named after its triple; two different triples may not share a
    name. The hosts, kernels and VMMs are checked here, so a typo is one error up front."""
    from kvmfpu import cpus
    from kvmfpu.kvm.profiles import profile
    from kvmfpu.migrate.vmm import vmm_of

    name = os.fspath(path)
    rows = _records(path, "classes", "class", "hosts")
    if not rows:
        raise InputError(f"{name}: no host classes")
    folded: dict[tuple[str, str, str], HostClass] = {}
    names: dict[str, tuple[str, str, str]] = {}
    base = Path(name).parent
    for i, row in enumerate(rows, 1):
        where = f"{name}: class {i}"
        _check_keys(row, {"name", "host", "kernel", "vmm", "count"}, where)
        host = _str(_field(row, "host", where), "host", where)
        if host not in ("this", ".") and not _packaged(host):
            candidate = base / host
            host = str(candidate) if candidate.exists() else host
        kernel = (
            _str(_field(row, "kernel", where, required=False) or "", "kernel", where)
            if row.get("kernel")
            else ""
        )
        vmm = _str(_field(row, "vmm", where, default="qemu"), "vmm", where)
        try:
            model = cpus.load(host)
            kernel = kernel or model.kernel or ""
            if not kernel:
                raise InputError(f"{where}: missing 'kernel' (the host description has none)")
            profile(kernel)
            vmm_of(vmm)
        except ValueError as exc:  # UnknownKernel, UnknownHost, DumpError
            raise InputError(f"{where}: {exc}") from None
        count = _count(row.get("count", 1), where)
        key = (host, kernel, vmm)
        label = _str(row.get("name") or f"{Path(host).name}@{kernel}/{vmm}", "name", where)
        if names.setdefault(label, key) != key:
            raise InputError(f"{where}: the name {label!r} is already a different class")
        old = folded.get(key)
        folded[key] = HostClass(
            old.name if old else label, host, kernel, vmm, (old.count if old else 0) + count
        )
    return tuple(folded.values())


def _packaged(host: str) -> bool:
    from kvmfpu import cpus

    return host in cpus.names()


def load_population(path: str | os.PathLike[str], classes: tuple[HostClass, ...]) -> Population:
    """The population list's entries, with sources checked against the fleet's classes and
    relative paths taken from the list's own directory."""
    name = os.fspath(path)
    base = Path(name).parent
    by_name = {c.name for c in classes}
    guests: list[GuestEntry] = []
    for i, row in enumerate(_records(path, "guests"), 1):
        where = f"{name}: guests entry {i}"
        _check_keys(row, {"name", "cpu", "source", "count"}, where)
        cpu = _str(_field(row, "cpu", where), "cpu", where)
        candidate = base / cpu
        if candidate.is_file():
            cpu = str(candidate)
        guests.append(
            GuestEntry(
                _str(row.get("name") or cpu, "name", where),
                cpu,
                source_of(row, where, by_name),
                _count(row.get("count", 1), where),
            )
        )
    files: list[FilesEntry] = []
    for i, row in enumerate(_records(path, "files"), 1):
        where = f"{name}: files entry {i}"
        _check_keys(row, {"path", "source", "guest", "format"}, where)
        p = Path(_str(_field(row, "path", where), "path", where))
        p = p if p.is_absolute() else base / p
        if not p.exists():
            raise InputError(f"{where}: {p}: no such file or directory")
        guest = row.get("guest")
        files.append(
            FilesEntry(
                str(p),
                source_of(row, where, by_name),
                _str(guest, "guest", where) if guest is not None else None,
                row.get("format"),
            )
        )
    return Population(tuple(guests), tuple(files))


def source_of(row: dict[str, Any], where: str, by_name: set[str]) -> str:
    source = _str(_field(row, "source", where), "source", where)
    if source not in by_name:
        known = ", ".join(sorted(by_name)[:8])
        raise InputError(f"{where}: source {source!r} is not a class of the fleet ({known}...)")
    return source


def walk(path: str) -> Iterator[str]:
    """Every regular file under ``path`` (or ``path`` itself), in a stable order, symlinks
    not followed (a link loop or a link out of the tree is not the operator's snapshot)."""
    if os.path.isfile(path):
        yield path
        return
    seen = 0
    for top, dirs, names in os.walk(path, followlinks=False):
        dirs.sort()
        for n in sorted(names):
            full = os.path.join(top, n)
            if os.path.isfile(full) and not os.path.islink(full):
                seen += 1
                if seen > MAX_FILES_PER_TREE:
                    raise InputError(f"{path}: more than {MAX_FILES_PER_TREE} files")
                yield full
