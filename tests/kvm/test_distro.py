"""Distribution kernel strings (kvmfpu.kvm.distro): the upstream base each names, the
backports modelled, and the refusals. Expected values come from the public sources named
in kvmfpu/kvm/distro.py (proxmox/pve-kernel history, Debian's linux changelog)."""

import pytest

from kvmfpu.kvm import distro
from kvmfpu.kvm.profiles import UnknownKernel, parse_version, profile


@pytest.mark.parametrize("text, base, kind", [
    # proxmox/pve-kernel 5979e3a "update sources to Ubuntu-5.15.0-91.101", then 5.15.131-2
    ("5.15.0-91-generic", (5, 15, 131), "ubuntu"),
    # proxmox/pve-kernel cc43fdd (Ubuntu-6.8.0-45.45) -> 6.8.12-2
    ("6.8.0-45-generic", (6, 8, 12), "ubuntu"),
    # proxmox/pve-kernel a80f88c (Ubuntu-5.4.0-18.22) -> 5.4.24-1 (Ubuntu 20.04)
    ("5.4.0-18-generic", (5, 4, 24), "ubuntu"),
    # Debian linux 6.1.76-1: "Bump ABI to 18"; 6.1.82-1: "Bump ABI to 19"
    ("6.1.0-18-amd64", (6, 1, 76), "debian"),
    ("6.1.0-18-cloud-amd64", (6, 1, 76), "debian"),
    # apt: linux-image-amd64 6.1.192-3 depends on linux-image-6.1.0-47-amd64
    ("6.1.0-47-amd64", (6, 1, 192), "debian"),
    ("6.12.38+deb13-amd64", (6, 12, 38), "debian"),
    ("5.15.108-1-pve", (5, 15, 108), "proxmox"),
    ("6.2.16-3-pve", (6, 2, 16), "proxmox"),
    ("6.8.12-4-pve", (6, 8, 12), "proxmox"),
    ("5.10.215-203.850.amzn2.x86_64", (5, 10, 215), "amazon"),
    ("6.1.90-99.173.amzn2023.x86_64", (6, 1, 90), "amazon"),
    # cloud-hypervisor#5800's host
    ("5.10.0-136.49.0.127.oe2203sp1.x86_64", (5, 10, 0), "openeuler"),
    ("6.18.44-fc-v857", (6, 18, 44), "vendor"),
])
def test_upstream_base(text: str, base: tuple[int, int, int], kind: str) -> None:
    dk = distro.parse(text)
    assert dk is not None and dk.base == base and dk.distro == kind and dk.notes
    assert parse_version(text) == base
    p = profile(text)
    assert (p.name, p.version, p.distro) == (text, base, kind)


def test_plain_versions_are_not_distro_strings() -> None:
    for text in ("6.1", "6.1.60", "6.1.y", "6.18-rc5"):
        assert distro.parse(text) is None


def test_abi_between_known_ones_is_a_lower_bound() -> None:
    """Debian ABI 40 is past the last 'Bump ABI' line (38, 6.1.147) and before apt's 47."""
    dk = distro.parse("6.1.0-40-amd64")
    assert dk is not None and dk.base == (6, 1, 147)
    assert any("lower bound" in n for n in dk.notes)
    ub = distro.parse("5.15.0-92-generic")          # between Ubuntu ABIs 91 and 94
    assert ub is not None and ub.base == (5, 15, 131)
    assert any("lower bound" in n for n in ub.notes)


def test_ubuntu_cloud_abis_are_not_mapped() -> None:
    """Ubuntu's -aws/-azure kernels number their ABIs on their own (Firecracker #5438's
    5.15.0-1090-aws)."""
    dk = distro.parse("5.15.0-1090-aws")
    assert dk is not None and dk.base == (5, 15, 0)
    assert any("number their ABI on their own" in n for n in dk.notes)


