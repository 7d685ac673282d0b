"""The ``kvmfpu`` command line.

Bad input never produces a traceback: one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import struct
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

from kvmfpu import cpus
from kvmfpu.arch import xfeatures as xf
from kvmfpu.arch.xfeatures import name_of

ALL = (1 << 64) - 1


class UsageError(Exception):
    """Bad input from the user: reported in one line, exit 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def _short(v: int) -> str:
    """A register value in hex, long ones elided in the middle."""
    text = f"{v:#x}"
    return text if len(text) <= 26 else f"{text[:12]}...{text[-8:]} ({v.bit_length()} bits)"


# -- cpus ------------------------------------------------------------------------------------

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


# -- demo ------------------------------------------------------------------------------------

def _demo_state(cpu: Any) -> None:
    cpu.set_reg("fcw", 0x027F)
    cpu.set_reg("st0", (0x4000 << 64) | (1 << 63))          # 2.0
    cpu.set_reg("xmm0", 0x3FF0000000000000)                  # 1.0 in the low double
    cpu.set_reg("ymm3", (0xC0DE << 128) | 0xBEEF)
    cpu.set_reg("k1", 0xF0F0)
    cpu.set_reg("zmm17", 0x1234_5678 << 300)
    cpu.set_reg("pkru", 0x55555554)


def cmd_demo(args: argparse.Namespace) -> int:
    from kvmfpu.arch import schemas
    from kvmfpu.scenarios import acrn_xss
    from kvmfpu.testing import booted

    a, b = cpus.load(args.src), cpus.load(args.dst)
    print(f"kvmfpu demo: the emulated XSAVE core on the {a.name} and {b.name} models\n")
    print("1. Where XSAVE puts each component (standard format, from each host's CPUID 0xD)")
    print(f"   {'component':12} {a.name:>18} {b.name:>18}")
    for bit in sorted(set(a.layout.components) | set(b.layout.components)):
        ca, cb = a.layout.components.get(bit), b.layout.components.get(bit)
        if (ca and ca.supervisor) or (cb and cb.supervisor):
            continue

        def cell(c: Any) -> str:
            return f"{c.offset:#06x} +{c.size}" if c else "-"
        mark = "  <- differs" if ca and cb and ca.offset != cb.offset else ""
        print(f"   {name_of(bit):12} {cell(ca):>18} {cell(cb):>18}{mark}")

    src = booted(a)
    _demo_state(src)
    src.xsave(0, ALL)
    size = a.layout.standard_size(src.xcr0)
    image = bytes(src.memory[:size])
    area = schemas.xsave_area(a.layout).parse(image)
    print(f"\n2. A guest state saved by XSAVE on {a.name} ({size} bytes), decoded")
    bv = area.header.xstate_bv
    print(f"   XSTATE_BV {xf.describe_mask(bv)}  XCOMP_BV {area.header.xcomp_bv:#x}")
    print(f"   x87: FCW {area.legacy.fcw:#06x}  ST0 {area.legacy.st[0].sign_exponent:#06x}:"
          f"{area.legacy.st[0].significand:#018x} (2.0)  MXCSR {area.legacy.mxcsr:#x}")
    print(f"   xmm0 {area.legacy.xmm[0]:#x}")
    if area.ymm is not None:
        print(f"   ymm3[255:128] {area.ymm.ymmh[3]:#x}")
    if area.opmask is not None:
        print(f"   k1 {area.opmask.k[1]:#x}")
    if area.hi16_zmm is not None:
        print(f"   zmm17 {_short(area.hi16_zmm.zmm[1])}")
    if area.pkru is not None:
        print(f"   pkru {area.pkru.pkru:#010x}")

    dst = booted(b)
    common = src.xcr0 & dst.xcr0
    dst.memory[:size] = image
    struct.pack_into("<Q", dst.memory, 512, struct.unpack_from("<Q", image, 512)[0] & common)
    print(f"\n3. The same bytes XRSTORed verbatim on {b.name} (a raw-blob restore)")
    try:
        dst.xrstor(0, ALL)
        lost = [r for r in ("k1", "zmm17", "pkru", "ymm3") if _has(src, r) and _has(dst, r)
                and src.reg(r) != dst.reg(r)]
        if lost:
            for r in lost:
                print(f"   {r}: saved {_short(src.reg(r))}, restored {_short(dst.reg(r))}"
                      "  <- corrupted")
        else:
            print("   every common register came back intact")
    except Exception as exc:  # a Fault: show it as the CPU reports it
        print(f"   {exc}")

    print("\n4. Seed 000 (ACRN): XSAVES under one IA32_XSS, XRSTORS under a narrower one")
    for fixed in (False, True):
        trace = acrn_xss.run(fixed=fixed)
        verdict = str(trace.fault) if trace.fault else "no fault"
        print(f"   {'fixed' if fixed else 'buggy'} sequence on {trace.host}: {verdict}")

    from kvmfpu.native.xsave_probe import probe_unavailable
    reason = probe_unavailable()
    print("\n5. This machine's processor against the model")
    if reason:
        print(f"   skipped: {reason}")
    else:
        rep = _check_cpu(200, 1)
        print(f"   {rep.cases} random XRSTOR/XSAVE* sequences ({rep.faulting} faulting): "
              f"{rep.agreed} agree byte for byte")
    return 0


