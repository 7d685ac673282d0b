"""Kernel release strings as distributions name them (``uname -r``), mapped to the upstream
release they are built on and the xstate-relevant changes each distribution carried.

Every mapping names where it was read. What could not be established is said in the notes
that travel with the profile (KernelProfile.notes), never guessed:

- Ubuntu ``X.Y.0-ABI-flavour``: the ABI -> upstream stable base from Proxmox's pve-kernel
  history (github proxmox/pve-kernel, branches pve-kernel-5.15, bookworm-6.5/6.8/6.14): each
  "update sources to Ubuntu-X.Y.0-ABI.UPLOAD" commit is followed by "bump version to
  X.Y.Z-N", Proxmox naming its build of that Ubuntu tree by the tree's stable sublevel. An ABI
  between two known ones is given the lower one's base (a lower bound, said in the notes).
- Debian ``X.Y.0-ABI-amd64``: Debian's own changelog (linux 6.1.187-1's
  /usr/share/doc/linux-libc-dev/changelog.Debian.gz on bookworm: "Bump ABI to N" in the
  upload that first carried it) and apt's linux-image-amd64 6.1.192-3 -> 6.1.0-47.
- Proxmox ``X.Y.Z-N-pve``: upstream X.Y.Z (Proxmox's own numbering) plus Ubuntu's and
  Proxmox's changes (proxmox/pve-kernel patches/kernel, commits named below).
- RHEL and its rebuilds (``.elN``): refused. Their KVM is a large backport from later
  upstream releases and its xstate behaviour cannot be read off the version.
- Anything else of the form ``X.Y.Z-suffix`` / ``X.Y.Z+suffix``: upstream X.Y.Z, with a note
  that the vendor's backports are unknown (``6.18.44-fc-v857``, Amazon Linux, Fedora...).
"""

from __future__ import annotations

import bisect
import re
from dataclasses import dataclass
from typing import Final

Version = tuple[int, int, int]


class RefusedKernel(ValueError):
    """A distribution kernel whose behaviour kvmfpu will not guess."""


@dataclass(frozen=True)
class DistroKernel:
    """A distribution's kernel: the upstream base and what the distribution changed."""

    release: str  # as given (uname -r)
    distro: str  # "ubuntu", "debian", "proxmox", "openeuler", "vendor"
    base: Version  # the upstream release it is built on
    adds: tuple[str, ...] = ()  # behaviour switches the distribution backported
    removes: tuple[str, ...] = ()  # switches (bugs) the distribution fixed or lacks
    notes: tuple[str, ...] = ()