@pytest.mark.parametrize("text", ["5.15.0-91-generic", "5.15.0-14-generic", "5.15.108-1-pve",
                                  "5.15.158-2-pve"])
def test_jammy_carries_the_516_guest_fpu(text: str) -> None:
    """proxmox/pve-kernel 1559d22: the Ubuntu-based 5.15 leaked the host PKRU bit as the
    pre-ad856280ddea 5.16 code does; Firecracker #5438: no ARCH_REQ_XCOMP_GUEST_PERM (5.17
    KVM AMX) on jammy."""
    p = profile(text)
    assert p.has("fpu_guest") and not p.has("user_xfeatures_from_cpuid")
    assert not p.has("amx") and not p.has("xsave2")
    assert any("UNVERIFIED" in n for n in p.notes)
    assert not profile("5.15.131").has("fpu_guest")      # mainline 5.15


@pytest.mark.parametrize("text, mask, get_masks", [
    ("6.2.16-3-pve", False, False), ("6.2.16-4-pve", False, False),
    ("6.2.16-5-pve", True, False),                        # 1559d22 in 6.2.16-5 (6459eb2)
    ("6.2.16-19-pve", True, True),                        # 6d825fc in 6.2.16-19 (f652165)
    ("6.5.13-6-pve", True, True), ("6.8.12-4-pve", True, True),
])
def test_proxmox_patches(text: str, mask: bool, get_masks: bool) -> None:
    p = profile(text)
    assert p.has("pve_set_xsave_mask_pkru") == mask
    assert p.has("get_masks_guest_xcr0") == get_masks
    assert p.has("user_xfeatures_from_cpuid") == (not get_masks)
    assert not profile("6.2").has("pve_set_xsave_mask_pkru")


@pytest.mark.parametrize("text", ["4.18.0-513.el8", "5.14.0-427.el9",
                                  "5.14.0-427.13.1.el9_4.x86_64", "4.18.0-553.el8_10.x86_64"])
def test_rhel_is_refused_with_the_reason(text: str) -> None:
    with pytest.raises(UnknownKernel, match="large backport"):
        profile(text)
    with pytest.raises(UnknownKernel, match="RHEL"):
        parse_version(text)


@pytest.mark.parametrize("text, message", [
    ("4.19.0-26-amd64", "built on 4.19; kvmfpu models Linux 5.4 and later"),
    ("9.1.2-arch1-1", "newer than the newest"),
    ("banana", "not a kernel version"),
    ("5.15.0-91-generic" * 20, "a kernel release is not"),
])
def test_bad_strings(text: str, message: str) -> None:
    with pytest.raises(UnknownKernel, match=message):
        profile(text)


def test_every_distro_switch_exists() -> None:
    """The distro data names switches of the profile table only (profile() raises
    KeyError otherwise)."""
    from kvmfpu.kvm.profiles import BY_NAME
    for names in (distro.JAMMY_FPU_BACKPORT, (distro.PVE_PKRU_MASK,)):
        assert set(names) <= set(BY_NAME)


@pytest.mark.parametrize("text, has", [("6.5.13-5-pve", False), ("6.5.13-6-pve", True),
                                       ("6.2.16-20-pve", False), ("6.8.4-2-pve", False),
                                       ("6.8.4-3-pve", True), ("6.8.12-4-pve", True)])
def test_proxmox_gates_the_zen_erratum_on_microcode(text: str, has: bool) -> None:
    """proxmox/pve-kernel f2f95ef / 1c9271d cherry-picked 29ba89f18952 into 6.5 (first in
    6.5.13-6) and 6.8 (first in 6.8.4-3); the 6.8 copy was dropped at the Ubuntu-6.8.0-49
    rebase (fcfcd91), which the notes mark UNVERIFIED."""
    p = profile(text)
    assert p.has("zen_erratum_microcode") == has
    assert any("UNVERIFIED" in n and "fcfcd91" in n for n in p.notes) == (text == "6.8.12-4-pve")
