"""Read CPUID dumps: ``cpuid -r`` text, libvirt ``cputestdata`` XML, kvmfpu JSON, and
Firecracker ``cpu-template-helper fingerprint dump`` JSON (:mod:`kvmfpu.cpus.fingerprint`).

The kvmfpu JSON format (``"format": "kvmfpu-host/1"``)::

    {"format": "kvmfpu-host/1", "name": "skylake-sp", "title": "...",
     "source": {"kind": "libvirt", "repo": "...", "path": "...", "commit": "..."},
     "cpuid": [["0x0000000d", "0x00", "0x000002ff", "0x00000a88", "0x00000a88", "0x0"], ...],
     "mxcsr_mask": "0xffff",            (optional override)
     "kernel": "6.18.44-fc-v857",       (optional: `uname -r` of the host it was read on)
     "microcode": "0x1000065",          (optional: /proc/cpuinfo's microcode field)
     "cpuid_view": "host",              (optional: whose CPUID this is, see HostModel)
     "msrs": {"0x00000277": "0x0007040600070406", ...}}   (optional: MSR values read)

``cpuid`` rows are [leaf, subleaf, eax, ebx, ecx, edx]; objects with those keys are
accepted too, and numbers may be ints or hex strings. ``kvmfpu cpus NAME --json`` prints a
kvmfpu-hosts/1 document whose ``hosts`` list holds such objects (with derived fields,
ignored here); a document or a list holding one loads too.
"""

from __future__ import annotations

import json
import re
import sys
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

CpuidKey = tuple[int, int]
CpuidRegs = tuple[int, int, int, int]
CpuidTable = dict[CpuidKey, CpuidRegs]

FORMAT = "kvmfpu-host/1"
MAX_DUMP_BYTES = 4 << 20
#: __NEW_UTS_LEN (include/uapi/linux/utsname.h): `uname -r` is at most 64 characters.
MAX_RELEASE_CHARS = 64
#: The largest XSAVE area (and component end) a dump may declare: 1 MiB, ~90 times the
#: largest real one (Sapphire Rapids with AMX, 0x2b00 bytes in leaf 0xD.0 ECX). The bound is
#: kvmfpu's, not the SDM's (a 32-bit size): a dump declaring gigabytes made the model
#: allocate them (12 GB RSS for one `validate`).
MAX_XSAVE_BYTES = 1 << 20
#: CPUID.1:ECX bit 26, XSAVE (Intel SDM Vol. 2A, CPUID, table 3-10).
XSAVE_BIT = 1 << 26

#: Whose CPUID a dump holds. "host": the processor as the host kernel sees it (cpuid -r,
#: libvirt cputestdata, a capture); "firecracker-guest": a Firecracker guest's CPUID on that
#: host (KVM_GET_SUPPORTED_CPUID after Firecracker's normalisation), see kvmfpu.cpus.fingerprint.
CPUID_VIEWS = ("host", "firecracker-guest")


class DumpError(ValueError):
    """A CPUID dump could not be read."""


@dataclass
class Dump:
    table: CpuidTable
    name: str | None = None
    title: str | None = None
    source: dict[str, Any] = field(default_factory=dict)
    mxcsr_mask: int | None = None
    kernel: str | None = None
    microcode: str | None = None
    cpuid_view: str = "host"
    msrs: dict[int, int] = field(default_factory=dict)


def _int(value: Any, what: str, bits: int = 32) -> int:
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
    if not 0 <= n < 1 << bits:
        shown = f"{n:#x}" if n.bit_length() <= 128 else f"a {n.bit_length()}-bit number"
        raise DumpError(f"{what}: {shown} is not a {bits}-bit value")
    return n


def release_string(value: Any, what: str) -> str:
    """A `uname -r` string as a dump records it (printable, at most 64 characters)."""
    if not isinstance(value, str):
        raise DumpError(f"{what}: expected a string, got {type(value).__name__}")
    if not value or len(value) > MAX_RELEASE_CHARS or not value.isprintable() or " " in value:
        raise DumpError(f"{what}: {value[:70]!r} is not a kernel release (`uname -r`)")
    return value


