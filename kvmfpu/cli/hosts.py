"""``kvmfpu cpus``: the host CPU models."""

from __future__ import annotations

import argparse
import json
from typing import Any

from kvmfpu import cpus
from kvmfpu.arch import xfeatures as xf
from kvmfpu.arch.xfeatures import name_of


def add_parser(sub: Any) -> None:
    c = sub.add_parser("cpus", help="list the host CPU models, or describe some")
    c.add_argument("host", nargs="*", help="model names or CPUID dump files")
    c.add_argument("--json", action="store_true")
    c.set_defaults(func=cmd_cpus)


def cmd_cpus(args: argparse.Namespace) -> int:
    if args.host:
        models = [cpus.load(h) for h in args.host]
        if args.json:
            print(json.dumps([m.describe() for m in models], indent=2))
            return 0
        for m in models:
            _print_host(m)
        return 0
    models = [cpus.load(n) for n in cpus.names()]
    if args.json:
        print(json.dumps([m.describe() for m in models], indent=2))
        return 0
    print(f"{'name':22} {'vendor':6} {'fam/mod':8} {'XCR0':>9} {'XSS':>8} {'std':>6} {'cmp':>6}  "
          "xsave features / title")
    for m in models:
        d = m.describe()
        vendor = "Intel" if m.vendor == "GenuineIntel" else "AMD" if m.vendor == "AuthenticAMD" \
            else m.vendor
        feats = ",".join(d["xsave_features"]) or "(no XSAVE)" if m.has("xsave") else "(no XSAVE)"
        print(f"{m.name:22} {vendor:6} {d['family']:>2x}h/{d['model']:02x}h {d['supported_xcr0']:>9}"
              f" {d['supported_xss']:>8} {d['standard_size']:>6} {d['compacted_size']:>6}  "
              f"{feats}\n{'':23}{m.title}")
    return 0


def _print_host(m: cpus.HostModel) -> None:
    fam, mod, step = m.signature
    print(f"{m.name}: {m.title}")
    print(f"  {m.vendor} family {fam:#x} model {mod:#x} stepping {step}")
    src = m.source
    where = " ".join(f"{k}={v}" for k, v in src.items())
    print(f"  source: {where}")
    if not m.has("xsave"):
        print("  no XSAVE (CPUID.1:ECX[26]=0): FXSAVE only")
        return
    print(f"  XCR0 supported {xf.describe_mask(m.supported_xcr0)}")
    print(f"  IA32_XSS supported {xf.describe_mask(m.supported_xss)}")
    print(f"  XSAVE features: {', '.join(m.describe()['xsave_features'])}; "
          f"MXCSR_MASK {m.behaviour.mxcsr_mask:#x}")
    print(f"  {'bit':>3} {'component':12} {'size':>6} {'std offset':>10}  flags")
    for b, c in sorted(m.layout.components.items()):
        flags = ",".join(f for f, on in (("supervisor", c.supervisor), ("align64", c.align64),
                                         ("xfd", c.xfd)) if on)
        off = "-" if c.supervisor else f"{c.offset:#x}"
        print(f"  {b:>3} {name_of(b):12} {c.size:>#6x} {off:>10}  {flags}")
