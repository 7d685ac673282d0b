"""``--host this``: this machine through CPUID; ``write_atomic`` for ``cpus --capture``.

The oracle is this machine itself: CPUID, XGETBV and uname(2) run here (Zen 4 or Zen 5, or
anything else: no value of one machine is written down). Skipped where the probe cannot be
built (no compiler or cffi, not x86-64 Linux).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from kvmfpu import cpus
from kvmfpu.cpus import capture
from kvmfpu.cpus.dumps import parse_text

REASON = capture.capture_unavailable()
needs_probe = pytest.mark.skipif(REASON is not None, reason=f"CPU probe unavailable: {REASON}")


@needs_probe
def test_this_is_this_machine_once_per_process() -> None:
    from kvmfpu.native.xsave_probe import cpuid

    m = cpus.load("this")
    assert cpus.load(".") is m and capture.this_host() is m
    # The signature and vendor leaves, read again now, are what the capture holds.
    assert m.cpuid(0) == cpuid(0) and m.cpuid(1)[0] == cpuid(1)[0]
    assert m.cpuid(0xD, 0)[0] == cpuid(0xD, 0)[0] and m.cpuid(0xD, 1)[0] == cpuid(0xD, 1)[0]
    # uname(2) release: the kernel default for this@KERNEL.
    assert m.kernel == os.uname().release and m.source["kernel"] == m.kernel
    assert m.source["kind"] == "captured" and m.source["hypervisor"] == m.has("hypervisor")
    assert m.name == "this" and (m.brand or "x86 CPU") in m.title


@needs_probe
def test_this_xcr0_is_what_the_os_enabled_at_most() -> None:
    """XGETBV(0) on this machine: the OS enables a subset of CPUID.(0DH,0):EDX:EAX (SDM
    13.3), and Linux enables every user component it supports, so x87|SSE are in both."""
    from kvmfpu.native.xsave_probe import Op, RealCpu

    xcr0 = RealCpu().run([Op("XGETBV", ecx=0)]).results[0]
    m = cpus.load("this")
    assert xcr0 & ~m.supported_xcr0 == 0 and xcr0 & 3 == 3
    assert m.has("xsave") and m.has("osxsave")
    assert m.layout.standard_size(xcr0) >= 576


def test_microcode_from_cpuinfo(tmp_path: Path) -> None:
    """The first "microcode" field, as Firecracker's get_microcode_version reads it."""
    f = tmp_path / "cpuinfo"
    f.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\nmicrocode\t: 0xa101158\n\nmicrocode\t: 0x1\n")
    assert capture.microcode_revision(str(f)) == "0xa101158"
    f.write_text("processor\t: 0\n")
    assert capture.microcode_revision(str(f)) is None
    assert capture.microcode_revision(str(tmp_path / "none")) is None


def test_write_atomic_replaces_whole_and_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "host.json"
    target.write_text("old")
    capture.write_atomic(target, "new\n")
    assert target.read_text() == "new\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["host.json"]


def test_write_atomic_never_writes_through_a_symlink(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("keep")
    link = tmp_path / "host.json"
    link.symlink_to(victim)
    with pytest.raises(OSError) as exc:
        capture.write_atomic(link, "new")
    assert exc.value.errno == 40  # ELOOP
    assert victim.read_text() == "keep" and link.is_symlink()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["host.json", "victim"]


def test_write_atomic_errors_carry_errno(tmp_path: Path) -> None:
    with pytest.raises(OSError) as exc:
        capture.write_atomic(tmp_path / "no" / "such" / "dir.json", "x")
    assert exc.value.errno == 2  # ENOENT from open(2) in the missing directory
    with pytest.raises(OSError) as exc:
        capture.write_atomic(tmp_path, "x")
    assert exc.value.errno == 21  # EISDIR


@needs_probe
def test_write_capture_loads_back(tmp_path: Path) -> None:
    f = tmp_path / "MyBox.json"
    written = capture.write_capture(f)
    back = cpus.load(f)
    assert written.name == back.name == "mybox"
    assert dict(back.table) == dict(cpus.load("this").table)
    assert back.kernel == os.uname().release and back.microcode == cpus.load("this").microcode
    assert parse_text(f.read_text()).source["tool"] == "kvmfpu.cpus.capture"
    assert oct(f.stat().st_mode & 0o777) == oct(0o644 & ~_umask())


def _umask() -> int:
    old = os.umask(0)
    os.umask(old)
    return old


def test_unavailable_probe_is_one_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(capture, "capture_unavailable", lambda: "cannot build the probe: no cc")
    with pytest.raises(capture.CaptureUnavailable, match="cannot read this machine's CPUID: cannot build"):
        capture._capture("other-name")
