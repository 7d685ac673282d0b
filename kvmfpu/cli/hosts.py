"""``kvmfpu cpus``: the host CPU models; ``kvmfpu cpus diff A B``; ``kvmfpu cpus --capture FILE``."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from typing import Any

from kvmfpu import cpus
from kvmfpu.arch import xfeatures as xf
from kvmfpu.arch.xfeatures import name_of
from kvmfpu.cli.common import UsageError, write_output
from kvmfpu.cli.document import document
from kvmfpu.cpus import capture
from kvmfpu.cpus.diff import Word, diff


def add_parser(sub: Any) -> None:
    c = sub.add_parser(
        "cpus", help="list the host CPU models, describe some, compare two (diff A B), or "
                     "capture this machine (--capture FILE)",
        description="HOST is a packaged model name, 'this' or '.' (this machine, read through "
                    "CPUID), or a file: `cpuid -r` output, libvirt cputestdata XML, kvmfpu JSON "
                    "(what --json and --capture write) or a Firecracker `cpu-template-helper "
                    "fingerprint dump`. `kvmfpu cpus diff A B` shows what two hosts differ in.")
    c.add_argument("host", nargs="*", help="HOST... to describe, or: diff A B")
    c.add_argument("--json", action="store_true",
                   help="print the kvmfpu-hosts/1 document (with diff: kvmfpu-host-diff/1)")
    c.add_argument("--capture", metavar="FILE",
                   help="write this machine's CPUID to FILE as kvmfpu-host/1 JSON (atomically)")
    c.add_argument("--name", help="the model name --capture records (default: FILE's stem)")
    c.set_defaults(func=cmd_cpus)


def qemu_words() -> tuple[Word, ...]:
    """QEMU's CPUID feature words with its property names (feature_word_info[])."""
    from kvmfpu.qemu.features import WORDS

    return tuple(Word(w.word, w.leaf, w.subleaf, w.reg, w.names) for w in WORDS if w.leaf is not None)


def cmd_cpus(args: argparse.Namespace) -> int:
    if args.capture is not None:
        return _capture(args)
    if args.name is not None:
        raise UsageError("--name goes with --capture FILE")
    if args.host[:1] == ["diff"]:
        return _diff(args)
    if args.host:
        models = [cpus.load(h) for h in args.host]
        if args.json:
            _print_json(models)
            return 0
        for m in models:
            _print_host(m)
        return 0
    models = [cpus.load(n) for n in cpus.names()]
    if args.json:
        _print_json(models)
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
    print("(also: 'this' for this machine, or any dump file: see kvmfpu cpus --help)")
    return 0


def _capture(args: argparse.Namespace) -> int:
    if args.host:
        raise UsageError("--capture FILE takes no HOST (it captures this machine)")
    try:
        m = capture.write_capture(args.capture, args.name,
                                  lambda p, t: write_output(p, t, stdout=False))
    except OSError as exc:
        raise UsageError(f"{args.capture}: cannot write: {exc.strerror or exc}") from None
    if args.json:
        _print_json([m], captured_to=args.capture)
        return 0
    print(f"wrote {args.capture}: {m.name}: {m.title}; {len(m.table)} CPUID rows, kernel "
          f"{m.kernel or 'unknown'}, microcode {m.microcode or 'unknown'}")
    return 0


def _diff(args: argparse.Namespace) -> int:
    if len(args.host) != 3:
        raise UsageError("usage: kvmfpu cpus diff A B (two hosts; a file named diff: ./diff)")
    d = diff(cpus.load(args.host[1]), cpus.load(args.host[2]), qemu_words())
    if args.json:
        print(json.dumps(document("kvmfpu-host-diff/1", d.to_json()), indent=2))
        return 0
    print("\n".join(d.lines()))
    return 0


def _print_json(models: Sequence[cpus.HostModel], **extra: Any) -> None:
    """kvmfpu-hosts/1: the models under ``hosts`` (a bare list before the envelope; a document
    holding one host loads back as a host file, kvmfpu.cpus.dumps)."""
    print(json.dumps(document("kvmfpu-hosts/1", {"hosts": [m.describe() for m in models],
                                                 **extra}), indent=2))


def _print_host(m: cpus.HostModel) -> None:
    fam, mod, step = m.signature
    print(f"{m.name}: {m.title}")
    print(f"  {m.vendor} family {fam:#x} model {mod:#x} stepping {step}")
    src = m.source
    where = " ".join(f"{k}={v}" for k, v in src.items())
    print(f"  source: {where}")
    if m.kernel or m.microcode:
        print(f"  read under kernel {m.kernel or 'unknown'}, microcode {m.microcode or 'unknown'}")
    if m.msrs:
        whose = " (the guest's values at boot)" if m.cpuid_view == "firecracker-guest" else ""
        print(f"  MSRs: {len(m.msrs)} recorded{whose}: {' '.join(f'{i:#x}' for i in sorted(m.msrs))}")
    if m.cpuid_view != "host":
        print(f"  CPUID: {m.cpuid_view} (the guest's view on that host, not the host's own: "
              "bits KVM or the VMM hid are unknown)")
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
