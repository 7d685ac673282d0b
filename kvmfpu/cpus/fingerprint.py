"""Firecracker ``cpu-template-helper fingerprint dump`` JSON as a host description.

Format (firecracker-microvm/firecracker at 81b38b9dad6056d7a48073e95ac5a9aed51cb2ab):

* ``src/cpu-template-helper/src/fingerprint/mod.rs``: struct ``Fingerprint`` with six
  required fields, ``firecracker_version``, ``kernel_version`` (``uname(2)`` release, dump.rs
  ``get_kernel_version``), ``microcode_version`` (/proc/cpuinfo's "microcode" on x86_64),
  ``bios_version``, ``bios_revision`` (DMI sysfs) and ``guest_cpu_config``;
* ``guest_cpu_config`` is a ``CustomCpuTemplate`` (src/vmm/src/cpu_config/x86_64/
  custom_cpu_template.rs, ``deny_unknown_fields``): ``kvm_capabilities``, ``cpuid_modifiers``
  ([{leaf, subleaf, flags, modifiers: [{register, bitmap}]}]) and ``msr_modifiers``
  ([{addr, bitmap}]). On aarch64 it holds ``reg_modifiers`` instead;
* leaf, subleaf and addr are strings with a ``0x`` or ``0b`` prefix (templates_serde.rs
  ``deserialize_from_str``); a bitmap is ``0b`` + one character per bit, most significant
  first, ``0``/``1`` fixed, ``x`` left alone, ``_`` ignored (templates.rs
  ``RegisterValueFilter::deserialize``). The dump writes every bit (template/dump/x86_64.rs
  ``cpuid_to_modifiers``): a bitmap with an ``x`` is a CPU template, not a fingerprint.

The CPUID is the guest's under Firecracker on that host, not the host's own: see
:mod:`kvmfpu.cpus.model` for what that means for verdicts. A dump taken with ``--template``
(docs/cpu_templates/cpu-template-helper.md) holds the templated CPUID and does not say so:
it then describes that template on that host. The MSRs are the guest's at boot
(Firecracker's MSR list minus template/dump/x86_64.rs ``MSR_EXCLUSION_LIST``).
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from typing import Any, Final

from kvmfpu.cpus.dumps import CpuidKey, CpuidRegs, Dump, DumpError, release_string

#: The fields of ``Fingerprint`` (fingerprint/mod.rs); serde requires each.
FIELDS: Final = (
    "firecracker_version",
    "kernel_version",
    "microcode_version",
    "bios_version",
    "bios_revision",
    "guest_cpu_config",
)
#: CustomCpuTemplate's fields on x86_64 (and aarch64's, to say why such a file is refused).
_X86_CONFIG: Final = frozenset({"kvm_capabilities", "cpuid_modifiers", "msr_modifiers"})
_AARCH64_CONFIG: Final = frozenset({"kvm_capabilities", "reg_modifiers", "vcpu_features"})
_REGISTERS: Final = ("eax", "ebx", "ecx", "edx")
#: More entries than any KVM CPUID table (KVM_MAX_CPUID_ENTRIES is 256) or MSR list holds.
_MAX_ENTRIES: Final = 4096
_MAX_STRING: Final = 256


def looks_like(data: Mapping[str, Any]) -> bool:
    """A JSON object that claims to be a fingerprint (then :func:`parse` says what is wrong)."""
    return "guest_cpu_config" in data or "firecracker_version" in data


def _number(value: Any, what: str, bits: int) -> int:
    """``0x``/``0b`` strings as Firecracker's deserialize_from_str reads them."""
    if not isinstance(value, str) or len(value) > 2 + bits:
        raise DumpError(f"{what}: expected a 0x/0b string, got {str(value)[:40]!r}")
    base = {"0x": 16, "0b": 2}.get(value[:2])
    if base is None:
        raise DumpError(f"{what}: {value!r} has no 0x or 0b prefix")
    try:
        n = int(value[2:], base)
    except ValueError:
        raise DumpError(f"{what}: {value!r} is not a number") from None
    if n >> bits:
        raise DumpError(f"{what}: {value!r} is not a {bits}-bit value")
    return n


def _bitmap(value: Any, what: str, bits: int) -> int:
    """A fully specified bitmap; ``x`` (don't care) bits mean a template, not a dump."""
    if not isinstance(value, str) or len(value) > 2 + 2 * bits:
        raise DumpError(f"{what}: expected a bitmap string, got {str(value)[:40]!r}")
    digits = (value[2:] if value.startswith("0b") else value).replace("_", "")
    if "x" in digits:
        raise DumpError(
            f"{what}: bitmap {value[:40]!r} leaves bits unset ('x'): a CPU template, not a fingerprint dump"
        )
    if len(digits) != bits or digits.strip("01"):
        raise DumpError(f"{what}: {value[:40]!r} is not a {bits}-bit bitmap of 0 and 1")
    return int(digits, 2)