# -- Ubuntu -------------------------------------------------------------------------------
#: (ABI, upstream sublevel, proxmox/pve-kernel commit "update sources to Ubuntu-X.Y.0-ABI.*").
UBUNTU_ABI: Final[dict[str, tuple[tuple[int, int, str], ...]]] = {
    "5.4": (
        (18, 24, "a80f88c"),
        (19, 27, "9e78c79"),
        (24, 30, "9f9b412"),
        (30, 34, "9522496"),
        (32, 41, "6865b4e"),
        (38, 44, "228045b"),
        (43, 55, "6b841d3"),
        (46, 60, "0054ae0"),
        (49, 65, "aca38ca"),
        (55, 73, "2b8feab"),
        (57, 78, "aa81f09"),
    ),
    "5.15": (
        (14, 7, "7ffd90e"),
        (16, 12, "0a77aa1"),
        (19, 17, "55227d5"),
        (20, 19, "23de619"),
        (23, 27, "f641ad1"),
        (24, 30, "1615b3e"),
        (27, 30, "73e4912"),
        (29, 35, "6ef2b41"),
        (36, 35, "c196443"),
        (40, 35, "0594faa"),
        (41, 39, "4af054d"),
        (45, 39, "f663b7d"),
        (48, 53, "96f7973"),
        (49, 60, "92d3915"),
        (50, 60, "58ca301"),
        (51, 64, "95d22b9"),
        (54, 74, "1de3bb1"),
        (65, 85, "b6923c3"),
        (68, 102, "4ca240a"),
        (77, 108, "6f85177"),
        (82, 111, "0f9bca9"),
        (88, 126, "689d5e3"),
        (90, 131, "dec49ae"),
        (91, 131, "5979e3a"),
        (94, 136, "37677d8"),
        (100, 143, "9f1d723"),
        (104, 149, "dcb887c"),
        (111, 152, "2726590"),
        (115, 158, "fa0c83e"),
    ),
    "6.2": (
        (16, 2, "97d08b7"),
        (17, 2, "af0b394"),
        (23, 16, "435ecf6"),
        (25, 16, "289e2dd"),
        (32, 16, "77b18ac"),
        (34, 16, "8ff596f"),
        (36, 16, "2db681b"),
    ),
    "6.5": (
        (10, 3, "2ce39fb"),
        (14, 11, "d7ddc69"),
        (20, 13, "5dde66b"),
        (27, 13, "4cf5a7d"),
        (32, 13, "28fb508"),
    ),
    "6.8": (
        (23, 4, "880344a"),
        (32, 4, "1313c6a"),
        (38, 8, "64439d5"),
        (43, 12, "d17df46"),
        (45, 12, "cc43fdd"),
        (49, 12, "fcfcd91"),
        (51, 12, "a572605"),
        (53, 12, "38e2e37"),
        (58, 12, "15c9538"),
        (60, 12, "4ce1328"),
        (62, 12, "82c425e"),
        (70, 12, "4ffab1a"),
        (80, 12, "eeb2133"),
        (88, 12, "628ded2"),
        (90, 12, "6a319f5"),
        (92, 12, "baec9b5"),
        (104, 12, "36ae852"),
        (106, 12, "fe489f6"),
        (116, 12, "efeb0e6"),
        (119, 12, "731e7bd"),
        (124, 12, "8fd199f"),
        (130, 12, "b20b6a8"),
        (132, 12, "e050a53"),
        (136, 12, "0d00bd9"),
        (139, 12, "2f130dc"),
    ),
    "6.11": ((13, 0, "a872f27"), (17, 11, "4320d76"), (24, 11, "e46261e")),
    "6.14": (
        (15, 0, "6feeff7"),
        (17, 4, "2d7eff8"),
        (22, 5, "9fa52bc"),
        (24, 6, "3af5bec"),
        (26, 8, "dccc747"),
        (30, 11, "bca113d"),
        (34, 11, "52b0eb9"),
        (37, 11, "16e61ff"),
    ),
}

#: Ubuntu jammy's 5.15 carries the 5.16 guest-FPU rework (struct fpu_guest,
#: fpu_copy_guest_fpstate_to_uabi) without ad856280ddea, so KVM_GET_XSAVE leaks the host's
#: PKRU bit for guests without PKU, as mainline 5.16 does. Source: proxmox/pve-kernel
#: 1559d22 (T. Lamprecht, 2023-07-14, "kvm: xsave set: mask-out PKRU bit in xfeatures if
#: vCPU has no support": qemu64 guests from "our 5.15 based kernel (default Proxmox VE 7.4)"
#: fail on 6.2) and bloomberg/chef-bcpc#2278 (2024). Mainline 5.15's fill_xsave masks
#: XSTATE_BV with guest_supported_xcr0 | FP | SSE and does not leak.
JAMMY_FPU_BACKPORT: Final = ("fpu_guest", "pkru_always_written_bug")
JAMMY_NOTE: Final = (
    "Ubuntu jammy 5.15 modelled with the 5.16 guest-FPU rework (fpu_guest) and without "
    "ad856280ddea: it leaks the host PKRU bit into KVM_GET_XSAVE (proxmox/pve-kernel 1559d22; "
    "bloomberg/chef-bcpc#2278); UNVERIFIED: which jammy ABI first carried the rework (applied "
    "to every jammy ABI), and the rest of Ubuntu's KVM backports are not modelled"
)
#: Firecracker issue #5438: ARCH_REQ_XCOMP_GUEST_PERM is EINVAL on 5.15.0-1090-aws (an AMX
#: host), so jammy carries no 5.17 KVM AMX support: the amx/xsave2 switches stay off.

