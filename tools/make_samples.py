#!/usr/bin/env python3
"""Regenerate the sample captures that ship in kvmfpu/blob/samples/ (used by ``kvmfpu demo``
and the tests). Both are real: nothing in them is written by kvmfpu's model.

    tools/make_samples.py kvm    # needs /dev/kvm
    tools/make_samples.py qemu   # needs qemu-system-x86_64 and GNU as/ld

kvm:  a KVM_GET_XSAVE buffer from this machine's /dev/kvm. The vCPU gets the host's
      supported CPUID, then a guest register state (x87, SSE, AVX, AVX-512, opmask) through
      KVM_SET_XSAVE, and the kernel's KVM_GET_XSAVE is saved as it comes (the kernel writes
      the header, the user xfeatures at byte 464 and every offset). The file is named after
      the host model the probe matches and the running kernel.
qemu: a QEMU migration stream (``migrate exec:cat``) of a TCG guest that ran
      tools/samples/tcg_guest.S to its HLT, xz-compressed.
"""

from __future__ import annotations

import argparse
import lzma
import os
import pathlib
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Any

# This checkout's kvmfpu, not an installed copy (tools run from the source tree).
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

ROOT = pathlib.Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "kvmfpu" / "blob" / "samples"


def guest_state(host: Any, kernel: str, flavor: str) -> bytes:
    """KVM_GET_XSAVE of a model vCPU whose guest wrote a few registers of each kind."""
    from kvmfpu.testing.vcpus import ready_vcpu
    v = ready_vcpu(host, kernel, flavor)
    with v.guest() as g:
        g.set_reg("fcw", 0x027F)
        # As after FLD1; FLD of 2.0: TOP=6, R7=1.0 (ST1), R6=2.0 (ST0), both tagged valid.
        g.set_reg("fsw", 6 << 11)
        g.set_reg("ftw", 0xC0)
        g.set_reg("st0", (0x4000 << 64) | (1 << 63))
        g.set_reg("st1", (0x3FFF << 64) | (1 << 63))
        g.set_reg("mxcsr", 0x1FA0)
        g.set_reg("xmm0", 0x3FF0000000000000)                       # 1.0
        g.set_reg("ymm3", (0xC0DE << 128) | 0xBEEF)
        if v.gsx & 0xE0 == 0xE0:
            g.set_reg("k1", 0xF0F0)
            g.set_reg("zmm17", 0x1234_5678 << 300)
            g.set_reg("zmm5", 0xABCD << 400)
    return v.get_xsave()


def packaged_name(host: Any) -> str:
    """The packaged model with this machine's signature and XSAVE leaves, if there is one."""
    from kvmfpu import cpus
    for name in cpus.names():
        m = cpus.load(name)
        if m.signature == host.signature and all(
                m.cpuid(0xD, i) == host.cpuid(0xD, i) for i in range(64)):
            return name
    return str(host.name)


def make_kvm() -> pathlib.Path:
    from kvmfpu import open_kvm
    from kvmfpu.probe import fingerprint
    fp = fingerprint()
    state = guest_state(fp.host, fp.best.kernel, fp.best.flavor)
    kvm = open_kvm()
    vcpu = kvm.create_vm().create_vcpu()
    vcpu.set_cpuid2(kvm.get_supported_cpuid())
    vcpu.set_xsave(state)
    data = vcpu.get_xsave()
    release = platform.release().split("-")[0].split("+")[0]
    out = SAMPLES / f"{packaged_name(fp.host)}-linux-{release}.kvm_xsave"
    out.write_bytes(data)
    return out


def make_qemu() -> pathlib.Path:
    from kvmfpu.testing.qemu import Qemu, version
    if not shutil.which("as"):
        sys.exit("make_samples.py qemu: needs GNU as/ld")
    with tempfile.TemporaryDirectory() as tmp:
        t = pathlib.Path(tmp)
        subprocess.run(["as", "--32", "-o", t / "g.o", ROOT / "tools/samples/tcg_guest.S"],
                       check=True)
        subprocess.run(["ld", "-m", "elf_i386", "-Ttext=0x100000", "-e", "_start",
                        "-o", t / "g.elf", t / "g.o"], check=True)
        with Qemu(["-accel", "tcg", "-cpu", "max", "-kernel", str(t / "g.elf")]) as vm:
            for _ in range(200):          # until the guest sits in its HLT loop
                regs = vm.hmp("info registers")
                if "HLT=1" in regs and "EIP=001" in regs:
                    break
                time.sleep(0.05)
            else:
                sys.exit("the guest did not reach its HLT")
            vm.cmd("stop")
            raw = vm.migrate_to(t / "stream").read_bytes()
    out = SAMPLES / f"qemu-{'.'.join(version().split('.')[:2])}-tcg.mig.xz"
    out.write_bytes(lzma.compress(raw, preset=9 | lzma.PRESET_EXTREME))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("which", choices=("kvm", "qemu"))
    args = ap.parse_args()
    os.makedirs(SAMPLES, exist_ok=True)
    out = make_kvm() if args.which == "kvm" else make_qemu()
    print(f"wrote {out.relative_to(ROOT)} ({out.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
