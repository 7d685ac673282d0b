"""`kvmfpu cpus diff`: what two host descriptions differ in.

Hosts: libvirt cputestdata captures (packaged, each names its commit) and Firecracker's own
fingerprint baselines (tests/cpus/data/firecracker). The expected differences are facts of
those dumps, named at each assertion; feature names are QEMU's (feature_word_info[], via
kvmfpu.qemu.features as the CLI passes them).
"""

from __future__ import annotations

from pathlib import Path

from kvmfpu import cpus
from kvmfpu.cli.hosts import qemu_words
from kvmfpu.cpus.diff import DEFAULT_WORDS, diff

FC = Path(__file__).parent / "data" / "firecracker"
GENOA_61 = FC / "fingerprint_AMD_GENOA_6.1host.json"
GENOA_618 = FC / "fingerprint_AMD_GENOA_6.18host.json"


def test_a_host_against_itself_is_the_same() -> None:
    d = diff(cpus.load("sapphirerapids"), cpus.load("sapphirerapids"), qemu_words())
    assert d.same and not d.bits and not d.components and not d.other_rows
    assert d.summary().startswith("sapphirerapids vs sapphirerapids: the same in all")


def test_skylake_to_zen4_layout_and_features() -> None:
    """Intel puts PKRU at 0xA80 after MPX's 0x3C0..0x440; AMD, without MPX, at 0x980 (the
    two cputestdata dumps' CPUID.(0DH,9):EBX); AVX-512's three components move the same way."""
    a, b = cpus.load("skylake-sp"), cpus.load("zen4")
    d = diff(a, b, qemu_words())
    assert d.summary().startswith("skylake-sp vs zen4: vendor GenuineIntel/AuthenticAMD")
    geometry = {c.bit: c.fields() for c in d.components}
    assert geometry == {
        3: ["only in a"],
        4: ["only in a"],
        5: ["offset"],
        6: ["offset"],
        7: ["offset"],
        8: ["only in a"],  # Intel PT, supervisor
        9: ["offset"],
        11: ["only in b"],
        12: ["only in b"],
    }
    assert d.sizes["standard (own XCR0)"] == (0xA88, 0x988)
    # The guest both could run has XCR0 0x2e7, yet its standard buffer differs: PKRU's offset.
    assert d.sizes["standard (common XCR0 0x2e7)"] == (0xA88, 0x988)
    only_a = {x.name for x in d.only_a}
    only_b = {x.name for x in d.only_b}
    assert {"mpx", "vmx"} <= only_a and "svm" in only_b and "avx512f" not in only_a | only_b
    mpx = next(x for x in d.only_a if x.name == "mpx")
    assert mpx.location == "CPUID.(0x7,0):EBX[14]"
    assert d.identity["vendor"] == ("GenuineIntel", "AuthenticAMD")
    # kvmfpu.cpus.behaviour: 0x2FFFF on AMD with MisAlignSse (FXSAVE on the development
    # machine), 0xFFFF on Intel: an AMD guest's MXCSR.MM would #GP in XRSTOR on Intel.
    assert d.identity["mxcsr_mask"] == (0xFFFF, 0x2FFFF) and "MXCSR_MASK 0xffff/0x2ffff" in d.summary()


def test_direction_is_symmetric() -> None:
    a, b = cpus.load("icelake-sp"), cpus.load("cascadelake")
    ab, ba = diff(a, b, qemu_words()), diff(b, a, qemu_words())
    assert {x.location for x in ab.only_a} == {x.location for x in ba.only_b}
    assert {x.location for x in ab.only_b} == {x.location for x in ba.only_a}
    assert [c.bit for c in ab.components] == [c.bit for c in ba.components]


def test_genoa_kernel_6_1_to_6_18() -> None:
    """The same host's Firecracker guest CPUID under two kernels, as the two samples show:
    6.18's KVM adds CET (XSS bits 11-12, CPUID.(7,0):ECX[7] shadow stacks) and lists
    MSR_IA32_XSS (0xda0) among the MSRs Firecracker saves; XCR0 is unchanged."""
    d = diff(cpus.load(GENOA_61), cpus.load(GENOA_618), qemu_words())
    assert not d.only_a and "cet-ss" in {x.name for x in d.only_b}
    assert (d.a.supported_xss, d.b.supported_xss) == (0, 0x1800)
    assert [(c.bit, c.fields()) for c in d.components] == [(11, ["only in b"]), (12, ["only in b"])]
    assert d.sizes["compacted (own XCR0|XSS)"] == (2440, 2440 + 16 + 24)
    assert 0xDA0 in d.msrs_only_b and not d.msrs_only_a
    assert set(d.identity) == {"kernel"}
    assert "XSS 0x0/0x1800" in d.summary()
    assert any("Firecracker guest's on Linux 6.1." in n for n in d.notes)


def test_host_against_its_fingerprint_ignores_cr4_mirrors() -> None:
    """OSXSAVE reads 0 in a fingerprint (the vCPU's CR4 before boot) and 1 in libvirt's
    capture of a running host: not a feature difference."""
    d = diff(cpus.load("zen4"), cpus.load(GENOA_618), DEFAULT_WORDS)
    assert "osxsave" not in {x.name for x in d.bits}
    assert "hypervisor" in {x.name for x in d.only_b}  # Firecracker sets it
    assert not [c for c in d.components if c.a and c.b]  # KVM copies the host's geometry
    assert any("one host's own CPUID against a guest's" in n for n in d.notes)
    # libvirt's capture records no kernel or microcode: unknown, not a difference.
    assert "kernel" not in d.identity and "microcode" not in d.identity
    assert "zen4 records no kernel: not compared" in d.notes


def test_json_document() -> None:
    doc = diff(cpus.load("zen2"), cpus.load("zen3"), qemu_words()).to_json()
    assert doc["schema"] == "kvmfpu-host-diff/1" and doc["summary"].startswith("zen2 vs zen3: ")
    assert doc["xcr0"] == {"a": "0x207", "b": "0x207"}
    assert {"features_only_in_a", "features_only_in_b", "components", "sizes", "notes"} <= set(doc)
