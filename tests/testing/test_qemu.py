"""kvmfpu.testing.qemu: QEMU that is missing or does not start is reported, not hung on."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from kvmfpu.testing.qemu import Qemu, QemuUnavailable, free_port, version


def test_missing_binary() -> None:
    with pytest.raises(QemuUnavailable, match="not installed"):
        Qemu(["-S"], binary="qemu-system-nonexistent")


@pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None, reason="QEMU not installed")
def test_bad_arguments_and_a_stream(tmp_path: Path) -> None:
    with pytest.raises(QemuUnavailable, match="did not start"), Qemu(["-cpu", "no-such-model"]):
        pass
    with Qemu(["-accel", "tcg", "-S"]) as vm:
        assert vm.cmd("query-status")["status"] == "prelaunch"
        stream = vm.migrate_to(tmp_path / "s.mig")
    assert stream.read_bytes()[:4] == b"QEVM" and version().count(".") == 2
    assert 0 < free_port() < 65536
