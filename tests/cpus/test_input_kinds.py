"""One real sample per host input kind, each loaded through kvmfpu.cpus.load.

- libvirt cputestdata XML: tests/cpus/data/libvirt (verbatim, PROVENANCE.md); the packaged
  `zen4` was imported from the same file at the same commit, so the two tables must agree;
- `cpuid -r` text: written here from that table in the cpuid tool's `-r` format;
- kvmfpu-host/1 JSON: what `kvmfpu cpus NAME --json` prints (tests/cpus/test_host_json.py
  checks every packaged host);
- a Firecracker fingerprint: tests/cpus/data/firecracker (tests/cpus/test_fingerprint.py);
- this machine: tests/cpus/test_capture.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from kvmfpu import cpus
from kvmfpu.cpus.dumps import DumpError, parse_libvirt_xml

XML = Path(__file__).parent / "data" / "libvirt" / "x86_64-cpuid-EPYC-9334-32-Core.xml"


def test_libvirt_xml_is_the_packaged_zen4() -> None:
    m, packaged = cpus.load(XML), cpus.load("zen4")
    assert dict(m.table) == dict(packaged.table) and len(m.table) == 81
    assert m.name == "x86_64-cpuid-epyc-9334-32-core" and m.source["kind"] == "libvirt-xml"
    assert m.brand == "AMD EPYC 9334 32-Core Processor"  # the file's leading comment
    assert (m.supported_xcr0, m.supported_xss) == (0x2E7, 0x1800)  # CPUID.(0DH,0).EAX, (0DH,1).ECX
    assert m.kernel is None and m.cpuid_view == "host"


def test_cpuid_r_text(tmp_path: Path) -> None:
    m = cpus.load(XML)
    f = tmp_path / "genoa.txt"
    f.write_text(
        "CPU 0:\n"
        + "".join(
            f"   {leaf:#010x} {sub:#04x}: eax={a:#010x} ebx={b:#010x} ecx={c:#010x} edx={d:#010x}\n"
            for (leaf, sub), (a, b, c, d) in sorted(m.table.items())
        )
    )
    t = cpus.load(f)
    assert dict(t.table) == dict(m.table) and t.source["kind"] == "cpuid -r" and t.kernel is None


@pytest.mark.parametrize(
    "text, message",
    [
        ("<cpudata arch='x86'/>", "no <cpuid> elements"),
        ("<cpudata><cpuid eax_in='0x0' ecx_in='0x0' eax='0x1' ebx='0' ecx='0'/></cpudata>", "without edx"),
        (
            "<cpudata><cpuid eax_in='0x0' ecx_in='0x0' eax='0x1" + "0" * 40 + "' ebx='0' ecx='0' edx='0'/>"
            "</cpudata>",
            "is not a 32-bit value",
        ),
    ],
)
def test_bad_libvirt_xml(text: str, message: str) -> None:
    with pytest.raises(DumpError, match=message):
        parse_libvirt_xml(text)