def _has(cpu: Any, reg: str) -> bool:
    try:
        cpu.reg(reg)
    except KeyError:
        return False
    return True


# -- check-cpu -------------------------------------------------------------------------------

def _check_cpu(cases: int, seed: int) -> Any:
    from kvmfpu.native import differential
    from kvmfpu.native.hostcpuid import this_host
    from kvmfpu.native.xsave_probe import Op, RealCpu

    real = RealCpu()
    xcr0 = real.run([Op("XGETBV", ecx=0)]).results[0]
    return differential.run(this_host(), xcr0, cases, seed, real=real)


def cmd_check_cpu(args: argparse.Namespace) -> int:
    from kvmfpu.native.xsave_probe import probe_unavailable

    reason = probe_unavailable()
    if reason:
        raise UsageError(f"the real-CPU probe cannot run here: {reason}")
    if args.cases < 1:
        raise UsageError("--cases must be at least 1")
    rep = _check_cpu(args.cases, args.seed)
    if args.json:
        print(json.dumps({
            "cases": rep.cases, "agreed": rep.agreed, "faulting": rep.faulting,
            "fault_extra_xinuse": rep.fault_extra_xinuse, "reruns": rep.retried,
            "by_kind": rep.by_kind,
            "disagreements": [{"kind": c.kind, "differences": d} for c, d in rep.disagreements],
        }, indent=2))
    else:
        print(f"{rep.cases} cases ({rep.faulting} faulting): {rep.agreed} agree, "
              f"{len(rep.disagreements)} disagree; {rep.retried} re-runs after an interrupt")
        for case, diff in rep.disagreements[:20]:
            print(f"  {case.kind}: {'; '.join(diff)}")
    return 0 if not rep.disagreements else 1


# -- main ------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="kvmfpu", description="An executable model of x86 XSAVE and the Linux "
                                           "KVM FPU/xstate ABI")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    c = sub.add_parser("cpus", help="list the host CPU models, or describe some")
    c.add_argument("host", nargs="*", help="model names or CPUID dump files")
    c.add_argument("--json", action="store_true")
    c.set_defaults(func=cmd_cpus)

    d = sub.add_parser("demo", help="show what kvmfpu does, on embedded models")
    d.add_argument("--src", default="zen4", help="host for the saved state (default zen4)")
    d.add_argument("--dst", default="skylake-sp", help="host to restore on (default skylake-sp)")
    d.set_defaults(func=cmd_demo)

    k = sub.add_parser("check-cpu", help="compare the model with this machine's processor")
    k.add_argument("--cases", type=int, default=2000)
    k.add_argument("--seed", type=int, default=1)
    k.add_argument("--json", action="store_true")
    k.set_defaults(func=cmd_check_cpu)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        return int(args.func(args))
    except UsageError as exc:
        print(f"kvmfpu: error: {exc}", file=sys.stderr)
    except (cpus.UnknownHost, cpus.DumpError) as exc:
        print(f"kvmfpu: error: {exc}", file=sys.stderr)
    except BrokenPipeError:
        return 0
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