_UBUNTU = re.compile(
    r"(\d+)\.(\d+)\.0-(\d+)-(generic|lowlatency|generic-64k|aws|azure|gcp|gke|"
    r"oracle|kvm|ibm|nvidia|raspi|intel-iotg|oem|realtime|virtual)"
)


def _ubuntu(text: str, m: re.Match[str]) -> DistroKernel:
    major, minor, abi, flavour = int(m.group(1)), int(m.group(2)), int(m.group(3)), m.group(4)
    series = f"{major}.{minor}"
    notes: list[str] = []
    adds: tuple[str, ...] = ()
    rows = UBUNTU_ABI.get(series, ())
    sub = 0
    if abi >= 1000:
        notes.append(
            f"Ubuntu {flavour} kernels number their ABI on their own ({abi}): the "
            f"upstream base is not mapped, modelled as {series}.0"
        )
    elif rows:
        i = bisect.bisect_right([r[0] for r in rows], abi) - 1
        if i < 0:
            notes.append(f"Ubuntu {series}.0-{abi} predates the ABIs kvmfpu maps: modelled as {series}.0")
        else:
            got, sub, commit = rows[i]
            where = f"proxmox/pve-kernel {commit}: Ubuntu-{series}.0-{got}.* is {series}.{sub}"
            if got == abi:
                notes.append(f"Ubuntu {series}.0-{abi} is upstream {series}.{sub} ({where})")
            else:
                notes.append(
                    f"Ubuntu ABI {abi} is not in the map: modelled as {series}.{sub}, "
                    f"the base of ABI {got}, a lower bound ({where})"
                )
    else:
        notes.append(f"Ubuntu {series} ABIs are not mapped: modelled as {series}.0")
    if series == "5.15":
        adds = JAMMY_FPU_BACKPORT
        notes.append(JAMMY_NOTE)
    elif (major, minor) > (5, 15):
        notes.append("Ubuntu's own backports beyond the upstream stable base are not modelled")
    return DistroKernel(text, "ubuntu", (major, minor, sub), adds, (), tuple(notes))


# -- Debian -------------------------------------------------------------------------------
#: ABI -> upstream of the first upload with it (Debian linux changelog, "Bump ABI to N").
DEBIAN_ABI: Final[dict[str, tuple[tuple[int, int], ...]]] = {
    "6.1": (
        (9, 27),
        (10, 37),
        (11, 38),
        (12, 52),
        (13, 55),
        (14, 64),
        (15, 66),
        (16, 67),
        (17, 69),
        (18, 76),
        (19, 82),
        (20, 85),
        (21, 90),
        (22, 94),
        (23, 98),
        (24, 106),
        (25, 106),
        (26, 112),
        (27, 115),
        (28, 119),
        (29, 123),
        (30, 124),
        (31, 128),
        (32, 129),
        (33, 133),
        (34, 135),
        (35, 137),
        (36, 139),
        (37, 140),
        (38, 147),
        (47, 192),
    ),
}
DEBIAN_SOURCE: Final = (
    "Debian linux changelog (linux 6.1.187-1, bookworm), 'Bump ABI to N'; "
    "6.1.0-47 from apt (linux-image-amd64 6.1.192-3)"
)
_DEBIAN = re.compile(r"(\d+)\.(\d+)\.0-(\d+)-(amd64|cloud-amd64|rt-amd64)")
_DEBIAN13 = re.compile(r"(\d+)\.(\d+)\.(\d+)\+deb(\d+)-(amd64|cloud-amd64|rt-amd64)")


