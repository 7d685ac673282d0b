"""Every output file goes through kvmfpu.cli.common.write_output (issue 16): a temp file
created with O_CREAT|O_EXCL|O_NOFOLLOW next to the target, fsync, rename. A symlink planted
at a temp name is never followed; on ENOSPC (or Ctrl-C) the previous output stays and no
partial file remains; devices, FIFOs and other users' symlinks are refused (as root,
``matrix --html /dev/full`` once replaced the device); cleanup after a failure never raises.

Expected behaviour rests on POSIX open(2) (O_EXCL|O_CREAT fails on any existing name,
symlinks included) and rename(2) (atomic replacement of the directory entry), and Linux's
fs.protected_symlinks rule (a link owned by someone else is not followed).
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from kvmfpu.blob import sample_data
from kvmfpu.cli import common, main
from kvmfpu.cli.common import UsageError, check_output, write_output

XSTATE = str(sample_data.path(sample_data.KVM_ZEN5))
CONVERT = ["convert", XSTATE, "--from", "devhost-zen5", "--to", "zen4", "-o"]
ROOT = os.geteuid() == 0


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".kvmfpu-tmp"))


def test_writes_a_new_file(tmp_path: Path) -> None:
    out = tmp_path / "out.html"
    write_output(str(out), "<p>ok</p>")
    assert out.read_text() == "<p>ok</p>"
    assert leftovers(tmp_path) == []


def test_replacing_keeps_the_permission_bits(tmp_path: Path) -> None:
    out = tmp_path / "out.csv"
    out.write_text("old")
    out.chmod(0o640)
    write_output(str(out), b"new")
    assert out.read_bytes() == b"new"
    assert stat.S_IMODE(out.stat().st_mode) == 0o640


def fixed_names(monkeypatch: pytest.MonkeyPatch, names: list[str]) -> None:
    it: Iterator[str] = iter(names)
    monkeypatch.setattr(common.secrets, "token_hex", lambda n: next(it))


def test_a_symlink_planted_at_the_temp_name_is_not_followed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The attacker guesses the first temp name and links it to a file root owns: O_EXCL
    refuses the name, another is drawn, the victim is untouched."""
    victim = tmp_path / "victim"
    victim.write_text("precious")
    out = tmp_path / "report.html"
    planted = tmp_path / ".report.html.guessed.kvmfpu-tmp"
    planted.symlink_to(victim)
    fixed_names(monkeypatch, ["guessed", "fresh"])
    write_output(str(out), "page")
    assert victim.read_text() == "precious"
    assert out.read_text() == "page" and not out.is_symlink()
    assert planted.is_symlink()  # left as it was found
    assert leftovers(tmp_path) == [planted.name]


def test_a_dangling_symlink_at_the_temp_name_is_not_followed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "created-through-the-link"
    planted = tmp_path / ".out.x.kvmfpu-tmp"
    planted.symlink_to(target)
    fixed_names(monkeypatch, ["x", "y"])
    write_output(str(tmp_path / "out"), "data")
    assert not target.exists()


def enospc_after(monkeypatch: pytest.MonkeyPatch, good: int, exc: BaseException) -> None:
    """os.write takes ``good`` bytes, then fails as a full disk (or an interrupt) does."""
    real = os.write
    written = [0]

    def write(fd: int, data: bytes | memoryview) -> int:
        room = good - written[0]
        if room <= 0:
            raise exc
        n = real(fd, bytes(data[:room]))
        written[0] += n
        return n

    monkeypatch.setattr(common.os, "write", write)


def test_enospc_leaves_the_previous_output_and_no_partial_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "m.html"
    out.write_text("previous")
    enospc_after(monkeypatch, 100, OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)))
    with pytest.raises(
        UsageError, match=r"m.html: cannot write: No space left on device; the previous file is unchanged"
    ):
        write_output(str(out), "x" * 100_000)
    assert out.read_text() == "previous"
    assert leftovers(tmp_path) == []


def test_ctrl_c_mid_write_leaves_no_partial_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "m.csv"
    out.write_text("previous")
    enospc_after(monkeypatch, 10, KeyboardInterrupt())
    with pytest.raises(KeyboardInterrupt):
        write_output(str(out), "y" * 1000)
    assert out.read_text() == "previous"
    assert leftovers(tmp_path) == []