def load_json(text: str) -> Any:
    """json.loads with its failures as DumpError: malformed, too deep, or a number too long."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise DumpError(f"not valid JSON: {exc}") from None
    except RecursionError:
        raise DumpError("not a host description: JSON nested too deeply") from None
    except ValueError:  # a number past int()'s digit limit (sys.get_int_max_str_digits, 3.11)
        raise DumpError(f"not a host description: a number longer than "
                        f"{sys.get_int_max_str_digits()} digits") from None


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
            leaf, sub, a, b, c, d = (_int(g, f"line {lineno}") for g in m.groups())
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


def check_table(table: Mapping[CpuidKey, CpuidRegs]) -> None:
    """DumpError for a table no processor reports, where the model would misbehave on it:
    XSAVE without leaf 0xD or without x87 in it, a component at XCR0/IA32_XSS bit 63, or
    XSAVE sizes and offsets past MAX_XSAVE_BYTES."""
    for (leaf, sub), regs in table.items():
        if not (0 <= leaf < 1 << 32 and 0 <= sub < 1 << 32
                and all(0 <= r < 1 << 32 for r in regs)):
            raise DumpError(f"CPUID {leaf:#x}.{sub:#x}: a value wider than 32 bits"[:120])
    if not table.get((1, 0), (0, 0, 0, 0))[2] & XSAVE_BIT:
        return
    if (0xD, 0) not in table:
        raise DumpError("CPUID.1:ECX.XSAVE is set but there is no leaf 0xD (subleaf 0) "
                        "saying which state components and sizes")
    eax0, ebx0, ecx0, edx0 = table[(0xD, 0)]
    _, ebx1, ecx1, edx1 = table.get((0xD, 1), (0, 0, 0, 0))
    if not eax0 & 1:
        # SDM Vol. 1 13.3: XCR0 bit 0 (x87) is always 1; XSETBV faults without it.
        raise DumpError("CPUID.(EAX=0DH,ECX=0):EAX bit 0 (x87) is clear: XCR0 cannot be set")
    if edx0 >> 31 or edx1 >> 31:
        # SDM Vol. 1 13.3: XCR0 bit 63 is reserved for future expansion and no state
        # component; in XCOMP_BV it means the compacted format (13.4.3), so none is there.
        raise DumpError("CPUID leaf 0xD reports state component 63 (XCR0/IA32_XSS bit 63 is "
                        "reserved: no processor has it)")
    for what, value in (("0xD.0 EBX", ebx0), ("0xD.0 ECX", ecx0), ("0xD.1 EBX", ebx1)):
        if value > MAX_XSAVE_BYTES:
            raise DumpError(f"CPUID {what} declares a {value:#x}-byte XSAVE area (kvmfpu "
                            f"takes up to {MAX_XSAVE_BYTES:#x})")
    supported = eax0 | edx0 << 32 | ecx1 | edx1 << 32
    for bit in range(2, 63):
        if supported >> bit & 1 and (0xD, bit) in table:
            size, offset = table[(0xD, bit)][:2]
            if size + offset > MAX_XSAVE_BYTES:
                raise DumpError(f"CPUID 0xD.{bit}: component {bit} declares {size:#x} bytes at "
                                f"{offset:#x} (kvmfpu takes XSAVE areas up to "
                                f"{MAX_XSAVE_BYTES:#x} bytes)")


def _checked(dump: Dump) -> Dump:
    check_table(dump.table)
    return dump


def parse_json(text: str) -> Dump:
    """A kvmfpu-host/1 object (or a one-element list of them), or a Firecracker fingerprint."""
    return _checked(_parse_json(text))


def _parse_json(text: str) -> Dump:
    data = load_json(text)
    if isinstance(data, dict) and data.get("schema") == "kvmfpu-hosts/1":
        data = data.get("hosts")       # `kvmfpu cpus NAME --json`'s document (kvmfpu.cli.hosts)
    if isinstance(data, list):
        if len(data) != 1:
            raise DumpError(f"a list of {len(data)} host descriptions: a file holds one "
                            "(`kvmfpu cpus NAME --json` with one NAME)")
        data = data[0]
    if not isinstance(data, dict):
        raise DumpError("JSON host file must be an object")
    from kvmfpu.cpus import fingerprint  # imports this module

    if fingerprint.looks_like(data):
        return fingerprint.parse(data)
    return _parse_host_object(data)


def _optional_str(data: Mapping[str, Any], key: str) -> str | None:
    value = data.get(key)
    if value is not None and not isinstance(value, str):
        raise DumpError(f"{key!r} must be a string")
    if value is not None and not value.isprintable():
        # A newline in a name would start a forged line in every report that shows it.
        raise DumpError(f"{key!r} holds control characters: {value[:60]!r}")
    return value


def _parse_host_object(data: Mapping[str, Any]) -> Dump:
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
    kernel = data.get("kernel")
    view = data.get("cpuid_view", "host")
    if view not in CPUID_VIEWS:
        raise DumpError(f"cpuid_view {str(view)[:40]!r}: expected one of {', '.join(CPUID_VIEWS)}")
    msrs = data.get("msrs", {})
    if not isinstance(msrs, dict):
        raise DumpError("'msrs' must be an object of MSR index -> value")
    return Dump(
        table=table,
        name=_optional_str(data, "name"),
        title=_optional_str(data, "title"),
        source=source,
        mxcsr_mask=None if mxcsr is None else _int(mxcsr, "mxcsr_mask"),
        kernel=None if kernel is None else release_string(kernel, "kernel"),
        microcode=_optional_str(data, "microcode"),
        cpuid_view=view,
        msrs={_int(k, "msrs index"): _int(v, f"msrs[{k}]", 64) for k, v in msrs.items()},
    )


def parse_text(text: str) -> Dump:
    """Sniff the format of a dump's text and parse it."""
    head = text.lstrip()[:200]
    if head.startswith(("{", "[")):
        return parse_json(text)
    if head.startswith("<"):
        return _checked(Dump(parse_libvirt_xml(text), source={"kind": "libvirt-xml"}))
    return _checked(Dump(parse_cpuid_r(text), source={"kind": "cpuid -r"}))