def _text(data: Mapping[str, Any], key: str) -> str:
    value = data[key]
    if not isinstance(value, str) or len(value) > _MAX_STRING:
        raise DumpError(f"fingerprint {key}: expected a short string, got {str(value)[:40]!r}")
    return value


def _list(config: Mapping[str, Any], key: str) -> list[Any]:
    value = config.get(key, [])
    if not isinstance(value, list):
        raise DumpError(f"fingerprint guest_cpu_config.{key}: expected a list")
    if len(value) > _MAX_ENTRIES:
        raise DumpError(f"fingerprint guest_cpu_config.{key}: {len(value)} entries is too many")
    return value


def _cpuid(entries: list[Any]) -> dict[CpuidKey, CpuidRegs]:
    table: dict[CpuidKey, CpuidRegs] = {}
    for i, entry in enumerate(entries):
        where = f"cpuid_modifiers[{i}]"
        if not isinstance(entry, dict):
            raise DumpError(f"{where}: expected an object")
        missing = [k for k in ("leaf", "subleaf", "flags", "modifiers") if k not in entry]
        if missing:
            raise DumpError(f"{where}: missing {', '.join(missing)}")
        key = (_number(entry["leaf"], f"{where}.leaf", 32), _number(entry["subleaf"], f"{where}.subleaf", 32))
        where = f"{where} (leaf {key[0]:#x} subleaf {key[1]:#x})"
        if key in table:
            raise DumpError(f"{where}: listed twice")
        mods = entry["modifiers"]
        if not isinstance(mods, list) or len(mods) > 8:
            raise DumpError(f"{where}: modifiers must be a list of registers")
        regs: dict[str, int] = {}
        for m in mods:
            if not isinstance(m, dict) or m.get("register") not in _REGISTERS or "bitmap" not in m:
                raise DumpError(f"{where}: a modifier is not {{register: eax..edx, bitmap}}")
            regs[m["register"]] = _bitmap(m["bitmap"], f"{where} {m['register']}", 32)
        absent = [r for r in _REGISTERS if r not in regs]
        if absent:
            raise DumpError(f"{where}: no {', '.join(absent)}: a CPU template, not a fingerprint dump")
        table[key] = (regs["eax"], regs["ebx"], regs["ecx"], regs["edx"])
    return table


def _msrs(entries: list[Any]) -> dict[int, int]:
    msrs: dict[int, int] = {}
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or "addr" not in entry or "bitmap" not in entry:
            raise DumpError(f"msr_modifiers[{i}]: expected {{addr, bitmap}}")
        addr = _number(entry["addr"], f"msr_modifiers[{i}].addr", 32)
        msrs[addr] = _bitmap(entry["bitmap"], f"msr_modifiers[{i}] ({addr:#x})", 64)
    return msrs


def parse(data: Mapping[str, Any]) -> Dump:
    """A fingerprint's guest CPUID, MSRs, kernel release and microcode as a :class:`Dump`."""
    missing = [k for k in FIELDS if k not in data]
    if missing:
        raise DumpError(f"not a Firecracker fingerprint dump: missing {', '.join(missing)}")
    config = data["guest_cpu_config"]
    if not isinstance(config, dict):
        raise DumpError("fingerprint guest_cpu_config: expected an object")
    unknown = sorted(set(config) - _X86_CONFIG)
    if unknown:
        if set(config) <= _AARCH64_CONFIG:
            raise DumpError("an aarch64 Firecracker fingerprint (reg_modifiers): no x86 CPUID")
        raise DumpError(f"fingerprint guest_cpu_config: unknown field {unknown[0][:40]!r}")
    table = _cpuid(_list(config, "cpuid_modifiers"))
    if not table:
        raise DumpError("fingerprint guest_cpu_config has no cpuid_modifiers")
    if (0, 0) not in table:
        raise DumpError("fingerprint cpuid_modifiers have no leaf 0x0 (vendor, highest leaf)")
    kernel = release_string(data["kernel_version"], "fingerprint kernel_version")
    source = {
        "kind": "firecracker fingerprint",
        "firecracker_version": _text(data, "firecracker_version"),
        "kernel_version": kernel,
        "microcode_version": _text(data, "microcode_version"),
        "bios_version": _text(data, "bios_version"),
        "bios_revision": _text(data, "bios_revision"),
    }
    brand = b"".join(
        struct.pack("<IIII", *table.get((leaf, 0), (0, 0, 0, 0)))
        for leaf in (0x8000_0002, 0x8000_0003, 0x8000_0004)
    )
    title = (
        f"{brand.decode('latin-1').replace(chr(0), '').strip() or 'x86 CPU'}: Firecracker "
        f"{source['firecracker_version']} guest CPUID on Linux {kernel}"
    )
    return Dump(
        table=table,
        title=title,
        source=source,
        kernel=kernel,
        microcode=source["microcode_version"],
        cpuid_view="firecracker-guest",
        msrs=_msrs(_list(config, "msr_modifiers")),
    )