def _debian(text: str, m: re.Match[str]) -> DistroKernel:
    major, minor, abi = int(m.group(1)), int(m.group(2)), int(m.group(3))
    series = f"{major}.{minor}"
    rows = DEBIAN_ABI.get(series, ())
    i = bisect.bisect_right([r[0] for r in rows], abi) - 1
    if i < 0:
        return DistroKernel(
            text,
            "debian",
            (major, minor, 0),
            notes=(
                f"Debian {series} ABIs are not mapped here (only bookworm's 6.1 changelog was "
                f"read): modelled as {series}.0, so later stable fixes are missing",
            ),
        )
    got, sub = rows[i]
    nxt = rows[i + 1] if i + 1 < len(rows) else None
    if got == abi and nxt is not None and nxt[0] == abi + 1:
        note = f"Debian {series}.0-{abi} is upstream {series}.{sub} ({DEBIAN_SOURCE})"
    elif got == abi:
        note = (
            f"Debian {series}.0-{abi} starts at upstream {series}.{sub}; later uploads "
            f"of the same ABI may be newer (uname -v names the upload) ({DEBIAN_SOURCE})"
        )
    else:
        note = (
            f"Debian ABI {abi} is not in the map (from 6.1.148-1 Debian generates ABI "
            f"names automatically): modelled as {series}.{sub}, a lower bound "
            f"({DEBIAN_SOURCE})"
        )
    return DistroKernel(text, "debian", (major, minor, sub), notes=(note,))


# -- Proxmox ------------------------------------------------------------------------------
_PVE = re.compile(r"(\d+)\.(\d+)\.(\d+)-(\d+)-pve")
#: proxmox/pve-kernel 1559d22, in 6.2.16-5 (6459eb2) and every later series.
PVE_PKRU_MASK: Final = "pve_set_xsave_mask_pkru"
#: proxmox/pve-kernel 6d825fc "backport constraining guest-supported xfeatures only at
#: KVM_GET_XSAVE{2}" (8647c52e9504), in 6.2.16-19 (f652165, 2023-10-24).
PVE_GET_MASK_RELEASE: Final = (6, 2, 16, 19)
#: proxmox/pve-kernel f2f95ef "cherry-pick improved erratum 1386 workaround" (2024-04-15),
#: first in 6.5.13-6 (d38aa1f); on 6.8 from 1c9271d (first in 6.8.4-3, dcf4e75) until the
#: rebase on Ubuntu-6.8.0-49 (fcfcd91, 6.8.12-4) dropped Proxmox's copy.
PVE_ERRATUM_MICROCODE_RELEASE: Final = (6, 5, 13, 6)
PVE_68_ERRATUM_MICROCODE_RELEASE: Final = (6, 8, 4, 3)
PVE_68_REBASED: Final = (6, 8, 12, 4)


def _proxmox(text: str, m: re.Match[str]) -> DistroKernel:
    v = (int(m.group(1)), int(m.group(2)), int(m.group(3)))
    rel = int(m.group(4))
    adds: list[str] = []
    removes: list[str] = []
    notes = [f"Proxmox VE kernel on upstream {v[0]}.{v[1]}.{v[2]} (Ubuntu-based)"]
    if v[:2] == (5, 15):
        adds += JAMMY_FPU_BACKPORT
        notes.append(JAMMY_NOTE)
    if (v[:2] == (6, 2) and rel >= 5) or v[:2] > (6, 2):
        adds.append(PVE_PKRU_MASK)
        notes.append(
            "Proxmox's KVM_SET_XSAVE clears XSTATE_BV[PKRU] for a vCPU without PKRU "
            "in its CPUID (proxmox/pve-kernel 1559d22, 6.2.16-5)"
        )
    if v[:2] == (6, 2) and (*v, rel) >= PVE_GET_MASK_RELEASE:
        adds.append("get_masks_guest_xcr0")
        removes.append("user_xfeatures_from_cpuid")
        notes.append("8647c52e9504 backported (proxmox/pve-kernel 6d825fc, 6.2.16-19)")
    if (v[:2] == (6, 5) and (*v, rel) >= PVE_ERRATUM_MICROCODE_RELEASE) or (
        v[:2] == (6, 8) and (*v, rel) >= PVE_68_ERRATUM_MICROCODE_RELEASE
    ):
        adds.append("zen_erratum_microcode")
        notes.append(
            "29ba89f18952 (erratum 1386 gated on microcode) cherry-picked (proxmox/pve-kernel "
            "f2f95ef in 6.5.13-6, 1c9271d in 6.8.4-3)"
        )
        if v[:2] == (6, 8) and (*v, rel) >= PVE_68_REBASED:
            notes.append(
                "from 6.8.12-4 Proxmox dropped its copy when rebasing on Ubuntu-6.8.0-49 "
                "(fcfcd91), presumably because Ubuntu's tree carries it (UNVERIFIED)"
            )
    if v[:2] != (5, 15):
        notes.append("Ubuntu's and Proxmox's other backports are not modelled")
    return DistroKernel(text, "proxmox", v, tuple(adds), tuple(removes), tuple(notes))


