"""``kvmfpu decode``: human tables, the kvmfpu-decode/1 document, and bad input."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Any

import pytest

from kvmfpu.blob import sample_data
from kvmfpu.cli import main

KVM_SAMPLE = str(sample_data.path(sample_data.KVM_ZEN5))
QEMU_SAMPLE = str(sample_data.path(sample_data.QEMU_TCG))

CAPTURE_KEYS = {"origin", "format", "length", "layout", "sw_reserved", "header", "x87", "sse",
                "vectors", "components", "unnamed", "notes", "anomalies"}


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    rc = main(list(args))
    out, err = capsys.readouterr()
    return rc, out, err


def test_table(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = run(capsys, "decode", KVM_SAMPLE, "--host", "devhost-zen5")
    assert rc == 0
    assert "XSTATE_BV 0xe7 (x87|sse|ymm|opmask|zmm_hi256|hi16_zmm)" in out
    assert "FCW 0x027f [IM DM ZM OM UM PM PC=double RC=nearest]" in out
    assert "st0                          2 valid" in out and "TOP=6" in out
    assert "MXCSR 0x1fa0 [PE IM DM ZM OM UM PM RC=nearest]" in out
    assert "k1           00000000_0000f0f0" in out and "zmm17" in out
    assert "ANOMALY" not in out


def test_json_document(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = run(capsys, "decode", KVM_SAMPLE, "--host", "devhost-zen5", "--json")
    doc = json.loads(out)
    assert rc == 0 and doc["schema"] == "kvmfpu-decode/1"
    (c,) = doc["captures"]
    assert set(c) == CAPTURE_KEYS
    assert c["layout"] == {"host": "devhost-zen5", "how": "--host", "shape": "amd-std-avx512",
                           "hosts": ["devhost-zen5"]}
    assert c["header"]["xstate_bv"] == "0xe7" and c["header"]["compacted"] is False
    assert c["x87"]["st"][0] == {"reg": "st0", "value": "2", "tag": "valid",
                                 "raw": "0x40008000000000000000"}
    assert c["sse"]["mxcsr"]["text"].startswith("PE IM")
    assert int(c["vectors"]["zmm17"], 16) == 0x1234_5678 << 300
    opmask = next(x for x in c["components"] if x["name"] == "opmask")
    assert opmask["offset"] == 0x340 and opmask["registers"]["k1"] == "0x000000000000f0f0"
    assert c["sw_reserved"]["text"].startswith("user xfeatures 0xe7")


def test_qemu_stream_with_notes(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = run(capsys, "decode", QEMU_SAMPLE, "--json")
    (c,) = json.loads(out)["captures"]
    assert rc == 0 and c["format"] == "qemu" and c["origin"] == "QEMU cpu 0"
    assert c["notes"][0] == "xz-compressed input" and len(c["anomalies"]) == 4
    rc, out, _ = run(capsys, "decode", QEMU_SAMPLE, "--host", "zen4")
    assert "layout zen4 (--host; QEMU's buffer for this destination)" in out
    assert "pkru @0x980+0x8: init (holds data)" in out


def test_ambiguous_layout_asks_for_host(capsys: pytest.CaptureFixture[str]) -> None:
    rc, _, err = run(capsys, "decode", KVM_SAMPLE)
    assert rc == 2 and err.count("\n") == 1
    assert "2 layouts fit" in err and "give --host" in err


def test_standard_input(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    import io
    import sys
    data = Path(KVM_SAMPLE).read_bytes()
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data.hex().encode())))
    rc, out, _ = run(capsys, "decode", "-", "--host", "zen4")
    assert rc == 0 and "hex dump" in out


def test_xfd_flag(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = run(capsys, "decode", KVM_SAMPLE, "--host", "devhost-zen5", "--xfd", "0x20")
    assert rc == 0 and "IA32_XFD 0x20 arms" in out


def bad_inputs(tmp: Path) -> list[tuple[list[str], str]]:
    (tmp / "empty").write_bytes(b"")
    (tmp / "short").write_bytes(Path(KVM_SAMPLE).read_bytes()[:100])
    with open(tmp / "huge", "wb") as f:
        f.truncate(1 << 30)                                    # 1 GiB, sparse
    (tmp / "random").write_bytes(random.Random(5).randbytes(4096))
    (tmp / "text").write_bytes(b"hello, this is not hex\n")
    return [
        (["decode", str(tmp / "empty")], "the input is empty"),
        (["decode", str(tmp / "short"), "--host", "zen4"], "100 bytes is too short"),
        (["decode", str(tmp / "huge")], "1073741824 bytes is more than the"),
        (["decode", str(tmp / "random")], "give --host"),
        (["decode", str(tmp / "text")], "hex"),
        (["decode", KVM_SAMPLE, "--format", "core"], "ELF"),
        (["decode", KVM_SAMPLE, "--format", "qemu"], "QEMU"),
        (["decode", KVM_SAMPLE, "--format", "xxd"], "xxd"),
        (["decode", KVM_SAMPLE, "--format", "bogus"], "invalid choice"),
        (["decode", str(tmp)], "not a regular file"),
        (["decode", str(tmp / "missing")], "No such file or directory"),
        (["decode", str(tmp / "empty" / "x")], "Not a directory"),
        (["decode", "/dev/zero"], "not a regular file"),           # never read: it is endless
        (["decode", KVM_SAMPLE, "--host", "pentium9"], "unknown host 'pentium9'"),
        (["decode", KVM_SAMPLE, "--host", "nehalem"], "no XSAVE"),
        (["decode", KVM_SAMPLE, "--xfd", "zz"], "--xfd: not an integer"),
    ]


def test_bad_input_is_one_line_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for args, message in bad_inputs(tmp_path):
        rc, out, err = run(capsys, *args)
        lines = err.strip().splitlines()
        assert (rc, len(lines), out) == (2, 1, ""), (args, err)
        assert message in lines[0] and lines[0].startswith("kvmfpu: error: "), (args, err)


def test_unreadable_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    if os.geteuid() == 0:
        pytest.skip("root reads files whatever their mode")
    p = tmp_path / "locked"
    p.write_bytes(bytes(4096))
    p.chmod(0)
    rc, _, err = run(capsys, "decode", str(p))
    assert rc == 2 and "Permission denied" in err


def test_no_traceback_in_a_real_process(tmp_path: Path, kvmfpu_cmd: Any) -> None:
    """The same through ``python -m kvmfpu``, for the cases a user hits first."""
    cases = bad_inputs(tmp_path)
    for args, message in (cases[0], cases[2], cases[3], cases[6]):
        r = kvmfpu_cmd(*args)
        assert r.returncode == 2 and "Traceback" not in r.stderr
        assert r.stderr.count("\n") == 1 and message in r.stderr
