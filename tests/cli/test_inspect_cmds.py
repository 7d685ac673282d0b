"""``kvmfpu validate``, ``kvmfpu diff`` and ``kvmfpu convert``: exit codes, JSON, refusals."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from kvmfpu.blob import sample_data
from kvmfpu.cli import main

KVM_SAMPLE = str(sample_data.path(sample_data.KVM_ZEN5))
QEMU_SAMPLE = str(sample_data.path(sample_data.QEMU_TCG))


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    rc = main(list(args))
    out, err = capsys.readouterr()
    return rc, out, err


def test_validate_accepts_and_rejects(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = run(capsys, "validate", KVM_SAMPLE, "--host", "zen4", "--kernel", "6.6")
    assert rc == 0 and "accepted by KVM_SET_XSAVE on zen4, Linux 6.6 (svm)" in out
    rc, out, _ = run(capsys, "validate", KVM_SAMPLE, "--host", "haswell", "--kernel", "6.6")
    assert rc == 1 and "-EINVAL: fpu_copy_uabi_to_guest_fpstate: XSTATE_BV sets 0xe0" in out
    rc, out, _ = run(capsys, "validate", KVM_SAMPLE, "--host", "zen4", "--kernel", "6.1",
                     "--guest-cpu", "zen2")
    assert rc == 1 and "validate_user_xstate_header" in out


def test_validate_json(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = run(capsys, "validate", KVM_SAMPLE, "--host", "haswell", "--kernel", "5.15",
                     "--json")
    doc = json.loads(out)
    assert rc == 1 and doc["schema"] == "kvmfpu-validate/1" and doc["accepted"] is False
    assert {k: doc[k] for k in ("host", "kernel", "flavor", "guest_cpu", "kvm_reads")} == {
        "host": "haswell", "kernel": "5.15", "flavor": "vmx", "guest_cpu": "host",
        "kvm_reads": 4096}
    (r,) = doc["results"]
    assert set(r) == {"origin", "accepted", "errno", "function", "reason", "commit", "note"}
    assert r["errno"] == "EINVAL" and r["function"] and r["commit"]


def test_validate_qemu_stream_is_built_for_the_destination(capsys: pytest.CaptureFixture[str]) -> None:
    for host in ("zen4", "skylake-sp"):
        rc, out, _ = run(capsys, "validate", QEMU_SAMPLE, "--host", host, "--kernel", "6.6")
        assert rc == 0 and "QEMU cpu 0: accepted" in out
    rc, out, _ = run(capsys, "validate", QEMU_SAMPLE, "--host", "haswell", "--kernel", "6.6")
    assert rc == 0                       # XSTATE_BV 0: nothing outside haswell's XCR0


@pytest.mark.parametrize("args, message", [
    (["--host", "zen4", "--kernel", "4.2"], "4.2"),
    (["--host", "zen4", "--kernel", "6.6", "--flavor", "vmx"], "vmx"),
    (["--host", "nosuch", "--kernel", "6.6"], "unknown host 'nosuch'"),
    (["--host", "zen4"], "the following arguments are required: --kernel"),
    (["--host", "zen4", "--kernel", "6.6", "--guest-cpu", "nosuch"], "unknown host 'nosuch'"),
])
def test_validate_bad_input(capsys: pytest.CaptureFixture[str], args: list[str], message: str) -> None:
    rc, out, err = run(capsys, "validate", KVM_SAMPLE, *args)
    assert (rc, out, err.count("\n")) == (2, "", 1) and message in err


def test_convert_then_diff(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out_file = tmp_path / "sky.bin"
    rc, out, _ = run(capsys, "convert", KVM_SAMPLE, "--from", "devhost-zen5", "--to",
                     "skylake-sp", "-o", str(out_file))
    assert rc == 0 and "opmask moved 0x340 -> 0x440" in out and out_file.stat().st_size == 4096
    rc, out, _ = run(capsys, "diff", KVM_SAMPLE, str(out_file), "--host", "devhost-zen5",
                     "--host-b", "skylake-sp")
    assert rc == 0 and "same register state" in out
    # The raw bytes on the Intel layout: the registers that moved differ.
    rc, out, _ = run(capsys, "diff", KVM_SAMPLE, KVM_SAMPLE, "--host", "devhost-zen5",
                     "--host-b", "skylake-sp", "--json")
    doc = json.loads(out)
    assert rc == 1 and doc["schema"] == "kvmfpu-diff/1" and doc["same"] is False
    (pair,) = doc["pairs"]
    assert [d["register"] for d in pair["differences"]] == ["zmm5", "zmm11", "k1", "zmm17"]
    assert pair["differences"][2] == {"register": "k1", "a": "0xf0f0", "b": "0x0",
                                      "parts": [], "more_parts": 0}


def test_diff_reports_register_names(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = bytearray(Path(KVM_SAMPLE).read_bytes())
    struct.pack_into("<I", data, 24, 0x1F80)                 # MXCSR
    (tmp_path / "b").write_bytes(bytes(data))
    rc, out, _ = run(capsys, "diff", KVM_SAMPLE, str(tmp_path / "b"), "--host", "devhost-zen5")
    assert rc == 1 and out.splitlines()[1:] == [
        "  mxcsr: 0x1fa0 [PE IM DM ZM OM UM PM RC=nearest] -> 0x1f80 [IM DM ZM OM UM PM "
        "RC=nearest]"]


def test_convert_refusals(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "out.bin"
    rc, _, err = run(capsys, "convert", KVM_SAMPLE, "--from", "devhost-zen5", "--to", "haswell",
                     "-o", str(target))
    assert rc == 2 and "haswell cannot hold 0xe0" in err and not target.exists()
    rc, _, err = run(capsys, "convert", KVM_SAMPLE, "--from", "devhost-zen5", "--to", "zen4",
                     "-o", str(tmp_path / "no" / "such" / "dir"))
    assert rc == 2 and "No such file or directory" in err
    rc, _, err = run(capsys, "convert", KVM_SAMPLE, "--from", "devhost-zen5", "--to", "zen4",
                     "-o", str(target), "--format", "qemu")
    assert rc == 2 and "QEMU" in err and not target.exists()


def test_the_input_is_never_modified(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "in.bin"
    src.write_bytes(Path(KVM_SAMPLE).read_bytes())
    before = src.read_bytes()
    for args in (["decode", str(src), "--host", "zen4"],
                 ["validate", str(src), "--host", "skylake-sp", "--kernel", "6.6"],
                 ["convert", str(src), "--from", "devhost-zen5", "--to", "skylake-sp", "-o",
                  str(tmp_path / "o")],
                 ["convert", str(src), "--from", "devhost-zen5", "--to", "skylake-sp", "-o",
                  str(src)],
                 ["diff", str(src), str(src)]):
        run(capsys, *args)
    assert src.read_bytes() == before
    rc, _, err = run(capsys, "convert", str(src), "--from", "devhost-zen5", "--to", "zen4",
                     "-o", str(src))
    assert rc == 2 and "is the input" in err
