"""Read CPUID dumps: ``cpuid -r`` text, libvirt ``cputestdata`` XML, and kvmfpu JSON.

The kvmfpu JSON format (``"format": "kvmfpu-host/1"``)::

    {"format": "kvmfpu-host/1", "name": "skylake-sp", "title": "...",
     "source": {"kind": "libvirt", "repo": "...", "path": "...", "commit": "..."},
     "cpuid": [["0x0000000d", "0x00", "0x000002ff", "0x00000a88", "0x00000a88", "0x0"], ...],
     "mxcsr_mask": "0xffff"}            (optional override)

``cpuid`` rows are [leaf, subleaf, eax, ebx, ecx, edx]; objects with those keys are
accepted too, and numbers may be ints or hex strings.
"""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

CpuidKey = tuple[int, int]
CpuidRegs = tuple[int, int, int, int]
CpuidTable = dict[CpuidKey, CpuidRegs]

FORMAT = "kvmfpu-host/1"
MAX_DUMP_BYTES = 4 << 20


class DumpError(ValueError):
    """A CPUID dump could not be read."""


@dataclass
class Dump:
    table: CpuidTable
    name: str | None = None
    title: str | None = None
    source: dict[str, Any] = field(default_factory=dict)
    mxcsr_mask: int | None = None


def _int(value: Any, what: str) -> int:
    if isinstance(value, bool):
        raise DumpError(f"{what}: expected a number, got {value!r}")
    if isinstance(value, int):
        n = value
    elif isinstance(value, str):
        try:
            n = int(value, 0)
        except ValueError:
            raise DumpError(f"{what}: not a number: {value!r}") from None
    else:
        raise DumpError(f"{what}: expected a number, got {type(value).__name__}")
    if not 0 <= n < 1 << 32:
        raise DumpError(f"{what}: {n:#x} is not a 32-bit value")
    return n


_CPUID_R_LINE = re.compile(
    r"^\s*(0x[0-9a-fA-F]+)\s+(0x[0-9a-fA-F]+):\s*eax=(0x[0-9a-fA-F]+)\s+ebx=(0x[0-9a-fA-F]+)"
    r"\s+ecx=(0x[0-9a-fA-F]+)\s+edx=(0x[0-9a-fA-F]+)\s*$")
_CPU_HEADER = re.compile(r"^\s*CPU(\s+\d+)?:\s*$")


def parse_cpuid_r(text: str, cpu: int = 0) -> CpuidTable:
    """Parse ``cpuid -r`` (or ``cpuid -1 -r``) output; take logical CPU ``cpu``."""
    table: CpuidTable = {}
    current = -1
    seen_header = False
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        header = _CPU_HEADER.match(line)
        if header:
            seen_header = True
            current = int(header.group(1)) if header.group(1) else 0
            continue
        m = _CPUID_R_LINE.match(line)
        if not m:
            raise DumpError(f"line {lineno}: not `cpuid -r` output: {line.strip()[:60]!r}")
        if not seen_header:
            current = 0
        if current == cpu:
            leaf, sub, a, b, c, d = (int(g, 16) for g in m.groups())
            table[(leaf, sub)] = (a, b, c, d)
    if not table:
        raise DumpError(f"no CPUID lines for CPU {cpu}")
    return table


def parse_libvirt_xml(text: str) -> CpuidTable:
    """Parse libvirt's ``<cpudata arch='x86'><cpuid eax_in=... ecx_in=... .../>`` files."""
    try:
        root = ET.fromstring(text)
    except ET.ParseError as exc:
        raise DumpError(f"not well-formed XML: {exc}") from None
    table: CpuidTable = {}
    for el in root.iter("cpuid"):
        try:
            key = (_int(el.attrib["eax_in"], "eax_in"), _int(el.attrib["ecx_in"], "ecx_in"))
            table[key] = tuple(_int(el.attrib[r], r) for r in ("eax", "ebx", "ecx", "edx"))  # type: ignore[assignment]
        except KeyError as exc:
            raise DumpError(f"<cpuid> element without {exc.args[0]}") from None
    if not table:
        raise DumpError("no <cpuid> elements")
    return table


def parse_json(text: str) -> Dump:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DumpError(f"not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise DumpError("JSON host file must be an object")
    fmt = data.get("format", FORMAT)
    if fmt != FORMAT:
        raise DumpError(f"unknown format {fmt!r} (expected {FORMAT!r})")
    rows = data.get("cpuid")
    if not isinstance(rows, list) or not rows:
        raise DumpError("JSON host file needs a non-empty 'cpuid' list")
    table: CpuidTable = {}
    for i, row in enumerate(rows):
        if isinstance(row, Mapping):
            try:
                vals = [row["leaf"], row.get("subleaf", row.get("index", 0)),
                        row["eax"], row["ebx"], row["ecx"], row["edx"]]
            except KeyError as exc:
                raise DumpError(f"cpuid[{i}]: missing {exc.args[0]!r}") from None
        elif isinstance(row, list) and len(row) == 6:
            vals = row
        else:
            raise DumpError(f"cpuid[{i}]: expected [leaf, subleaf, eax, ebx, ecx, edx]")
        leaf, sub, a, b, c, d = (_int(v, f"cpuid[{i}]") for v in vals)
        table[(leaf, sub)] = (a, b, c, d)
    source = data.get("source", {})
    if not isinstance(source, dict):
        raise DumpError("'source' must be an object")
    mxcsr = data.get("mxcsr_mask")
    return Dump(
        table=table,
        name=data.get("name"),
        title=data.get("title"),
        source=source,
        mxcsr_mask=None if mxcsr is None else _int(mxcsr, "mxcsr_mask"),
    )


def parse_text(text: str) -> Dump:
    """Sniff the format of a dump's text and parse it."""
    head = text.lstrip()[:200]
    if head.startswith("{"):
        return parse_json(text)
    if head.startswith("<"):
        return Dump(parse_libvirt_xml(text), source={"kind": "libvirt-xml"})
    return Dump(parse_cpuid_r(text), source={"kind": "cpuid -r"})


def to_json(dump: Dump) -> str:
    """Serialise in the kvmfpu-host/1 format, one CPUID row per line."""
    rows = [
        f'    ["{leaf:#010x}", "{sub:#04x}", "{a:#010x}", "{b:#010x}", "{c:#010x}", "{d:#010x}"]'
        for (leaf, sub), (a, b, c, d) in sorted(dump.table.items())
    ]
    head: dict[str, Any] = {"format": FORMAT, "name": dump.name, "title": dump.title,
                            "source": dump.source}
    if dump.mxcsr_mask is not None:
        head["mxcsr_mask"] = f"{dump.mxcsr_mask:#x}"
    text = json.dumps(head, indent=2)
    return text[:-2] + ',\n  "cpuid": [\n' + ",\n".join(rows) + "\n  ]\n}\n"
