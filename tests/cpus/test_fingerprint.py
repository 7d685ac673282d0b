"""Firecracker `cpu-template-helper fingerprint dump` files as host descriptions.

Samples: Firecracker's own baselines (tests/cpus/data/firecracker/PROVENANCE.md), kept
verbatim. Expected values are read from the sample files themselves with a reader written
here from Firecracker's serde rules (templates.rs RegisterValueFilter::deserialize), or
come from the Firecracker and kernel code named at each assertion.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from kvmfpu import cpus
from kvmfpu.cpus.dumps import DumpError, parse_text

DATA = Path(__file__).parent / "data" / "firecracker"
X86 = sorted(p for p in DATA.glob("fingerprint_*.json") if "ARM" not in p.name)
GENOA_61 = DATA / "fingerprint_AMD_GENOA_6.1host.json"
GENOA_618 = DATA / "fingerprint_AMD_GENOA_6.18host.json"
SPR_618 = DATA / "fingerprint_INTEL_SAPPHIRE_RAPIDS_6.18host.json"
CLX_510 = DATA / "fingerprint_INTEL_CASCADELAKE_5.10host.json"
ARM = DATA / "fingerprint_ARM_NEOVERSE_V1_6.1host.json"


def _raw(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def test_samples_are_the_provenance_files() -> None:
    """Four x86 samples (Zen 4 on 6.1 and 6.18, Sapphire Rapids 6.18, Cascade Lake 5.10)."""
    assert [p.name for p in X86] == [
        "fingerprint_AMD_GENOA_6.18host.json",
        "fingerprint_AMD_GENOA_6.1host.json",
        "fingerprint_INTEL_CASCADELAKE_5.10host.json",
        "fingerprint_INTEL_SAPPHIRE_RAPIDS_6.18host.json",
    ]
    names = (DATA / "PROVENANCE.md").read_text()
    assert all(p.name in names for p in [*X86, ARM])


@pytest.mark.parametrize("path", X86, ids=lambda p: p.stem)
def test_every_cpuid_register_and_msr_is_read(path: Path) -> None:
    raw = _raw(path)
    m = cpus.load(path)
    rows = raw["guest_cpu_config"]["cpuid_modifiers"]
    assert len(m.table) == len(rows)
    for row in rows:
        leaf, sub = int(row["leaf"], 16), int(row["subleaf"], 16)
        for mod in row["modifiers"]:
            reg = ("eax", "ebx", "ecx", "edx").index(mod["register"])
            assert m.table[(leaf, sub)][reg] == int(mod["bitmap"][2:], 2)
    msrs = {int(e["addr"], 16): int(e["bitmap"][2:], 2) for e in raw["guest_cpu_config"]["msr_modifiers"]}
    assert dict(m.msrs) == msrs and msrs
    # The kernel default for HOST[@KERNEL] is the fingerprint's uname release (dump.rs
    # get_kernel_version), the microcode /proc/cpuinfo's (get_microcode_version).
    assert m.kernel == raw["kernel_version"] and m.microcode == raw["microcode_version"]
    assert m.cpuid_view == "firecracker-guest"
    assert m.source["kind"] == "firecracker fingerprint"
    assert m.source["firecracker_version"] == raw["firecracker_version"]
    # normalize.rs update_feature_info_entry sets leaf 1 ECX[31] (hypervisor) for every guest.
    assert m.has("hypervisor")
    # Leaf 1 ECX[27] OSXSAVE mirrors the vCPU's CR4, clear before the guest boots.
    assert not m.has("osxsave") and m.has("xsave")


def test_genoa_across_kernels() -> None:
    """The same Genoa host under 6.1 and 6.18 (the samples): KVM's supported XSS grew by CET,
    XCR0 did not; PKRU sits at AMD's 0x980."""
    a, b = cpus.load(GENOA_61), cpus.load(GENOA_618)
    assert a.kernel is not None and a.kernel.startswith("6.1.")
    assert b.kernel is not None and b.kernel.startswith("6.18.")
    assert (a.vendor, a.signature[:2]) == (b.vendor, b.signature[:2]) == ("AuthenticAMD", (0x19, 0x11))
    assert a.supported_xcr0 == b.supported_xcr0 == 0x2E7
    assert (a.supported_xss, b.supported_xss) == (0, 0x1800)
    assert a.layout.standard_offset(9) == b.layout.standard_offset(9) == 0x980
    assert not a.has("shstk") and b.has("shstk")
    # amd/normalize.rs update_brand_string_entry: DEFAULT_BRAND_STRING "AMD EPYC".
    assert a.brand == "AMD EPYC"


def test_genoa_fingerprint_geometry_is_the_hosts() -> None:
    """KVM copies each leaf 0xD subleaf's size/offset/flags from the host (__do_cpuid_func,
    case 0xd: cpuid_count per supported component), so a Genoa fingerprint's components
    match libvirt's Genoa capture (EPYC 9334, packaged zen4) exactly, and its masks are a
    subset of the host's."""
    host, guest = cpus.load("zen4"), cpus.load(GENOA_618)
    assert host.signature[:2] == guest.signature[:2]
    assert guest.supported_xcr0 & ~host.supported_xcr0 == 0
    assert guest.supported_xss & ~host.supported_xss == 0
    for bit, comp in guest.layout.components.items():
        assert host.layout.components[bit] == comp