def cpuid_rows(table: Mapping[CpuidKey, CpuidRegs]) -> list[list[str]]:
    """The ``cpuid`` list of kvmfpu-host/1, sorted by (leaf, subleaf)."""
    return [[f"{leaf:#010x}", f"{sub:#04x}", f"{a:#010x}", f"{b:#010x}", f"{c:#010x}", f"{d:#010x}"]
            for (leaf, sub), (a, b, c, d) in sorted(table.items())]


def optional_fields(dump: Dump) -> dict[str, Any]:
    """The optional kvmfpu-host/1 keys a dump carries (each only when set)."""
    out: dict[str, Any] = {}
    if dump.mxcsr_mask is not None:
        out["mxcsr_mask"] = f"{dump.mxcsr_mask:#x}"
    if dump.kernel is not None:
        out["kernel"] = dump.kernel
    if dump.microcode is not None:
        out["microcode"] = dump.microcode
    if dump.cpuid_view != "host":
        out["cpuid_view"] = dump.cpuid_view
    if dump.msrs:
        out["msrs"] = msrs_json(dump.msrs)
    return out


def msrs_json(msrs: Mapping[int, int]) -> dict[str, str]:
    """The ``msrs`` object of kvmfpu-host/1, sorted by index."""
    return {f"{k:#010x}": f"{v:#018x}" for k, v in sorted(msrs.items())}


def to_json(dump: Dump) -> str:
    """Serialise in the kvmfpu-host/1 format, one CPUID row per line."""
    rows = ["    " + json.dumps(row) for row in cpuid_rows(dump.table)]
    head: dict[str, Any] = {"format": FORMAT, "name": dump.name, "title": dump.title,
                            "source": dump.source, **optional_fields(dump)}
    text = json.dumps(head, indent=2)
    return text[:-2] + ',\n  "cpuid": [\n' + ",\n".join(rows) + "\n  ]\n}\n"
