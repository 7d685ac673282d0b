"""One guest resolver for ``migrate --guest``, ``matrix --guest`` and ``validate
--guest-cpu`` (kvmfpu.migrate.guest_spec): every input kind through the CLI, on real
samples, and the bad ones as one line with exit status 2.

Samples: libvirt's tests/qemuxmlconfdata/cpu-exact1.xml and cpu-exact2.xml
(tests/qemu/data/libvirt, PROVENANCE.md); a -cpu line libvirt generated on a CentOS 7.9
host, quoted in "[Intel-wired-lan] iavf null packets and arbitrary memory reads" (JD,
intel-wired-lan@osuosl.org, February 2021); QEMU 7.2's query-cpu-model-expansion replies
(tests/qemu/data/expansion).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kvmfpu.blob import sample_data
from kvmfpu.cli import main
from kvmfpu.migrate.guest_spec import MAX_FILE, resolve_guest

QEMU_DATA = Path(__file__).resolve().parents[1] / "qemu" / "data"
LIBVIRT = QEMU_DATA / "libvirt"
EXPANSION = QEMU_DATA / "expansion" / "epyc-rome-v1-static.qmp.json"
KVM_SAMPLE = str(sample_data.path(sample_data.KVM_ZEN5))
#: libvirt's -cpu on an Intel host (CentOS 7.9; intel-wired-lan, February 2021).
CENTOS_LINE = (
    "Skylake-Server-IBRS,ss=on,hypervisor=on,tsc_adjust=on,clflushopt=on,umip=on,pku=on,"
    "avx512vnni=on,md-clear=on,stibp=on,ssbd=on,xsaves=on,hle=off,rtm=off"
)


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    rc = main(list(args))
    out, err = capsys.readouterr()
    return rc, out, err


def test_every_kind_resolves() -> None:
    """Content decides, not the file name: a domain XML, an expansion, a mode, a -cpu."""
    assert resolve_guest(str(LIBVIRT / "cpu-exact1.xml")).label == (
        "qemu64-v1,-mca,-pse36,-clflush,-syscall,-nx,-lm,-svm,enforce"
    )
    assert resolve_guest(str(EXPANSION)).label == "expansion:base"
    assert resolve_guest("host-passthrough").passthrough
    assert resolve_guest("maximum").name == "max"
    assert resolve_guest(CENTOS_LINE).name == "Skylake-Server"  # the alias is v2


def test_migrate_guest_domain_xml(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """libvirt's host-model on Zen 4 carries AVX-512; Zen 3 lacks it: incompatible, and
    libvirt's own refusal is named; Zen 3's host-model goes to Zen 4."""
    xml = tmp_path / "guest.xml"
    xml.write_text("<domain type='kvm'><name>g</name><cpu mode='host-model' check='partial'/></domain>")
    rc, out, _ = run(
        capsys, "migrate", "--src", "zen4@6.6", "--dst", "zen3@6.6", "--guest", str(xml), "--no-advice"
    )
    assert rc == 1 and "guest EPYC-Milan-v1," in out and "avx512f" in out
    rc, out, _ = run(
        capsys, "migrate", "--src", "zen3@6.6", "--dst", "zen4@6.6", "--guest", str(xml), "--no-advice"
    )
    assert rc == 0 and "verdict: COMPATIBLE" in out
    # the verdict says how the guest CPU was derived and what is approximated
    assert "[guest] guest CPU: libvirt 9.0 generates -cpu EPYC-Milan," in out
    assert "APPROXIMATED" in out


def test_migrate_guest_libvirt_line_and_expansion(capsys: pytest.CaptureFixture[str]) -> None:
    """The CentOS line on Cascade Lake -> Skylake-SP: avx512vnni and md-clear are not on
    the Skylake dump; libvirt's refusal message is quoted."""
    rc, out, _ = run(
        capsys,
        "migrate",
        "--src",
        "cascadelake@6.6",
        "--dst",
        "skylake-sp@6.6",
        "--guest",
        CENTOS_LINE,
        "--no-advice",
    )
    assert rc == 1 and "guest CPU doesn't match specification: missing features: avx512vnni" in out
    rc, out, _ = run(capsys, "migrate", "--src", "zen3@6.6", "--dst", "zen4@6.6", "--guest", str(EXPANSION))
    assert rc == 0 and "guest expansion:base (XCR0 0x7" in out