# -- openEuler ----------------------------------------------------------------------------
_OE = re.compile(r"(\d+)\.(\d+)\.(\d+)-[\d.]+\.(oe\d+\w*)(\.x86_64)?")


def _openeuler(text: str, m: re.Match[str]) -> DistroKernel:
    v = (int(m.group(1)), int(m.group(2)), int(m.group(3)))
    notes = [
        f"openEuler ({m.group(4)}) on {v[0]}.{v[1]}.{v[2]}; the upstream sublevel is not "
        "in the release string"
    ]
    adds: tuple[str, ...] = ()
    if v[:2] == (5, 10):
        # cloud-hypervisor#5800: an AMX guest ran on 5.10.0-136.49.0.127.oe2203sp1 and
        # KVM_GET_XSAVE failed (uabi_size > 4096), the 5.17 KVM AMX/XSAVE2 behaviour.
        adds = ("fpu_guest", "amx", "xsave2")
        notes.append(
            "openEuler 22.03's 5.10 modelled with the 5.16/5.17 guest-FPU, AMX and "
            "KVM_GET_XSAVE2 backports (cloud-hypervisor#5800); UNVERIFIED: their "
            "exact extent and which releases carry them"
        )
    return DistroKernel(text, "openeuler", v, adds, (), tuple(notes))


# -- RHEL and rebuilds, then anything else ----------------------------------------------------
_RHEL = re.compile(r"\d+\.\d+\.\d+-[\d.]+\.el(\d+)(_\d+)?(\.\w+)*")
_SUFFIXED = re.compile(r"v?(\d+)\.(\d+)\.(\d+)[-+~_.]([A-Za-z0-9._+~-]+)")
_AMAZON = re.compile(r".*\.amzn(2|2023)(\.x86_64)?")


def parse(text: str) -> DistroKernel | None:
    """The distribution kernel ``text`` names, None when it is not a distribution string
    (plain upstream versions are parsed by kvmfpu.kvm.profiles.parse_version)."""
    t = text.strip()
    if m := _RHEL.fullmatch(t):
        raise RefusedKernel(
            f"{t!r}: a RHEL {m.group(1)} kernel (or a rebuild): its KVM is a large backport from "
            "later upstream releases, so its xstate behaviour cannot be derived from the "
            "version; kvmfpu refuses rather than guess (name the upstream release whose KVM "
            "it follows, e.g. --kernel 6.1)"
        )
    for pattern, build in ((_UBUNTU, _ubuntu), (_DEBIAN, _debian), (_PVE, _proxmox), (_OE, _openeuler)):
        if m := pattern.fullmatch(t):
            return build(t, m)
    if m := _DEBIAN13.fullmatch(t):
        v = (int(m.group(1)), int(m.group(2)), int(m.group(3)))
        return DistroKernel(
            t,
            "debian",
            v,
            notes=(
                f"Debian {m.group(4)} kernel on upstream {v[0]}.{v[1]}.{v[2]}; Debian's patches "
                "beyond it are not modelled",
            ),
        )
    if m := _SUFFIXED.fullmatch(t):
        v = (int(m.group(1)), int(m.group(2)), int(m.group(3)))
        who = "Amazon Linux" if _AMAZON.fullmatch(t) else "the vendor"
        return DistroKernel(
            t,
            "amazon" if who == "Amazon Linux" else "vendor",
            v,
            notes=(
                f"modelled as upstream {v[0]}.{v[1]}.{v[2]}: {who}'s backports in {m.group(4)!r} are unknown",
            ),
        )
    return None
