"""Whole migrations between distribution kernels: the Proxmox VE 7.4 -> 8.0 PKRU case
(proxmox/pve-kernel 1559d22, T. Lamprecht 2023-07-14: qemu64 VMs from the Ubuntu-based 5.15
fail on 6.2; bloomberg/chef-bcpc#2278 saw the same when migrating to Jammy-era kernels)."""

import pytest

from kvmfpu.migrate.check import COMPATIBLE, INCOMPATIBLE, check


def test_ubuntu_515_to_62_qemu64_on_a_pku_host_is_incompatible() -> None:
    r = check("skylake-sp@5.15.0-91-generic", "skylake-sp@6.2", "qemu64", advise=False)
    assert r.verdict == INCOMPATIBLE
    f = next(f for f in r.findings if f.level == "error")
    # validate_user_xstate_header: XSTATE_BV[9] outside user_xfeatures (ad856280ddea)
    assert f.errno == "EINVAL" and "0x200 (pkru)" in f.text


def test_mainline_515_to_62_qemu64_is_compatible() -> None:
    """Mainline 5.15's fill_xsave masks XSTATE_BV with guest_supported_xcr0 | FP | SSE."""
    assert check("skylake-sp@5.15", "skylake-sp@6.2", "qemu64", advise=False).verdict == COMPATIBLE


@pytest.mark.parametrize("dst, verdict", [
    ("6.2.16-3-pve", INCOMPATIBLE),     # before Proxmox's mask
    ("6.2.16-5-pve", COMPATIBLE),       # 1559d22
    ("6.6", COMPATIBLE),                # 8647c52e9504
])
def test_proxmox_74_to_80(dst: str, verdict: str) -> None:
    r = check("skylake-sp@5.15.108-1-pve", f"skylake-sp@{dst}", "qemu64", advise=False)
    assert r.verdict == verdict


def test_a_host_without_pku_never_leaks() -> None:
    """Broadwell has no PKU: nothing to leak, whatever the source kernel."""
    r = check("broadwell@5.15.0-91-generic", "broadwell@6.2", "qemu64", advise=False)
    assert r.verdict == COMPATIBLE


def test_firecracker_510_to_61_table() -> None:
    """Firecracker docs/snapshotting/snapshot-support.md: snapshots taken on 5.10 restore on
    6.1, not the reverse. On the models the reverse loses the deprecated-x87 CPUID bits (7.0
    EBX[6,13], passed through only from cpuid_deprecated_x87) that the guest saw on 6.1."""
    fwd = check("icelake-sp@5.10.215-203.850.amzn2.x86_64", "icelake-sp@6.1", "host",
                vmm="firecracker", advise=False)
    assert fwd.verdict == COMPATIBLE
    back = check("icelake-sp@6.1", "icelake-sp@5.10", "host", vmm="firecracker", advise=False)
    assert back.verdict == INCOMPATIBLE
    assert any("fdp-excptn-only" in f.text for f in back.findings if f.level == "error")


def test_this_machines_uname_is_a_kernel() -> None:
    """``HOST@$(uname -r)`` on this machine (6.18.44-fc-v857, upstream 6.18.44)."""
    r = check("zen4@6.18.44-fc-v857", "zen4@6.1.0-18-amd64", "qemu64", advise=False)
    assert r.verdict == COMPATIBLE
