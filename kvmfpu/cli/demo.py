"""``kvmfpu demo``: the main job on the captures that ship with kvmfpu: what is in a KVM
buffer and a QEMU stream, which destinations would accept them and what they would do to the
registers; then the seed bugs and this machine's processor against the model.

``--json`` prints the same run as the kvmfpu-demo/1 document: each section's findings (what
was decoded, each destination's verdict, each replay's outcome) instead of the text; every
section fills its part of the document while it prints (``say`` is a no-op then)."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import Any

from kvmfpu import cpus
from kvmfpu.arch.xfeatures import name_of
from kvmfpu.cli.check_cpu import check_cpu
from kvmfpu.cli.document import document
from kvmfpu.scenarios import SCENARIOS

# Destinations for the KVM sample (host, kernel, guest CPU model): the same layout, Intel's
# layout, a host without AVX-512, and a guest CPU model without AVX-512 before and after
# the kernel stopped limiting KVM_SET_XSAVE to the guest's CPUID (5.17 until 6.6).
DESTINATIONS = (("zen4", "6.6", None), ("skylake-sp", "6.6", None),
                ("sapphirerapids", "6.12", None), ("haswell", "6.6", None),
                ("zen4", "6.1", "zen2"), ("zen4", "6.6", "zen2"))


def add_parser(sub: Any) -> None:
    d = sub.add_parser("demo", help="show what kvmfpu does, on the captures it ships")
    d.add_argument("--src", default="devhost-zen5",
                   help="the KVM sample's host, for the layout table (default devhost-zen5)")
    d.add_argument("--dst", default="skylake-sp", help="host to compare layouts with")
    d.add_argument("--cases", type=int, default=200,
                   help="real-CPU sequences in the last part (default 200; 0 skips it)")
    d.add_argument("--json", action="store_true",
                   help="print the run as the kvmfpu-demo/1 document instead of text")
    d.set_defaults(func=cmd_demo)


Say = Callable[[str], None]


def _place(c: Any) -> dict[str, int] | None:
    return {"offset": c.offset, "size": c.size} if c else None


def _layouts(a: Any, b: Any, say: Say) -> dict[str, Any]:
    say("1. Where XSAVE puts each component (standard format, CPUID leaf 0xD of each host)")
    say(f"   {'component':12} {a.name:>18} {b.name:>18}")
    rows = []
    for bit in sorted(set(a.layout.components) | set(b.layout.components)):
        ca, cb = a.layout.components.get(bit), b.layout.components.get(bit)
        if (ca and ca.supervisor) or (cb and cb.supervisor):
            continue

        def cell(c: Any) -> str:
            return f"{c.offset:#06x} +{c.size}" if c else "-"
        differs = bool(ca and cb and ca.offset != cb.offset)
        mark = "  <- differs" if differs else ""
        say(f"   {name_of(bit):12} {cell(ca):>18} {cell(cb):>18}{mark}")
        rows.append({"bit": bit, "name": name_of(bit), "a": _place(ca), "b": _place(cb),
                     "offsets_differ": differs})
    return {"a": a.name, "b": b.name, "components": rows}


def _kvm_sample(say: Say) -> dict[str, Any]:
    from kvmfpu.blob import decode as dec
    from kvmfpu.blob import infer, render, sample_data, sources
    from kvmfpu.blob.compare import register_diff
    from kvmfpu.blob.convert import convert
    from kvmfpu.blob.errors import InputError
    from kvmfpu.blob.validate import Validator

    path = sample_data.path(sample_data.KVM_ZEN5)
    say(f"\n2. A KVM_GET_XSAVE buffer from Linux 6.18.44 KVM on AMD Zen 5 (shipped sample)\n"
        f"   {path}")
    (cap,) = sources.read(path)
    refused = None
    try:
        infer.choose(cap)
    except InputError as exc:
        refused = str(exc)
        say(f"   $ kvmfpu decode SAMPLE\n   kvmfpu: error: {refused[:150]}...")
    src = cpus.load("devhost-zen5")
    say("   $ kvmfpu decode SAMPLE --host devhost-zen5")
    d = dec.decode(cap.data, src.layout, host=src.name, xcr0=cap.xcr0_hint,
                   mxcsr_mask=src.behaviour.mxcsr_mask)
    for line in render.text(d, origin="sample", host=src.name, how="--host"):
        say("   " + line[:112])
    sample = {"file": str(path), "length": len(cap.data), "without_host": refused,
              "host": src.name, "xstate_bv": f"{d.xstate_bv:#x}",
              "anomalies": list(d.anomalies)}

    say("\n3. Would these destinations take it as it is (KVM_SET_XSAVE; `kvmfpu validate`),\n"
        "   and what would their guests see (`kvmfpu diff`)?")
    destinations = []
    for host, kernel, guest in DESTINATIONS:
        verdict = Validator(host, kernel, guest).check(cap.data)
        where = f"{host} / Linux {kernel}" + (f" / guest {guest}" if guest else "")
        row: dict[str, Any] = {"host": host, "kernel": kernel, "guest_cpu": guest or "host",
                               **verdict.to_json(), "registers_wrong": [], "converted": None}
        destinations.append(row)
        if not verdict.accepted:
            say(f"   {where:36} rejected -{verdict.errno}: {verdict.reason}")
            continue
        dst = cpus.load(host)
        seen = dec.decode(cap.data, dst.layout, host=dst.name)
        lost = register_diff(d, seen)
        row["registers_wrong"] = [n for n, _, _ in lost]
        if not lost:
            say(f"   {where:36} accepted; every register arrives intact")
            continue
        regs = ", ".join(n for n, _, _ in lost[:4]) + (" ..." if len(lost) > 4 else "")
        say(f"   {where:36} accepted, but {len(lost)} registers arrive wrong ({regs}): "
            f"the bytes sit at {src.name}'s offsets")
        moved, notes = convert(cap.data, src, dst)
        again = register_diff(d, dec.decode(moved, dst.layout, host=dst.name))
        ok = Validator(host, kernel, guest).check(moved).accepted
        row["converted"] = {"accepted": ok, "registers_differ": [n for n, _, _ in again],
                            "notes": notes}
        say(f"   {'':36} after `kvmfpu convert --from {src.name} --to {host}`: "
            f"{'accepted' if ok else 'rejected'}, {len(again)} registers differ "
            f"({'; '.join(notes[:2])} ...)")
    return {"kvm_sample": sample, "destinations": destinations}


def _qemu_sample(say: Say) -> dict[str, Any]:
    from kvmfpu.blob import decode as dec
    from kvmfpu.blob import describe, infer, sample_data, sources
    from kvmfpu.blob.validate import Validator

    path = sample_data.path(sample_data.QEMU_TCG)
    say(f"\n4. A QEMU 7.2 migration stream of a TCG guest (shipped sample, read with the\n"
        f"   stream's own JSON description)\n   {path}")
    (cap,) = sources.read(path)
    ch = infer.choose(cap, "skylake-sp")
    d = dec.decode(cap.data, ch.layout, host=ch.host, xcr0=cap.xcr0_hint,
                   mxcsr_mask=ch.mxcsr_mask, xfd=cap.extra.get("xfd", 0))
    st = [r for r in describe.st_rows(d) if r[3]]
    regs = ", ".join(f"{r}={v}" for r, v, _, raw in st)
    say(f"   the guest left: {regs}; xmm1={d.field('xmm1').value:#x}; "
        f"MXCSR {d.field('mxcsr').value:#x}")
    for n in cap.notes:
        say(f"   note: {n}")
    for a in d.anomalies:
        say(f"   ANOMALY: {a}")
    v = Validator("skylake-sp", "6.6").check(cap.data)
    say(f"   QEMU's buffer for skylake-sp / Linux 6.6: "
        f"{'accepted' if v.accepted else 'rejected -' + str(v.errno)}: a TCG->KVM migration "
        "restores initial x87/SSE/AVX/PKRU state (QEMU under TCG leaves XSTATE_BV 0)")
    return {"file": str(path), "host": ch.host, "st": {r: v for r, v, _, _ in st},
            "xmm1": f"{d.field('xmm1').value:#x}", "mxcsr": f"{d.field('mxcsr').value:#x}",
            "notes": list(cap.notes), "anomalies": list(d.anomalies),
            "validate": {"host": "skylake-sp", "kernel": "6.6", **v.to_json()}}


def cmd_demo(args: argparse.Namespace) -> int:
    a, b = cpus.load(args.src), cpus.load(args.dst)
    say: Say = (lambda _: None) if args.json else print
    say("kvmfpu demo: captured xsave state, what it holds and where it would be accepted\n")
    out: dict[str, Any] = {"layouts": _layouts(a, b, say), **_kvm_sample(say),
                           "qemu_sample": _qemu_sample(say)}

    say("\n5. The seed bugs, replayed on the model before and after their fixes")
    replays = []
    for sc in SCENARIOS:
        for release in (sc.last_affected, sc.first_fixed or sc.last_unaffected):
            if release is None:
                continue
            rep = sc.run(release)
            replays.append({"scenario": sc.name, "release": rep.version, "bug": rep.bug,
                            "verdict": rep.verdict})
            say(f"   {sc.name:16} {rep.version:9} {'BUG   ' if rep.bug else 'no bug'} "
                f"{rep.verdict[:90]}")
    out["replays"] = replays

    from kvmfpu.native.xsave_probe import probe_unavailable
    reason = probe_unavailable()
    say("\n6. This machine's processor against the model")
    real: dict[str, Any] = {"ran": False, "skipped": None, "cases": 0, "faulting": 0,
                            "agreed": 0}
    if args.cases <= 0:
        real["skipped"] = "--cases 0"
        say("   skipped (--cases 0)")
    elif reason:
        real["skipped"] = reason
        say(f"   skipped: {reason}")
    else:
        rep = check_cpu(args.cases, 1)
        real.update(ran=True, cases=rep.cases, faulting=rep.faulting, agreed=rep.agreed)
        say(f"   {rep.cases} random XRSTOR/XSAVE* sequences ({rep.faulting} faulting): "
            f"{rep.agreed} agree byte for byte")
    out["real_cpu"] = real
    if args.json:
        print(json.dumps(document("kvmfpu-demo/1", out), indent=2))
    return 0
