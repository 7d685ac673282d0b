"""The packaged host models: real dumps, stable names, derived facts."""

import json

import pytest

from kvmfpu import cpus
from kvmfpu.cpus.dumps import Dump, DumpError, parse_cpuid_r, parse_text, to_json

REQUIRED = ["nehalem", "sandybridge", "haswell", "skylake-sp", "cascadelake", "icelake-sp",
            "sapphirerapids", "emeraldrapids", "graniterapids", "sierraforest", "zen1", "zen2",
            "zen3", "zen4", "zen5", "devhost-zen5"]


def test_required_models_exist_with_sources() -> None:
    for name in REQUIRED:
        m = cpus.load(name)
        assert m.name == name
        src = m.source
        assert src.get("kind") in ("libvirt cputestdata", "captured")
        if src["kind"] == "libvirt cputestdata":
            assert src["repo"] == "libvirt/libvirt" and len(src["commit"]) == 40
        assert name == name.lower()


@pytest.mark.parametrize("name, vendor, family, xcr0, xss", [
    ("nehalem", "GenuineIntel", 6, 0x0, 0x0),
    ("skylake-sp", "GenuineIntel", 6, 0x2FF, 0x100),
    ("sapphirerapids", "GenuineIntel", 6, 0x602E7, 0xDD00),
    ("zen2", "AuthenticAMD", 0x17, 0x207, 0x0),
    ("zen4", "AuthenticAMD", 0x19, 0x2E7, 0x1800),
    ("zen5", "AuthenticAMD", 0x1A, 0x2E7, 0x1800),
])
def test_derived_identity(name: str, vendor: str, family: int, xcr0: int, xss: int) -> None:
    m = cpus.load(name)
    assert (m.vendor, m.signature[0], m.supported_xcr0, m.supported_xss) == (vendor, family, xcr0, xss)


def test_amx_hosts_enumerate_xfd() -> None:
    for name in ("sapphirerapids", "emeraldrapids", "graniterapids"):
        m = cpus.load(name)
        assert m.has("xfd") and m.xfd_capable == 1 << 18


def test_behaviour_by_vendor() -> None:
    assert cpus.load("zen4").behaviour.mxcsr_mask == 0x2FFFF
    assert cpus.load("skylake-sp").behaviour.mxcsr_mask == 0xFFFF
    assert cpus.load("zen1").behaviour.xinuse_compares_init
    assert not cpus.load("cascadelake").behaviour.xinuse_compares_init


def test_load_dump_files(tmp_path) -> None:  # type: ignore[no-untyped-def]
    m = cpus.load("zen3")
    text = "CPU 0:\n" + "".join(
        f"   {leaf:#010x} {sub:#04x}: eax={a:#010x} ebx={b:#010x} ecx={c:#010x} edx={d:#010x}\n"
        for (leaf, sub), (a, b, c, d) in sorted(m.table.items()))
    text += "CPU 1:\n   0x00000000 0x00: eax=0x1 ebx=0x0 ecx=0x0 edx=0x0\n"
    f = tmp_path / "mybox.txt"
    f.write_text(text)
    loaded = cpus.load(f)
    assert loaded.name == "mybox" and loaded.layout.standard_size(0x207) == 2440
    assert loaded.table == m.table
    j = tmp_path / "box.json"
    j.write_text(to_json(Dump(dict(m.table), name="box")))
    assert cpus.load(str(j)).table == m.table
    objs = tmp_path / "objs.json"
    objs.write_text(json.dumps({"cpuid": [{"leaf": k[0], "subleaf": k[1], "eax": v[0],
                                           "ebx": v[1], "ecx": v[2], "edx": v[3]}
                                          for k, v in m.table.items()]}))
    assert cpus.load(objs).supported_xcr0 == 0x207


@pytest.mark.parametrize("text, message", [
    ("", "no CPUID lines"),
    ("hello world", "not `cpuid -r` output"),
    ("{", "not valid JSON"),
    ('{"cpuid": []}', "non-empty"),
    ('{"cpuid": [["0x1", "0x0", "0x1", "zz", "0", "0"]]}', "not a number"),
    ('{"cpuid": [["0x1", "0", "0x100000000", "0", "0", "0"]]}', "32-bit"),
    ("<cpudata", "not well-formed XML"),
])
def test_bad_dumps_are_explained(text: str, message: str) -> None:
    with pytest.raises(DumpError, match=message):
        parse_text(text)


def test_unknown_host_is_explained(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(cpus.UnknownHost, match="not a model name"):
        cpus.load("pentium-pro")
    with pytest.raises(cpus.UnknownHost, match="directory"):
        cpus.load(tmp_path)
    big = tmp_path / "big.txt"
    with big.open("wb") as fh:
        fh.truncate(64 << 20)
    with pytest.raises(cpus.UnknownHost, match="too large"):
        cpus.load(big)
    binary = tmp_path / "bin"
    binary.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(cpus.UnknownHost, match="binary"):
        cpus.load(binary)


def test_cpuid_r_single_cpu_form() -> None:
    table = parse_cpuid_r("CPU:\n   0x0000000d 0x00: eax=0x00000007 ebx=0x00000340 ecx=0x340 edx=0x0\n")
    assert table[(0xD, 0)] == (7, 0x340, 0x340, 0)