def test_sapphire_rapids_amx_and_cascade_lake_mpx() -> None:
    spr, clx = cpus.load(SPR_618), cpus.load(CLX_510)
    # XTILECFG and XTILEDATA (bits 17, 18) with XFD on bit 18 only (SDM CPUID.(0DH,18):ECX[2]).
    assert spr.supported_xcr0 == 0x602E7 and spr.has("xfd") and spr.xfd_capable == 1 << 18
    assert spr.layout.standard_size(spr.supported_xcr0) == 0xB00 + 0x2000
    # Cascade Lake has MPX and 5.10's KVM offered it to Firecracker's guest (the sample shows
    # BNDREGS|BNDCSR in CPUID.(0DH,0):EAX).
    assert clx.supported_xcr0 & 0x18 == 0x18 and clx.kernel is not None and clx.kernel.startswith("5.10.")


def test_aarch64_fingerprint_is_refused() -> None:
    with pytest.raises(cpus.UnknownHost, match="aarch64 Firecracker fingerprint"):
        cpus.load(ARM)


def _genoa() -> dict[str, Any]:
    return _raw(GENOA_61)


def _set(data: dict[str, Any], path: list[Any], value: Any) -> dict[str, Any]:
    node: Any = data
    for key in path[:-1]:
        node = node[key]
    if value is KeyError:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return data


CPUID0 = ["guest_cpu_config", "cpuid_modifiers", 0]


@pytest.mark.parametrize(
    "path, value, message",
    [
        (["kernel_version"], KeyError, "missing kernel_version"),
        (["guest_cpu_config"], KeyError, "missing guest_cpu_config"),
        (["kernel_version"], "6.1 with spaces", "not a kernel release"),
        (["kernel_version"], "6" * 65, "not a kernel release"),
        (["kernel_version"], 61, "expected a string"),
        (["guest_cpu_config", "cpuid_modifiers"], [], "no cpuid_modifiers"),
        (["guest_cpu_config", "cpuid_modifiers"], {}, "expected a list"),
        (["guest_cpu_config", "extra"], [], "unknown field 'extra'"),
        ([*CPUID0, "leaf"], "16", "no 0x or 0b prefix"),
        ([*CPUID0, "leaf"], "0x1" + "0" * 8, "not a 32-bit value"),
        ([*CPUID0, "leaf"], "0x" + "f" * 5000, "expected a 0x/0b string"),
        ([*CPUID0, "leaf"], "0xzz", "not a number"),
        ([*CPUID0, "subleaf"], KeyError, "missing subleaf"),
        ([*CPUID0, "modifiers", 0, "bitmap"], "0b" + "x" * 32, "a CPU template, not a fingerprint"),
        ([*CPUID0, "modifiers", 0, "bitmap"], "0b101", "not a 32-bit bitmap"),
        ([*CPUID0, "modifiers", 0, "bitmap"], "0b" + "2" * 32, "not a 32-bit bitmap"),
        ([*CPUID0, "modifiers", 0, "bitmap"], "1" * 10_000, "expected a bitmap string"),
        ([*CPUID0, "modifiers", 0, "register"], "rax", "not {register"),
        ([*CPUID0, "modifiers"], [], "no eax, ebx, ecx, edx"),
        (["guest_cpu_config", "msr_modifiers", 0, "bitmap"], "0b1", "not a 64-bit bitmap"),
        (["guest_cpu_config", "msr_modifiers", 0], {"addr": "0x10"}, "expected {addr, bitmap}"),
    ],
)
def test_bad_fingerprints_say_what_is_wrong(path: list[Any], value: Any, message: str) -> None:
    text = json.dumps(_set(_genoa(), path, value))
    with pytest.raises(DumpError, match=re.escape(message)):
        parse_text(text)


def test_duplicate_and_missing_leaf_0() -> None:
    data = _genoa()
    rows = data["guest_cpu_config"]["cpuid_modifiers"]
    with pytest.raises(DumpError, match="listed twice"):
        parse_text(json.dumps(_set(_genoa(), ["guest_cpu_config", "cpuid_modifiers"], rows + rows[:1])))
    with pytest.raises(DumpError, match="no leaf 0x0"):
        parse_text(json.dumps(_set(_genoa(), ["guest_cpu_config", "cpuid_modifiers"], rows[1:])))


def test_underscores_in_bitmaps_are_ignored() -> None:
    """templates.rs RegisterValueFilter::deserialize skips '_' (a hand-edited dump)."""
    data = _genoa()
    bitmap = data["guest_cpu_config"]["cpuid_modifiers"][0]["modifiers"][0]["bitmap"]
    data["guest_cpu_config"]["cpuid_modifiers"][0]["modifiers"][0]["bitmap"] = bitmap[:10] + "_" + bitmap[10:]
    assert parse_text(json.dumps(data)).table[(0, 0)][0] == int(bitmap[2:], 2)
