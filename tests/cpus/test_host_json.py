"""kvmfpu-host/1 JSON: what `kvmfpu cpus NAME --json` prints loads back; bad JSON is refused."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from kvmfpu import cpus
from kvmfpu.cli import main
from kvmfpu.cpus.dumps import MAX_DUMP_BYTES, Dump, DumpError, parse_text, to_json

FINGERPRINT = Path(__file__).parent / "data" / "firecracker" / "fingerprint_AMD_GENOA_6.18host.json"


def _same(a: cpus.HostModel, b: cpus.HostModel) -> None:
    """``a`` loaded from a file ``b`` wrote: load adds the file's path to the source."""
    assert dict(a.table) == dict(b.table)
    source = dict(a.source)
    assert Path(source.pop("file")).exists()
    assert (a.name, a.title, source) == (b.name, b.title, {k: v for k, v in b.source.items() if k != "file"})
    assert (a.kernel, a.microcode, a.cpuid_view, dict(a.msrs)) == (
        b.kernel,
        b.microcode,
        b.cpuid_view,
        dict(b.msrs),
    )
    da, db = a.describe(), b.describe()
    da.pop("source"), db.pop("source")
    assert a.behaviour == b.behaviour and da == db


@pytest.mark.parametrize("name", cpus.names())
def test_every_packaged_host_loads_back_from_its_json(
    name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["cpus", name, "--json"]) == 0
    f = tmp_path / "out.json"
    f.write_text(capsys.readouterr().out)
    _same(cpus.load(f), cpus.load(name))


def test_a_fingerprint_loads_back_from_its_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["cpus", str(FINGERPRINT), "--json"]) == 0
    f = tmp_path / "fp.json"
    f.write_text(capsys.readouterr().out)
    back, orig = cpus.load(f), cpus.load(FINGERPRINT)
    _same(back, orig)
    assert back.cpuid_view == "firecracker-guest" and back.kernel == orig.kernel and back.msrs


def test_to_json_carries_the_optional_fields() -> None:
    m = cpus.load(FINGERPRINT)
    dump = Dump(
        dict(m.table),
        name="x",
        kernel=m.kernel,
        microcode=m.microcode,
        cpuid_view=m.cpuid_view,
        msrs=dict(m.msrs),
        mxcsr_mask=0xFFFF,
    )
    back = parse_text(to_json(dump))
    assert (back.kernel, back.microcode, back.cpuid_view, back.msrs, back.mxcsr_mask) == (
        m.kernel,
        m.microcode,
        "firecracker-guest",
        dict(m.msrs),
        0xFFFF,
    )


@pytest.mark.parametrize(
    "text, message",
    [
        ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
        ('{"cpuid": [[1, 0, ' + "9" * 5000 + ", 0, 0, 0]]}", "not a host description"),
        ('{"cpuid": [["0x1", "0", "0x' + "f" * 5000 + '", "0", "0", "0"]]}', "a 20000-bit number"),
        ("[]", "a list of 0 host descriptions"),
        ('[{"cpuid": [[0,0,0,0,0,0]]}, {"cpuid": [[0,0,0,0,0,0]]}]', "a list of 2"),
        ('{"cpuid": [[0,0,0,0,0,0]], "cpuid_view": "guest"}', "cpuid_view 'guest'"),
        ('{"cpuid": [[0,0,0,0,0,0]], "kernel": "a b"}', "not a kernel release"),
        ('{"cpuid": [[0,0,0,0,0,0]], "name": 5}', "'name' must be a string"),
        ('{"cpuid": [[0,0,0,0,0,0]], "msrs": {"0x10": "0x1' + "0" * 16 + '"}}', "64-bit"),
        ('{"firecracker_version": "1.0"}', "missing kernel_version"),
        # cpuid -r registers are 32 bits (the parser used to keep wider values).
        (
            "   0x00000000 0x00: eax=0x1" + "0" * 9 + " ebx=0x0 ecx=0x0 edx=0x0\n",
            "line 1: 0x1000000000 is not",
        ),
        ("   0x00000000 0x00: eax=0x" + "f" * 100_000 + " ebx=0x0 ecx=0x0 edx=0x0\n", "400000-bit number"),
    ],
)
def test_bad_json_is_one_clear_error(text: str, message: str) -> None:
    with pytest.raises(DumpError, match=message):
        parse_text(text)


def test_load_bounds_the_file_size(tmp_path: Path) -> None:
    f = tmp_path / "big.json"
    f.write_bytes(b" " * (MAX_DUMP_BYTES + 1))
    with pytest.raises(cpus.UnknownHost, match="too large"):
        cpus.load(f)


def test_deep_json_file_through_load(tmp_path: Path) -> None:
    f = tmp_path / "deep.json"
    f.write_text('{"cpuid": ' + "[" * 200_000 + "]" * 200_000 + "}")
    with pytest.raises(
        cpus.UnknownHost, match=re.escape("deep.json: not a host description: JSON nested too deeply")
    ):
        cpus.load(f)


def test_describe_is_valid_json_with_the_table() -> None:
    d = cpus.load("zen4").describe()
    assert d["format"] == "kvmfpu-host/1" and d["kernel"] is None and d["cpuid_view"] == "host"
    assert len(d["cpuid"]) == len(cpus.load("zen4").table)
    json.dumps(d)
