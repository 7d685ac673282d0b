"""Issue 12, "Readers (each detected automatically, each with --format, each in
decode/validate/diff/migrate --blob)": one file of each reader through each command, detected
and with --format; a file of another format under --format is one line and exit 2.

Files: the committed samples (tests/blob/data/*/PROVENANCE.md), the shipped QEMU 7.2 TCG
stream, and images built from the formats' layouts (kvmfpu.testing.hostile, hostile_qcow2,
vmm_samples)."""

from __future__ import annotations

import lzma
from pathlib import Path

import pytest

from kvmfpu.blob import sample_data
from kvmfpu.cli import main
from kvmfpu.testing import hostile, hostile_qcow2, vmm_samples

DATA = Path(__file__).resolve().parents[1] / "blob" / "data"
STREAM = lzma.decompress(sample_data.path(sample_data.QEMU_TCG).read_bytes())


def _files() -> dict[str, bytes]:
    return {
        "qemu": STREAM,
        "libvirt-save": hostile.libvirt_image(STREAM),
        "qcow2": hostile_qcow2.build(hostile_qcow2.Spec(STREAM, cluster_bits=12)),
        "cloud-hypervisor": (DATA / "cloud_hypervisor" / "state-v39-zen4.json").read_bytes(),
        "crosvm": (DATA / "crosvm" / "vcpu0-zen4.cbor").read_bytes(),
        "criu": (DATA / "criu" / "core-zen4.img").read_bytes(),
        "firecracker": (DATA / "firecracker" / "vmstate-8.0.0-zen4.bin").read_bytes(),
        "firecracker-info": vmm_samples.firecracker_info_text([vmm_samples.model_vcpu("zen4")]),
    }


FILES = _files()


@pytest.mark.parametrize("fmt", sorted(FILES))
@pytest.mark.parametrize("given", [False, True], ids=["detected", "--format"])
def test_each_reader_in_each_command(
    fmt: str, given: bool, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / f"state.{fmt}"
    path.write_bytes(FILES[fmt])
    opt = ["--format", fmt] if given else []
    f = str(path)
    # zen4: the hosts these files were made for (crosvm keeps no CPUID: --host decides).
    assert main(["decode", f, "--host", "zen4", *opt]) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert "xsave" in out.lower() or "x87" in out.lower()
    rc = main(["validate", f, "--host", "zen4", "--kernel", "6.6", *opt])
    assert rc in (0, 1), capsys.readouterr().err  # a verdict, not a usage error
    assert "accepted" in capsys.readouterr().out or rc == 1
    assert main(["diff", f, f, "--host", "zen4", *opt]) == 0, capsys.readouterr().err
    capsys.readouterr()
    rc = main(["migrate", "--src", "zen4@6.6", "--dst", "zen4@6.6", "--guest", "host", "--blob", f, *opt])
    assert rc in (0, 1), capsys.readouterr().err
    assert "verdict:" in capsys.readouterr().out


@pytest.mark.parametrize("fmt", sorted(FILES))
def test_the_wrong_format_is_one_line(fmt: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "state"
    path.write_bytes(FILES["criu" if fmt != "criu" else "crosvm"])
    assert main(["decode", str(path), "--format", fmt]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("kvmfpu: error: ")
