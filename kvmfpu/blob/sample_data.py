"""The real captures that ship with kvmfpu (kvmfpu/blob/samples/, made by
tools/make_samples.py): ``kvmfpu demo`` runs on them and users can try the commands on them.

- ``devhost-zen5-linux-6.18.44.kvm_xsave``: KVM_GET_XSAVE from Linux 6.18.44 KVM (kvm_pvm)
  on the AMD Zen 5 development machine, guest registers in x87, SSE, AVX, AVX-512, opmask.
- ``qemu-7.2-tcg.mig.xz``: a QEMU 7.2 migration stream of a TCG guest (``-cpu max``) that
  set x87, SSE, AVX and PKRU state and halted (tools/samples/tcg_guest.S).
"""

from __future__ import annotations

import pathlib
from typing import Final

DIRECTORY: Final = pathlib.Path(__file__).resolve().parent / "samples"
KVM_ZEN5: Final = "devhost-zen5-linux-6.18.44.kvm_xsave"
QEMU_TCG: Final = "qemu-7.2-tcg.mig.xz"


def names() -> list[str]:
    return sorted(p.name for p in DIRECTORY.iterdir() if not p.name.startswith((".", "_")))


def path(name: str) -> pathlib.Path:
    p = DIRECTORY / name
    if not p.is_file():
        raise KeyError(f"no sample {name!r} (one of {', '.join(names())})")
    return p
