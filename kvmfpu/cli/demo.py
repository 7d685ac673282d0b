"""``kvmfpu demo``: what kvmfpu does, on embedded models."""

from __future__ import annotations

import argparse
import struct
from typing import Any

from kvmfpu import cpus
from kvmfpu.arch import xfeatures as xf
from kvmfpu.arch.xfeatures import name_of
from kvmfpu.cli.check_cpu import check_cpu
from kvmfpu.cli.common import ALL, short
from kvmfpu.scenarios import SCENARIOS


def add_parser(sub: Any) -> None:
    d = sub.add_parser("demo", help="show what kvmfpu does, on embedded models")
    d.add_argument("--src", default="zen4", help="host for the saved state (default zen4)")
    d.add_argument("--dst", default="skylake-sp", help="host to restore on (default skylake-sp)")
    d.set_defaults(func=cmd_demo)


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
        print(f"   zmm17 {short(area.hi16_zmm.zmm[1])}")
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
                print(f"   {r}: saved {short(src.reg(r))}, restored {short(dst.reg(r))}"
                      "  <- corrupted")
        else:
            print("   every common register came back intact")
    except Exception as exc:  # a Fault: show it as the CPU reports it
        print(f"   {exc}")

    print("\n4. The seed bugs, replayed on the model before and after their fixes")
    for sc in SCENARIOS:
        for release in (sc.last_affected, sc.first_fixed or sc.last_unaffected):
            if release is None:
                continue
            rep = sc.run(release)
            print(f"   {sc.name:16} {rep.version:9} {'BUG   ' if rep.bug else 'no bug'} "
                  f"{rep.verdict[:90]}")

    from kvmfpu.native.xsave_probe import probe_unavailable
    reason = probe_unavailable()
    print("\n5. This machine's processor against the model")
    if reason:
        print(f"   skipped: {reason}")
    else:
        rep = check_cpu(200, 1)
        print(f"   {rep.cases} random XRSTOR/XSAVE* sequences ({rep.faulting} faulting): "
              f"{rep.agreed} agree byte for byte")
    return 0


def _has(cpu: Any, reg: str) -> bool:
    try:
        cpu.reg(reg)
    except KeyError:
        return False
    return True