def test_validate_guest_cpu_takes_the_same_values(capsys: pytest.CaptureFixture[str]) -> None:
    for value in ("host-model", "EPYC-Rome", str(LIBVIRT / "cpu-exact2.xml"), str(EXPANSION), "zen2"):
        rc, out, err = run(
            capsys,
            "validate",
            KVM_SAMPLE,
            "--host",
            "zen4",
            "--kernel",
            "6.6",
            "--guest-cpu",
            value,
            "--json",
        )
        assert rc in (0, 1), err
        assert json.loads(out)["guest_cpu"] == value


def test_validate_guest_cpu_changes_the_verdict(capsys: pytest.CaptureFixture[str]) -> None:
    """The Zen 5 capture holds AVX-512 state (XSTATE_BV 0xe0 bits). On Linux 6.1, KVM checks
    it against the guest's XCR0 from its CPUID (validate_user_xstate_header): EPYC-Rome
    (XCR0 0x7) refuses it, libvirt's host-model of Zen 4 (AVX-512) takes it."""
    rc, out, _ = run(
        capsys, "validate", KVM_SAMPLE, "--host", "zen4", "--kernel", "6.1", "--guest-cpu", "EPYC-Rome"
    )
    assert rc == 1 and "validate_user_xstate_header" in out
    rc, out, _ = run(
        capsys, "validate", KVM_SAMPLE, "--host", "zen4", "--kernel", "6.1", "--guest-cpu", "host-model"
    )
    assert rc == 0 and "accepted" in out


def test_matrix_guest_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    html = tmp_path / "m.html"
    rc, out, _ = run(
        capsys,
        "matrix",
        "--guest",
        str(LIBVIRT / "cpu-exact2.xml"),
        "--hosts",
        "zen3",
        "zen4",
        "--kernels",
        "6.6",
        "--html",
        str(html),
    )
    assert rc == 0 and "4 verdicts" in out and html.exists()


def _bomb() -> str:
    """Billion laughs: ten levels of ten references (10**10 'lol's if expanded)."""
    ents = "".join(f'<!ENTITY e{i} "{f"&e{i - 1};" * 10 if i else "lol"}">' for i in range(10))
    return f'<?xml version="1.0"?><!DOCTYPE d [{ents}]><domain><cpu><model>&e9;</model></cpu></domain>'


BAD = [
    ("<domain><cpu mode='custom'><model>qemu64</model>", "malformed XML"),
    ("<cpu><model>Skylake-Foo</model></cpu>", "unknown QEMU CPU model 'Skylake-Foo'"),
    ("<cpu><model>qemu64</model><feature name='avx512_vnni'/></cpu>", "unknown CPU feature: avx512_vnni"),
    (_bomb(), "DOCTYPE or ENTITY"),
    ('{"return": {}}', "not a query-cpu-model-expansion reply"),
    ("guest: cpu\n", "neither a libvirt domain XML"),
]


@pytest.mark.parametrize("text,message", BAD, ids=[m for _, m in BAD])
@pytest.mark.parametrize("command", ["migrate", "matrix", "validate"])
def test_bad_guest_files_one_line_exit_2(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, command: str, text: str, message: str
) -> None:
    path = tmp_path / "guest.in"
    path.write_text(text)
    before = path.read_bytes()
    args = {
        "migrate": ["migrate", "--src", "zen4", "--dst", "zen4", "--guest", str(path)],
        "matrix": ["matrix", "--guest", str(path), "--hosts", "zen4", "--html", str(tmp_path / "m.html")],
        "validate": ["validate", KVM_SAMPLE, "--host", "zen4", "--kernel", "6.6", "--guest-cpu", str(path)],
    }[command]
    rc, _, err = run(capsys, *args)
    assert rc == 2 and message in err and err.count("\n") == 1, err
    assert path.read_bytes() == before  # nothing a user gives is modified


def test_missing_file_is_said(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    rc, _, err = run(
        capsys, "migrate", "--src", "zen4", "--dst", "zen4", "--guest", str(tmp_path / "dom.xml")
    )
    assert rc == 2 and "dom.xml: no such file" in err


def test_huge_file_refused_unread(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = tmp_path / "huge.xml"
    with path.open("wb") as f:
        f.write(b"<cpu>")
        f.truncate(MAX_FILE + 10)
    rc, _, err = run(capsys, "migrate", "--src", "zen4", "--dst", "zen4", "--guest", str(path))
    assert rc == 2 and "larger than the" in err and err.count("\n") == 1
