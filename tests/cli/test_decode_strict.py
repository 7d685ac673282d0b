"""``kvmfpu decode --strict``: exit 1 when an anomaly is reported, 0 when none, 2 on bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kvmfpu.blob import sample_data
from kvmfpu.cli import main

KVM_SAMPLE = str(sample_data.path(sample_data.KVM_ZEN5))


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    rc = main(list(args))
    out, err = capsys.readouterr()
    return rc, out, err


def test_clean_capture_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    # The shipped Linux 6.18 KVM_GET_XSAVE buffer decodes without an anomaly (test_decode).
    for extra in ([], ["--json"]):
        rc, out, _ = run(capsys, "decode", KVM_SAMPLE, "--host", "devhost-zen5", "--strict", *extra)
        assert rc == 0 and "ANOMALY" not in out


def test_anomaly_exits_1_only_with_strict(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = bytearray(Path(KVM_SAMPLE).read_bytes())
    data[530] = 1  # header reserved byte: XRSTOR #GP (SDM vol. 1 §13.8.1), KVM -EINVAL
    bad = tmp_path / "bad.bin"
    bad.write_bytes(bytes(data))
    rc, out, _ = run(capsys, "decode", str(bad), "--host", "devhost-zen5")
    assert rc == 0 and "ANOMALY: header reserved bytes 528-575 are not zero" in out
    rc, out, _ = run(capsys, "decode", str(bad), "--host", "devhost-zen5", "--strict")
    assert rc == 1 and "ANOMALY: header reserved bytes" in out
    rc, out, _ = run(capsys, "decode", str(bad), "--host", "devhost-zen5", "--strict", "--json")
    assert rc == 1 and json.loads(out)["captures"][0]["anomalies"]


def test_bad_input_stays_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    short = tmp_path / "short.bin"
    short.write_bytes(bytes(100))
    rc, out, err = run(capsys, "decode", str(short), "--strict")
    assert (rc, out, err.count("\n")) == (2, "", 1)


def test_help_says_so(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["decode", "--help"])
    out = capsys.readouterr().out
    assert "--strict" in out and "exit 1 when any image has an anomaly" in out
