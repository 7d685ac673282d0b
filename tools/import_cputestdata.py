#!/usr/bin/env python3
"""Convert libvirt's ``tests/cputestdata`` captures of real x86_64 hosts into kvmfpu host files.

    tools/import_cputestdata.py SRC OUT_DIR [--commit SHA]

For each host libvirt keeps ``x86_64-cpuid-<CPU>.xml`` (the raw CPUID dump),
``x86_64-cpuid-<CPU>.json`` (QEMU's QMP ``query-cpu-model-expansion`` of model ``host``
under KVM on that host) and, for most, ``x86_64-cpuid-<CPU>-disabled.xml`` (the CPUID bits
and feature-MSR bits QEMU+KVM could not enable there). This writes one
``OUT_DIR/<CPU>.json`` per host: the CPUID table in the kvmfpu-host/1 format (readable by
``kvmfpu.cpus.load``) plus

* ``feature_msrs``: the feature MSRs the dump records (``<msr index= edx= eax=>``),
* ``qemu_host_expansion``: ``{"source": {...}, "props": {name: bool}}`` -- the boolean
  feature properties of the expansion only (configuration switches such as ``check``,
  ``enforce``, ``pmu``, ``l3-cache``, Hyper-V ``hv-*``, experimental ``x-*`` and the VMX
  capability words ``vmx-*`` are left out); spellings that QEMU registers as one property
  (``_`` for ``-``, ``sse4_1``/``sse4-1`` for ``sse4.1``) are folded into one name,
  Older libvirt captures hold QEMU's ``feature-words`` of the ``host`` CPU (``qom-get``: one
  ``{cpuid-input-eax, cpuid-input-ecx, cpuid-register, features}`` per word) instead; those
  go to ``"feature_words": [[leaf, subleaf, reg, value], ...]`` as recorded,
* ``disabled`` / ``disabled_msrs`` with ``disabled_source`` where ``-disabled.xml`` exists.

Every part names the libvirt file and commit it was read from. Values are copied, not
derived. SRC is either

* a directory holding libvirt's files themselves (e.g. ``libvirt/tests/cputestdata``);
  then ``--commit`` names the libvirt commit they come from, or
* a directory of transcription notes, one ``<CPU>.txt`` per host, written while reading
  the files one by one through a code-search service (no full checkout at hand). Lines:
  ``xml|json|disabled COMMIT`` start a section and name the commit the next file was read
  at; ``title TEXT``; ``c LEAF SUB EAX EBX ECX EDX`` a CPUID row (hex without ``0x``);
  ``z FIRST LAST`` all-zero rows for leaves FIRST..LAST, subleaf 0; ``m INDEX EDX EAX`` a
  dumped MSR; ``T names...`` / ``F names...`` expansion properties that were true / false;
  ``w LEAF SUB REG VALUE`` a recorded feature word (REG ``eax``..``edx``);
  ``d LEAF SUB EAX EBX ECX EDX`` a disabled-bits row; ``dm INDEX EDX EAX`` a disabled MSR.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# This checkout's kvmfpu, not an installed copy (tools run from the source tree).
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from kvmfpu.cpus.dumps import FORMAT, CpuidTable, parse_libvirt_xml

REPO = "libvirt/libvirt"
DIR = "tests/cputestdata"
REGS = ("eax", "ebx", "ecx", "edx")

# Boolean properties of an x86 QEMU CPU that are switches, not CPUID/MSR feature bits
# (target/i386/cpu.c x86_cpu_properties): left out of "props".
_SWITCHES = """check enforce kvm pmu l3-cache legacy-cache legacy-multi-node host-phys-bits fill-mtrr-mask
    full-cpuid-auto-level cpuid-0xb vmware-cpuid-freq tcg-cpuid realized lmce kvm-no-smi-migration
    kvm-pv-enforce-cpuid start-powered-off xen-vapic migratable"""
_NOT_FEATURES = frozenset(_SWITCHES.split())
_NOT_FEATURE_PREFIXES = ("hv-", "x-", "vmx-")


class ImportError_(ValueError):
    """A source file could not be converted."""


@dataclass
class Capture:
    cpu: str
    title: str | None = None
    table: CpuidTable = field(default_factory=dict)
    msrs: dict[int, int] = field(default_factory=dict)
    props: dict[str, bool] = field(default_factory=dict)
    words: dict[tuple[int, int, int], int] = field(default_factory=dict)  # (leaf, sub, reg) -> value
    disabled: dict[tuple[int, int], tuple[int, int, int, int]] = field(default_factory=dict)
    disabled_msrs: dict[int, int] = field(default_factory=dict)
    commits: dict[str, str] = field(default_factory=dict)  # "xml" | "json" | "disabled" -> sha


def fold(name: str) -> str:
    """One spelling per QEMU property: ``_`` aliases of ``-`` names and the sse4.x forms."""
    name = name.replace("_", "-")
    return {"sse4-1": "sse4.1", "sse4-2": "sse4.2"}.get(name, name)


def is_feature_prop(name: str) -> bool:
    return name not in _NOT_FEATURES and not name.startswith(_NOT_FEATURE_PREFIXES)


def add_prop(cap: Capture, raw: str, value: bool) -> None:
    if not is_feature_prop(fold(raw)):
        return
    name = fold(raw)
    if cap.props.get(name, value) != value:
        raise ImportError_(f"{cap.cpu}: {raw} disagrees with another spelling of {name}")
    cap.props[name] = value


# -- notes --------------------------------------------------------------------------------------
def read_notes(path: Path) -> Capture:
    cap = Capture(path.stem)
    section = ""
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        word, _, rest = line.partition(" ")
        where = f"{path.name}:{lineno}"
        if word in ("xml", "json", "disabled"):
            section = word
            if not re.fullmatch(r"[0-9a-f]{40}", rest.strip()):
                raise ImportError_(f"{where}: {word} needs a 40-digit commit")
            cap.commits[word] = rest.strip()
        elif word == "title":
            cap.title = rest.strip()
        elif word in ("c", "d", "z", "m", "dm"):
            nums = [int(v, 16) for v in rest.split()]
            want = {"c": 6, "d": 6, "z": 2, "m": 3, "dm": 3}[word]
            if len(nums) != want or any(not 0 <= v < 1 << 32 for v in nums):
                raise ImportError_(f"{where}: {word} needs {want} 32-bit hex numbers")
            if word == "c":
                cap.table[(nums[0], nums[1])] = (nums[2], nums[3], nums[4], nums[5])
            elif word == "z":
                for leaf in range(nums[0], nums[1] + 1):
                    cap.table[(leaf, 0)] = (0, 0, 0, 0)
            elif word == "d":
                cap.disabled[(nums[0], nums[1])] = (nums[2], nums[3], nums[4], nums[5])
            elif word == "m":
                cap.msrs[nums[0]] = nums[1] << 32 | nums[2]
            else:
                cap.disabled_msrs[nums[0]] = nums[1] << 32 | nums[2]
        elif word == "w":
            parts = rest.split()
            if section != "json" or len(parts) != 4 or parts[2] not in REGS:
                raise ImportError_(f"{where}: w needs LEAF SUB REG VALUE in the json section")
            key = (int(parts[0], 16), int(parts[1], 16), REGS.index(parts[2]))
            cap.words[key] = int(parts[3], 16)
        elif word in ("T", "F"):
            if section != "json":
                raise ImportError_(f"{where}: properties outside the json section")
            for raw in rest.split():
                add_prop(cap, raw, word == "T")
        else:
            raise ImportError_(f"{where}: unknown line {word!r}")
    return cap


# -- libvirt's own files ----------------------------------------------------------------------
def _msrs(text: str) -> dict[int, int]:
    out: dict[int, int] = {}
    for el in ET.fromstring(text).iter("msr"):
        out[int(el.attrib["index"], 0)] = int(el.attrib["edx"], 0) << 32 | int(el.attrib["eax"], 0)
    return out


def read_libvirt(src: Path, cpu: str, commit: str) -> Capture:
    base = src / f"x86_64-cpuid-{cpu}"
    cap = Capture(cpu, commits={"xml": commit, "json": commit})
    xml_text = base.with_suffix(".xml").read_text()
    cap.table = parse_libvirt_xml(xml_text)
    cap.msrs = _msrs(xml_text)
    comment = re.match(r"\s*<!--\s*(.*?)\s*-->", xml_text)
    cap.title = comment.group(1) if comment else None
    # The .json holds several QMP replies one after another; the expansion comes first.
    decoder = json.JSONDecoder()
    reply, _ = decoder.raw_decode(Path(f"{base}.json").read_text().lstrip())
    ret = reply["return"]
    if isinstance(ret, list):  # qom-get feature-words (older captures)
        for w in ret:
            key = (w["cpuid-input-eax"], w.get("cpuid-input-ecx", 0), REGS.index(w["cpuid-register"].lower()))
            cap.words[key] = w["features"]
    else:
        for raw, value in ret["model"]["props"].items():
            if isinstance(value, bool):
                add_prop(cap, raw, value)
    disabled = Path(f"{base}-disabled.xml")
    if disabled.exists():
        text = disabled.read_text()
        cap.commits["disabled"] = commit
        cap.disabled = dict(parse_libvirt_xml(text))
        cap.disabled_msrs = _msrs(text)
    return cap


# -- output -------------------------------------------------------------------------------------
def _hex(v: int, width: int = 8) -> str:
    return f"{v:#0{width + 2}x}"


def _source(cap: Capture, part: str, suffix: str) -> dict[str, str]:
    return {"repo": REPO, "path": f"{DIR}/x86_64-cpuid-{cap.cpu}{suffix}", "commit": cap.commits[part]}


def to_host_file(cap: Capture) -> str:
    for part in ("xml", "json"):
        if part not in cap.commits:
            raise ImportError_(f"{cap.cpu}: no {part} commit recorded")
    if not cap.table or not (cap.props or cap.words):
        raise ImportError_(f"{cap.cpu}: empty CPUID table or expansion")
    head: dict[str, Any] = {
        "format": FORMAT,
        "name": cap.cpu.lower(),
        "title": cap.title or cap.cpu,
        "source": {"kind": "libvirt", **_source(cap, "xml", ".xml")},
    }
    if cap.msrs:
        head["feature_msrs"] = {_hex(i): _hex(v, 16) for i, v in sorted(cap.msrs.items())}
    expansion: dict[str, Any] = {"source": _source(cap, "json", ".json")}
    if cap.props:
        expansion["props"] = dict(sorted(cap.props.items()))
    if cap.words:
        # Older libvirt captured QEMU's "feature-words" of host instead of an expansion.
        expansion["feature_words"] = [
            [_hex(leaf), _hex(sub, 2), REGS[reg], _hex(value)]
            for (leaf, sub, reg), value in sorted(cap.words.items())
        ]
    head["qemu_host_expansion"] = expansion
    if "disabled" in cap.commits:
        head["disabled_source"] = _source(cap, "disabled", "-disabled.xml")
        head["disabled"] = [
            [_hex(leaf), _hex(sub, 2), REGS[r], _hex(regs[r])]
            for (leaf, sub), regs in sorted(cap.disabled.items())
            for r in range(4)
            if regs[r]
        ]
        if cap.disabled_msrs:
            head["disabled_msrs"] = {_hex(i): _hex(v, 16) for i, v in sorted(cap.disabled_msrs.items())}
    rows = [
        f'    ["{_hex(leaf)}", "{_hex(sub, 2)}", "{_hex(a)}", "{_hex(b)}", "{_hex(c)}", "{_hex(d)}"]'
        for (leaf, sub), (a, b, c, d) in sorted(cap.table.items())
    ]
    text = json.dumps(head, indent=2)
    return text[:-2] + ',\n  "cpuid": [\n' + ",\n".join(rows) + "\n  ]\n}\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("src", type=Path, help="libvirt's cputestdata directory, or a notes directory")
    ap.add_argument("out", type=Path)
    ap.add_argument("--commit", help="libvirt commit of SRC when SRC holds libvirt's own files")
    args = ap.parse_args()
    notes = sorted(args.src.glob("*.txt"))
    captures: list[Capture] = []
    if notes:
        captures = [read_notes(p) for p in notes]
    else:
        if not args.commit:
            ap.error("--commit is required when SRC holds libvirt's own files")
        for js in sorted(args.src.glob("x86_64-cpuid-*.json")):
            cpu = js.name[len("x86_64-cpuid-") : -len(".json")]
            if (args.src / f"x86_64-cpuid-{cpu}.xml").exists():
                captures.append(read_libvirt(args.src, cpu, args.commit))
    args.out.mkdir(parents=True, exist_ok=True)
    for cap in captures:
        (args.out / f"{cap.cpu}.json").write_text(to_host_file(cap))
    print(f"{len(captures)} hosts written to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