def test_cleanup_after_a_failed_write_never_raises(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The write fails, then so do close and unlink: the user sees the first error."""
    enospc_after(monkeypatch, 0, OSError(errno.EIO, os.strerror(errno.EIO)))

    def broken(*_: object) -> None:
        raise OSError(errno.EPERM, "cleanup refused")

    monkeypatch.setattr(common.os, "unlink", broken)
    with pytest.raises(UsageError, match="Input/output error"):
        write_output(str(tmp_path / "out"), "z")


def test_a_failed_rename_leaves_the_previous_output(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "out"
    out.write_text("previous")

    def rename(*_: object) -> None:
        raise OSError(errno.EXDEV, os.strerror(errno.EXDEV))

    monkeypatch.setattr(common.os, "rename", rename)
    with pytest.raises(UsageError, match="Invalid cross-device link"):
        write_output(str(out), "new")
    assert out.read_text() == "previous"
    assert leftovers(tmp_path) == []


def test_dev_full_is_refused_and_stays_a_device() -> None:
    before = os.stat("/dev/full")
    with pytest.raises(UsageError, match=r"/dev/full: is a device, not a regular file"):
        write_output("/dev/full", "page")
    after = os.stat("/dev/full")
    assert stat.S_ISCHR(after.st_mode) and after.st_rdev == before.st_rdev


@pytest.mark.skipif(not ROOT, reason="mknod needs root")
def test_a_device_node_is_never_replaced(tmp_path: Path) -> None:
    """A copy of /dev/null's node (char 1:3) where the output would go."""
    node = tmp_path / "null"
    os.mknod(node, stat.S_IFCHR | 0o666, os.makedev(1, 3))
    with pytest.raises(UsageError, match="is a device"):
        write_output(str(node), "page")
    assert stat.S_ISCHR(os.stat(node).st_mode)


def test_a_fifo_is_refused(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(UsageError, match="is a FIFO"):
        write_output(str(fifo), "page")
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)


def test_a_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="is a directory"):
        write_output(str(tmp_path), "page")


def test_a_missing_directory_is_one_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="No such file or directory"):
        write_output(str(tmp_path / "no" / "out"), "page")


@pytest.mark.skipif(not ROOT, reason="lchown to another user needs root")
def test_another_users_symlink_is_neither_followed_nor_replaced(tmp_path: Path) -> None:
    victim = tmp_path / "shadow"
    victim.write_text("root's")
    link = tmp_path / "report.html"
    link.symlink_to(victim)
    os.lchown(link, 65534, 65534)
    with pytest.raises(UsageError, match="symbolic link owned by uid 65534"):
        write_output(str(link), "page")
    assert victim.read_text() == "root's" and link.is_symlink()


def test_the_users_own_symlink_is_followed_atomically(tmp_path: Path) -> None:
    """The user's own link to where reports live: the file it names is replaced, the link
    stays."""
    real = tmp_path / "real"
    real.mkdir()
    (real / "report.html").write_text("old")
    link = tmp_path / "report.html"
    link.symlink_to("real/report.html")
    write_output(str(link), "new")
    assert link.is_symlink() and (real / "report.html").read_text() == "new"
    assert leftovers(real) == []


def test_dash_is_standard_output(capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    write_output("-", b"\x00\x01binary")
    assert capsysbinary.readouterr().out == b"\x00\x01binary"


def test_dash_where_stdout_makes_no_sense() -> None:
    with pytest.raises(UsageError, match="standard output"):
        write_output("-", "x", stdout=False)
    with pytest.raises(UsageError, match="only one output can be '-'"):
        check_output("-", "-")


# --- through the commands -----------------------------------------------------------------


def test_convert_to_standard_output(capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    assert main([*CONVERT, "-"]) == 0
    captured = capsysbinary.readouterr()
    assert len(captured.out) == 4096  # KVM_GET_XSAVE's struct kvm_xsave, zen4's layout
    assert b"wrote 4096 bytes for zen4 to standard output" in captured.err


def test_convert_enospc_keeps_the_previous_output(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "zen4.bin"
    out.write_bytes(b"previous")
    enospc_after(monkeypatch, 1000, OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)))
    assert main([*CONVERT, str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "No space left on device" in err
    assert out.read_bytes() == b"previous" and leftovers(tmp_path) == []


def test_convert_onto_dev_full_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*CONVERT, "/dev/full"]) == 2
    assert "is a device" in capsys.readouterr().err


def test_matrix_refuses_its_outputs_before_computing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """--html /dev/full is refused up front: no verdict is computed for nothing."""
    import kvmfpu.migrate.matrix as matrix

    def compute(*_: object, **__: object) -> None:
        raise AssertionError("computed before checking the outputs")

    monkeypatch.setattr(matrix, "compute", compute)
    assert main(["matrix", "--guest", "EPYC-Genoa", "--html", "/dev/full"]) == 2
    assert "/dev/full: is a device" in capsys.readouterr().err
    assert main(["matrix", "--guest", "EPYC-Genoa", "--html", "-", "--csv", "-"]) == 2
    assert "only one output can be '-'" in capsys.readouterr().err


def test_matrix_writes_through_the_atomic_writer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A symlink planted at the old predictable temp name (FILE.tmpPID) is left alone."""
    victim = tmp_path / "victim"
    victim.write_text("precious")
    html = tmp_path / "m.html"
    (tmp_path / f"m.html.tmp{os.getpid()}").symlink_to(victim)
    args = [
        "matrix",
        "--guest",
        "EPYC-Genoa",
        "--hosts",
        "zen4",
        "--kernels",
        "6.6",
        "--html",
        str(html),
        "--csv",
        "-",
    ]
    assert main(args) == 0
    captured = capsys.readouterr()
    assert victim.read_text() == "precious"
    assert html.read_text().lstrip().lower().startswith("<!doctype html")
    assert captured.out.startswith("guest,vmm,source,")  # the CSV on stdout, the summary on stderr
    assert "verdicts" in captured.err
