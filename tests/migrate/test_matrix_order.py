"""Hosts in a matrix: by vendor, then by generation read from each host's CPUID."""

from __future__ import annotations

import csv
import io
import json
import struct
from pathlib import Path

import pytest

from kvmfpu import cpus
from kvmfpu.migrate import host_order
from kvmfpu.migrate.matrix import compute, to_csv
from kvmfpu.migrate.matrix_views import to_json, to_text

#: The packaged Intel dumps in the order the parts launched (Intel ARK "Launch Date" of each
#: dump's processor, named in its kvmfpu/cpus/data file: W3520 Q1'09, E5-2650 Q1'12,
#: E5-2609 v3 Q3'14, E5-2650 v4 Q1'16, i7-7700 Q1'17, Gold 6148 Q3'17, Platinum 8268 Q2'19,
#: Ice Lake server Q2'21, Bronze 3408U Q1'23, w7-3465X Q3'23, Gold 6530 Q4'23, 6731E Q2'24,
#: 6788P Q1'25).
INTEL = [
    "nehalem",
    "sandybridge",
    "haswell",
    "broadwell",
    "kabylake",
    "skylake-sp",
    "cascadelake",
    "icelake-sp",
    "sapphirerapids-noamx",
    "sapphirerapids",
    "emeraldrapids",
    "sierraforest",
    "graniterapids",
]
#: AMD by Zen generation (AMD: EPYC 7601 Zen 1 2017, 7502 Zen 2 2019, 7713 Zen 3 2021, 9334
#: Zen 4 2022; Zen 5 2024: the Ryzen 9 9950X and the development machine's EPYC, both
#: family 1Ah, whose relative order the test leaves open).
AMD = ["zen1", "zen2", "zen3", "zen4"]
ZEN5 = {"zen5", "devhost-zen5"}

DATA = Path(cpus.__file__).parent / "data"


def listed(names: list[str]) -> list[str]:
    models = [cpus.load(n) for n in names]
    return [models[i].name for i in host_order.ordered(models)]


def test_packaged_hosts_by_vendor_then_launch() -> None:
    shuffled = sorted(cpus.names(), key=lambda n: n[::-1])  # any order in
    out = listed(shuffled)
    assert out[: len(INTEL)] == INTEL
    assert out[len(INTEL) : len(INTEL) + len(AMD)] == AMD
    assert set(out[len(INTEL) + len(AMD) : -1]) == ZEN5
    assert out[-1] == "hygon-dhyana"  # Hygon (a licensed Zen 1) after AMD
    assert listed(list(reversed(out))) == out  # the order does not depend on the input's


def _host_file(
    tmp_path: Path, base: str, name: str, vendor: bytes | None = None, drop_leaf1: bool = False
) -> str:
    doc = json.loads((DATA / f"{base}.json").read_text())
    doc["name"] = name
    if vendor is not None:  # CPUID leaf 0: EBX, EDX, ECX spell the vendor
        b, d, c = struct.unpack("<III", vendor)
        for row in doc["cpuid"]:
            if int(row[0], 16) == 0:
                row[3:6] = [f"{b:#010x}", f"{c:#010x}", f"{d:#010x}"]
    if drop_leaf1:
        doc["cpuid"] = [r for r in doc["cpuid"] if int(r[0], 16) != 1]
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(doc))
    return str(path)


def test_a_host_file_is_placed_by_its_cpuid_not_its_name(tmp_path: Path) -> None:
    """A copy of Zen 4's dump named "aaa" sits with Zen 4, a Nehalem named "zzz" first."""
    a = _host_file(tmp_path, "zen4", "aaa")
    z = _host_file(tmp_path, "nehalem", "zzz")
    assert listed(["zen5", a, "zen1", z, "skylake-sp"]) == ["zzz", "skylake-sp", "zen1", "aaa", "zen5"]


def test_unknown_vendors_and_unplaceable_hosts_last_as_given(tmp_path: Path) -> None:
    odd1 = _host_file(tmp_path, "zen4", "odd1", vendor=b"ZZZZZZZZZZZZ")
    odd2 = _host_file(tmp_path, "skylake-sp", "odd2", vendor=b"VirtualCPU??")
    no_leaf1 = _host_file(tmp_path, "zen3", "noleaf1", drop_leaf1=True)
    out = listed([odd2, "zen3", odd1, no_leaf1, "haswell"])
    assert out == ["haswell", "zen3", "odd2", "odd1", "noleaf1"]  # the unplaced as given
    assert host_order.generation_key(cpus.load(odd1)) is None
    assert host_order.generation_key(cpus.load(no_leaf1)) is None


@pytest.fixture(scope="module")
def small():  # type: ignore[no-untyped-def]
    return compute("EPYC", ["zen3", "sapphirerapids", "zen1", "haswell"], ["6.6"])


def test_every_output_uses_the_order(small) -> None:  # type: ignore[no-untyped-def]
    want = ["haswell", "sapphirerapids", "zen1", "zen3"]
    assert small.hosts == want
    rows = list(csv.DictReader(io.StringIO(to_csv(small))))
    assert [r["source"] for r in rows[::4]] == want
    assert [r["destination"] for r in rows[:4]] == want
    doc = to_json(small)
    assert [h["name"] for h in doc["hosts"]] == want
    assert [c["source"] for c in doc["cells"][::4]] == want
    text = to_text(small)
    assert [line.split()[1] for line in text.splitlines() if line[:1].isdigit()] == want


def test_feature_bits_ignore_os_state() -> None:
    """OSXSAVE, OSPKE and the hypervisor bit are state (SDM CPUID leaf 1 ECX[27], leaf 7
    ECX[4]; ECX[31] is the hypervisor's), not features: toggling them changes nothing."""
    zen4 = cpus.load("zen4")
    table = dict(zen4.table)
    a, b, c, d = table[(1, 0)]
    table[(1, 0)] = (a, b, c ^ (1 << 27 | 1 << 31), d)
    a, b, c, d = table[(7, 0)]
    table[(7, 0)] = (a, b, c ^ (1 << 4), d)
    other = cpus.HostModel(table, name="zen4-os")
    assert host_order.feature_bits(other) == host_order.feature_bits(zen4)
