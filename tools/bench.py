#!/usr/bin/env python3
"""kvmfpu speed measurements, each against the real /dev/kvm in the same run.

    tools/bench.py [--quick] [--json]

* core-pair: the emulated core's XRSTOR + XSAVE of every user component (standard format,
  Skylake-SP model, all components in use) against one KVM_SET_XSAVE + KVM_GET_XSAVE round
  trip through /dev/kvm from Python (fcntl.ioctl). Target: ratio <= 1.

Timings are the best of several repeats of a timed loop (time.perf_counter); the ratio is
what matters, since both sides run on this machine in the same process.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

from kvmfpu import uapi
from kvmfpu.arch.xfeatures import bits
from kvmfpu.testing import booted
from kvmfpu.testing.areas import component_data

ALL = (1 << 64) - 1


@dataclass
class Result:
    name: str
    model_us: float
    real_us: float | None
    target: str

    @property
    def ratio(self) -> float | None:
        return None if self.real_us is None else self.model_us / self.real_us


def best_of(fn: Callable[[], None], loops: int, repeats: int) -> float:
    """Seconds per call: the best of ``repeats`` timed loops of ``loops`` calls."""
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(loops):
            fn()
        best = min(best, (time.perf_counter() - t0) / loops)
    return best


def real_round_trip(loops: int, repeats: int) -> float | None:
    """KVM_SET_XSAVE + KVM_GET_XSAVE on a fresh vCPU, or None without a usable /dev/kvm."""
    req = uapi.requests()
    try:
        kvm = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        vm = fcntl.ioctl(kvm, req["KVM_CREATE_VM"], 0)
        vcpu = fcntl.ioctl(vm, req["KVM_CREATE_VCPU"], 0)
        get_buf, set_buf = bytearray(4096), bytearray(4096)
        fcntl.ioctl(vcpu, req["KVM_GET_XSAVE"], get_buf)
        set_buf[:] = get_buf
        get_req, set_req = req["KVM_GET_XSAVE"], req["KVM_SET_XSAVE"]

        def once() -> None:
            fcntl.ioctl(vcpu, set_req, set_buf)
            fcntl.ioctl(vcpu, get_req, get_buf)
        try:
            return best_of(once, loops, repeats)
        finally:
            os.close(vcpu)
            os.close(vm)
    finally:
        os.close(kvm)


def core_pair(loops: int, repeats: int) -> float:
    cpu = booted("skylake-sp")
    lay = cpu.host.layout
    for b in bits(cpu.xcr0 & ~3):
        cpu.set_component(b, component_data(b, lay.components[b].size))
    cpu.set_reg("zmm1", (1 << 511) | 7)
    cpu.set_reg("st0", 1 << 63)
    cpu.xsave(0, ALL)
    xrstor, xsave = cpu.xrstor, cpu.xsave
    out = 0x4000

    def once() -> None:
        xrstor(0, ALL)
        xsave(out, ALL)
    return best_of(once, loops, repeats)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer loops (noisier)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    loops, repeats = (2000, 3) if args.quick else (20000, 7)

    real = real_round_trip(loops, repeats)
    results = [Result("core-pair: XRSTOR+XSAVE, all user components, skylake-sp",
                      core_pair(loops, repeats), real, "ratio <= 1 vs KVM_SET+GET_XSAVE")]
    if args.json:
        json.dump([dict(asdict(r), ratio=r.ratio) for r in results], sys.stdout, indent=2)
        print()
        return 0
    print(f"real KVM_SET_XSAVE+KVM_GET_XSAVE round trip: "
          f"{'n/a (no /dev/kvm)' if real is None else f'{real * 1e6:.2f} us'}")
    for r in results:
        ratio = "" if r.ratio is None else f"  ratio {r.ratio:.2f} ({'ok' if r.ratio <= 1 else 'SLOWER'})"
        print(f"{r.name}: {r.model_us * 1e6:.2f} us{ratio}   [target: {r.target}]")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
