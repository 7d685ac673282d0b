"""``kvmfpu kernels``: the kernel-version profiles and their behaviour switches."""

from __future__ import annotations

import argparse
import json
from typing import Any

from kvmfpu.cli.common import UsageError
from kvmfpu.cli.document import document
from kvmfpu.kvm.profiles import (
    LTS_EXTRA,
    NAMED,
    SWITCHES,
    UnknownKernel,
    format_version,
    profile,
)


def add_parser(sub: Any) -> None:
    k = sub.add_parser("kernels", help="list the kernel profiles and behaviour switches")
    k.add_argument("version", nargs="*", help="versions to show (default: the LTS and named "
                                              "profiles; any release such as 6.1.60 or 6.18-rc5 "
                                              "works, and a distribution's uname -r such as "
                                              "5.15.0-91-generic or 6.1.0-18-amd64)")
    k.add_argument("--json", action="store_true", help="print the kvmfpu-kernels/1 document")
    k.set_defaults(func=cmd_kernels)


def _switch_json(name: str) -> dict[str, Any]:
    s = next(s for s in SWITCHES if s.name == name)
    return {"name": s.name, "commit": s.commit, "title": s.title,
            "since": f"{s.since[0]}.{s.since[1]}",
            "until": f"{s.until[0]}.{s.until[1]}" if s.until else None,
            "backports": [format_version(b) for b in s.backports],
            "fixed_in": [format_version(f) for f in s.fixed_in],
            "rc_window": list(s.rc_window) if s.rc_window else None,
            "description": s.description, "note": s.note}


def cmd_kernels(args: argparse.Namespace) -> int:
    try:
        profiles = [profile(v) for v in (args.version or (*LTS_EXTRA, *NAMED))]
    except UnknownKernel as exc:
        raise UsageError(str(exc)) from None
    if args.json:
        print(json.dumps(document("kvmfpu-kernels/1", {
            "profiles": [{"name": p.name, "upstream": p.upstream, "distro": p.distro,
                          "notes": list(p.notes), "switches": sorted(p.switches)}
                         for p in profiles],
            "switches": [_switch_json(s.name) for s in SWITCHES],
        }), indent=2))
        return 0
    width = max(len(s.name) for s in SWITCHES)
    cols = [max(8, len(p.name)) for p in profiles]
    print(f"{'switch':{width}}  " + " ".join(f"{p.name:>{c}}" for p, c in zip(profiles, cols, strict=True)))
    for s in SWITCHES:
        marks = " ".join(f"{'x' if s.name in p.switches else '.':>{c}}"
                         for p, c in zip(profiles, cols, strict=True))
        print(f"{s.name:{width}}  {marks}")
    print()
    for p in profiles:
        if p.notes:
            print(f"{p.name} (upstream {p.upstream}{', ' + p.distro if p.distro else ''}):")
            for n in p.notes:
                print(f"    {n}")
    if any(p.notes for p in profiles):
        print()
    for s in SWITCHES:
        print(f"{s.name}: {s.describe()}")
        if s.description:
            print(f"    {s.description}")
        if s.note:
            print(f"    note: {s.note}")
    return 0
