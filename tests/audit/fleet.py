"""The audit tests' one small fleet and population on disk (tests/audit and
tests/cli/test_audit.py): real captures (the packaged KVM_GET_XSAVE of a Zen 5 host and the
QEMU 7.2 TCG stream) and guest CPUs, on packaged host classes."""

from __future__ import annotations

import shutil
from pathlib import Path

from kvmfpu.blob import sample_data

FLEET = """
[[class]]
name = "zen5-6.18"
host = "devhost-zen5"
kernel = "6.18"
count = 40

[[class]]
name = "zen4-6.1"
host = "zen4"
kernel = "6.1"
count = 25

[[class]]
name = "spr-6.8"
host = "sapphirerapids"
kernel = "6.8"
vmm = "qemu@8.2"
count = 100

[[class]]
name = "skx-ubuntu"
host = "skylake-sp"
kernel = "5.15.0-91-generic"
count = 12
"""

POPULATION = """
[[guests]]
name = "web"
cpu = "EPYC-Genoa"
source = "zen4-6.1"
count = 30

[[guests]]
name = "db"
cpu = "Skylake-Server-IBRS"
source = "skx-ubuntu"
count = 5

[[files]]
path = "snaps"
source = "zen5-6.18"
guest = "host"
"""


def write_fleet(top: Path) -> Path:
    """fleet.toml, population.toml and the files under ``top``: two identical KVM captures
    (one signature), the TCG stream, and a file that is not a capture."""
    (top / "fleet.toml").write_text(FLEET)
    (top / "population.toml").write_text(POPULATION)
    snaps = top / "snaps" / "rack1"
    snaps.mkdir(parents=True)
    kvm = sample_data.path(sample_data.KVM_ZEN5)
    shutil.copy(kvm, snaps / "vm1.xsave")
    shutil.copy(kvm, snaps / "vm2.xsave")  # the same state: one signature
    shutil.copy(sample_data.path(sample_data.QEMU_TCG), top / "snaps" / "tcg.qemu")
    (top / "snaps" / "notes.txt").write_text("not a capture\n")
    return top
