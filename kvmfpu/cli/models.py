"""``kvmfpu models``: QEMU's CPU models, and one model's features on a host.

- ``kvmfpu models [--versions] [--json]``: every named model (its newest version, or every
  version), then ``host``, ``max``, the aliases and libvirt's mode names. JSON:
  ``kvmfpu-models/1`` (``models``, ``sources``, and ``special``, ``aliases``,
  ``libvirt_modes``).
- ``kvmfpu models NAME [--host HOST[@KERNEL]] [--qemu REL] [--json]``: NAME is anything
  ``migrate --guest`` takes; its features, the XSAVE state they enable and, with a host,
  what QEMU drops there (x86_cpu_filter_features against KVM's table and QEMU's fix-ups,
  kvmfpu.qemu.guest_cpuid.build). JSON: ``kvmfpu-model/1``.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from kvmfpu.cli.common import UsageError
from kvmfpu.cli.document import document

_XSAVE_FEATURES = ("xsave", "xsaveopt", "xsavec", "xgetbv1", "xsaves", "xfd")


def add_parser(sub: Any) -> None:
    g = sub.add_parser(
        "models",
        help="QEMU's CPU models and the XSAVE state they enable",
        description="Without NAME: every model, host, max, the aliases and libvirt's modes. "
        "With NAME (anything migrate --guest takes): its features and, with --host, what "
        "QEMU drops on that host.",
    )
    g.add_argument("name", nargs="?", metavar="NAME", help="a -cpu value, libvirt mode or guest file")
    g.add_argument("--versions", action="store_true", help="one line per version")
    g.add_argument("--host", metavar="HOST[@KERNEL]", help="show what QEMU would drop on this host")
    g.add_argument("--qemu", metavar="REL", help="resolve as this QEMU release (e.g. 7.2)")
    g.add_argument("--json", action="store_true",
                   help="print the kvmfpu-models/1 document (kvmfpu-model/1 with NAME)")
    g.set_defaults(func=cmd_models)


def cmd_models(args: argparse.Namespace) -> int:
    if args.name is None:
        if args.host or args.qemu:
            raise UsageError("--host and --qemu need a model NAME")
        return _list(args)
    return _one(args)


def _xsave_feats(g: Any) -> str:
    return ",".join(sorted(f for f in g.features if f in _XSAVE_FEATURES)) or "-"


def _list(args: argparse.Namespace) -> int:
    from kvmfpu.qemu import libvirt_cpu, models

    rows = []
    for m in models.catalogue():
        versions = [models.resolve(f"{m.name}-v{v.version}") for v in m.versions]
        rows += versions if args.versions else versions[-1:]
    aliases = {v.alias: f"{m.name}-v{v.version}" for m in models.catalogue() for v in m.versions if v.alias}
    special = {
        "host": "the host's CPU as KVM offers it (QEMU's host expansion, migratable=on)",
        "max": "with KVM the same as host; every feature QEMU can emulate under TCG",
    }
    modes = {
        "host-passthrough": "-cpu host",
        "maximum": "-cpu max",
        "host-model": "libvirt's host CPU model: the closest cpu_map model plus the host's "
        "features, computed on the source host",
    }
    if args.json:
        body = {
            "sources": list(models.sources()),
            "models": [g.to_json() for g in rows],
            "special": special,
            "aliases": aliases,
            "libvirt_modes": modes,
            "libvirt_cpu_map": libvirt_cpu.source(),
        }
        print(json.dumps(document("kvmfpu-models/1", body), indent=2))
        return 0
    latest = {m.name: m.latest for m in models.catalogue()}
    for g in rows:
        extra = f"  (unverified: {g.unverified})" if g.unverified else ""
        if not args.versions and latest[g.name] > 1:
            extra += f"  (versions v1..v{latest[g.name]}: --versions)"
        print(f"{g.label:28} XCR0 {g.xcr0:#9x}  XSS {g.xss:#7x}  {_xsave_feats(g)}{extra}")
    for name, what in special.items():
        print(f"{name:28} {what}")
    for alias, target in aliases.items():
        print(f"{alias:28} alias of {target}")
    for name, what in modes.items():
        print(f"{name:28} libvirt mode: {what}")
    return 0


def _one(args: argparse.Namespace) -> int:
    from kvmfpu import cpus
    from kvmfpu.blob.errors import InputError
    from kvmfpu.kvm.profiles import UnknownKernel
    from kvmfpu.kvm.system import Kvm
    from kvmfpu.migrate.check import endpoint
    from kvmfpu.migrate.guest_spec import resolve_guest
    from kvmfpu.qemu import models
    from kvmfpu.qemu.guest_cpuid import build

    if args.qemu is not None and args.qemu not in models.RELEASES:
        raise UsageError(f"--qemu {args.qemu}: kvmfpu knows the models of {', '.join(models.RELEASES)}")
    try:
        ep = endpoint(args.host) if args.host else None
        kvm = Kvm(ep.host, ep.kernel, ep.flavor) if ep else None
        g = resolve_guest(args.name, host=kvm, qemu=args.qemu)
    except (InputError, UnknownKernel, cpus.UnknownHost, ValueError) as exc:
        raise UsageError(str(exc).strip('"')) from None
    on_host: dict[str, Any] | None = None
    if kvm is not None and ep is not None:
        cpu = build(kvm, g)
        on_host = {
            "host": ep.host.name,
            "kernel": kvm.kernel.name,
            "dropped": list(cpu.filtered),
            "features": sorted(cpu.features),
            "xcr0": f"{cpu.xcr0:#x}",
            "xss": f"{cpu.xss:#x}",
            "starts_with_enforce": cpu.runs_with_enforce,
            "checked": "QEMU's x86_cpu_filter_features of the CPUID feature words against "
            "KVM_GET_SUPPORTED_CPUID with QEMU's fix-ups, and the XSAVE components",
            "not_checked": "feature-MSR words (IA32_ARCH_CAPABILITIES, VMX capabilities), "
            "SEV/TDX masks, cpu-pm=on",
        }
    if args.json:
        body = {"model": g.to_json(), "msr_features": sorted(g.msr_features), "on_host": on_host}
        print(json.dumps(document("kvmfpu-model/1", body), indent=2))
        return 0
    print(f"{g.label}: XCR0 {g.xcr0:#x}, XSS {g.xss:#x}, vendor {g.vendor or '(the host)'}")
    if g.passthrough:
        print("features: the host's (QEMU's host expansion on the host it runs on)")
    else:
        print(f"features ({len(g.features)}): {' '.join(sorted(g.features))}")
    if g.msr_features:
        print(f"feature-MSR bits ({len(g.msr_features)}): {' '.join(sorted(g.msr_features))}")
    for n in g.notes:
        print(f"note: {n}")
    if on_host is not None:
        dropped = on_host["dropped"]
        print(
            f"on {on_host['host']} (Linux {on_host['kernel']}): XCR0 {on_host['xcr0']}, XSS {on_host['xss']}"
        )
        if dropped:
            print(
                f"QEMU drops {len(dropped)} (host doesn't support requested feature; "
                "enforce refuses to start):"
            )
            for d in dropped:
                print(f"  {d}")
        else:
            print("QEMU drops nothing: the model starts with enforce")
        print(f"checked: {on_host['checked']}")
        print(f"not checked: {on_host['not_checked']}")
    return 0
