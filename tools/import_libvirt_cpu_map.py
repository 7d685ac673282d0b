#!/usr/bin/env python3
"""Import libvirt's x86 CPU map (feature names, CPUID/MSR bits, models) into kvmfpu's data.

    tools/import_libvirt_cpu_map.py [SRC] [-o kvmfpu/qemu/data/libvirt_cpu_map.json]

SRC is a ``cpu_map`` directory: Debian's ``/usr/share/libvirt/cpu_map`` (package libvirt0,
the default) or a libvirt checkout's ``src/cpu_map``. It reads ``index.xml`` for the x86
files in libvirt's order, ``x86_vendors.xml``, ``x86_features.xml`` (each feature's CPUID
leaf/subleaf/register bits or MSR bits, and ``migratable='no'``) and every ``x86_*.xml``
model (vendor, signatures, decode flags, features). Values are copied, nothing is derived.

The package must not read /usr/share at run time: kvmfpu.qemu.libvirt_cpu reads the JSON
this writes. The output records the libvirt version and the Debian package it came from
(``dpkg-query`` when the source is the installed package).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

REGS = ("eax", "ebx", "ecx", "edx")


def _int(text: str | None) -> int:
    return int(text or "0", 0)


def _bits(value: int) -> list[int]:
    return [b for b in range(64) if value >> b & 1]


def feature(el: ET.Element) -> dict[str, Any]:
    out: dict[str, Any] = {"name": el.get("name")}
    if el.get("migratable") == "no":
        out["migratable"] = False
    aliases = [a.get("name") for a in el.findall("alias")]
    if aliases:  # <alias name= source='qemu'/>: QEMU's spellings libvirt translates from
        out["aliases"] = aliases
    cpuid = []
    for c in el.findall("cpuid"):
        leaf, sub = _int(c.get("eax_in")), _int(c.get("ecx_in"))
        for reg in REGS:
            for b in _bits(_int(c.get(reg))):
                cpuid.append([leaf, sub, REGS.index(reg), b])
    msr = []
    for m in el.findall("msr"):
        value = _int(m.get("edx")) << 32 | _int(m.get("eax"))
        msr += [[_int(m.get("index")), b] for b in _bits(value)]
    if cpuid:
        out["cpuid"] = cpuid
    if msr:
        out["msr"] = msr
    return out


def model(el: ET.Element) -> dict[str, Any]:
    dec = el.find("decode")
    vendor = el.find("vendor")
    sigs = []
    for s in el.findall("signature"):
        sig: dict[str, Any] = {"family": _int(s.get("family")), "model": _int(s.get("model"))}
        if s.get("stepping"):
            sig["stepping"] = s.get("stepping")
        sigs.append(sig)
    return {
        "name": el.get("name"),
        "vendor": None if vendor is None else vendor.get("name"),
        "decode_host": dec is None or dec.get("host") != "off",
        "decode_guest": dec is None or dec.get("guest") != "off",
        "signatures": sigs,
        # removed='yes': no longer part of the model (libvirt turns it off explicitly)
        "features": [f.get("name") for f in el.findall("feature") if f.get("removed") != "yes"],
        "removed": [f.get("name") for f in el.findall("feature") if f.get("removed") == "yes"],
    }


def package_version(src: Path) -> str | None:
    try:
        owner = subprocess.run(
            ["dpkg-query", "-S", str(src / "x86_features.xml")], capture_output=True, text=True, check=False
        ).stdout.split(":")[0]
        if not owner:
            return None
        ver = subprocess.run(
            ["dpkg-query", "-W", "-f", "${Version}", owner], capture_output=True, text=True, check=False
        ).stdout
        return f"{owner} {ver}" if ver else None
    except OSError:
        return None


def convert(src: Path) -> dict[str, Any]:
    index = ET.parse(src / "index.xml").getroot()
    arch = next(a for a in index.findall("arch") if a.get("name") == "x86")
    files = [i.get("filename") for i in arch.iter("include")]
    vendors, features, models = [], [], []
    for name in files:
        assert name is not None
        root = ET.parse(src / name).getroot()
        for v in root.findall("vendor"):
            vendors.append({"name": v.get("name"), "string": v.get("string")})
        features += [feature(f) for f in root.findall("feature")]
        models += [model(m) for m in root.findall("model")]
    pkg = package_version(src)
    return {
        "source": {
            "what": "libvirt src/cpu_map (x86): index.xml order; x86_vendors, x86_features, x86_*.xml",
            "read_from": str(src),
            "package": pkg,
            "libvirt": pkg.split()[1].split("-")[0] if pkg else None,
            "tool": "tools/import_libvirt_cpu_map.py",
        },
        "vendors": vendors,
        "features": features,
        "models": models,
    }


def dumps(data: dict[str, Any]) -> str:
    """One vendor, feature or model per line (reviewable diffs when libvirt's map changes)."""
    parts = [f' "source": {json.dumps(data["source"])}']
    for key in ("vendors", "features", "models"):
        rows = ",\n".join("  " + json.dumps(x) for x in data[key])
        parts.append(f' "{key}": [\n{rows}\n ]')
    return "{\n" + ",\n".join(parts) + "\n}\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("src", nargs="?", default="/usr/share/libvirt/cpu_map")
    ap.add_argument(
        "-o",
        "--output",
        default=str(Path(__file__).resolve().parents[1] / "kvmfpu/qemu/data/libvirt_cpu_map.json"),
    )
    args = ap.parse_args(argv)
    data = convert(Path(args.src))
    text = dumps(data)
    Path(args.output).write_text(text)
    print(f"{len(data['features'])} features, {len(data['models'])} models -> {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
