"""The order hosts are listed in a matrix: by vendor, then by CPU generation read from the
host's own CPUID (so a new host file places itself; there is no list of host names).

- Vendors: Intel, AMD, then Hygon (its CPUID follows AMD's layout: a licensed Zen 1), then
  Zhaoxin/Centaur. A host of another vendor, or without CPUID leaf 1, is last, in the order
  given.
- AMD, Hygon, Zhaoxin: the family is the generation (AMD's PPRs: 17h Zen to Zen 2, 19h Zen 3
  and Zen 4, 1Ah Zen 5), then the highest extended leaf (each generation adds leaves:
  Zen 1 0x8000001F, Zen 2 0x80000020, Zen 3 0x80000023, Zen 4 0x80000028).
- Intel: the family says little (6 from the Pentium Pro to Granite Rapids, while 15 was the
  older NetBurst), so the highest basic leaf comes first: Intel adds a leaf with nearly
  every generation (Nehalem 0xB, Sandy Bridge 0xD, Haswell 0xF, Broadwell 0x14, Skylake
  0x16, Ice Lake 0x1B, Sapphire Rapids 0x20, Sierra Forest 0x23, Granite Rapids 0x24: the
  packaged dumps).
- Ties (one generation's client and server parts, Sapphire and Emerald Rapids): the number
  of feature bits set in the CPUID feature words (later steppings and products add
  features), then model and stepping, then the name.

A dump taken inside a VM shows the hypervisor's leaf range and feature mask; such a host
sorts by what its guest CPUID says.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from kvmfpu.cpus.model import HostModel

INTEL: Final = "GenuineIntel"
#: Vendor strings (CPUID leaf 0) in listing order.
VENDORS: Final = (INTEL, "AuthenticAMD", "HygonGenuine", "CentaurHauls", "  Shanghai  ")

#: The feature words counted for ties: (leaf, subleaf, register) with EAX=0 .. EDX=3.
#: Leaf 1 ECX bits 27 (OSXSAVE) and 31 (hypervisor) and leaf 7 ECX bit 4 (OSPKE) are
#: state, not features, and are masked out.
_WORDS: Final = (
    (0x1, 0, 2, ~(1 << 27 | 1 << 31)),
    (0x1, 0, 3, ~0),
    (0x7, 0, 1, ~0),
    (0x7, 0, 2, ~(1 << 4)),
    (0x7, 0, 3, ~0),
    (0x7, 1, 0, ~0),
    (0x7, 1, 3, ~0),
    (0xD, 1, 0, ~0),
    (0x8000_0001, 0, 2, ~0),
    (0x8000_0001, 0, 3, ~0),
    (0x8000_0008, 0, 1, ~0),
    (0x8000_0021, 0, 0, ~0),
)

Key = tuple[int, ...]


def feature_bits(host: HostModel) -> int:
    """How many feature bits the host's CPUID sets in the words above."""
    return sum(
        (host.cpuid(leaf, sub)[reg] & mask & 0xFFFF_FFFF).bit_count() for leaf, sub, reg, mask in _WORDS
    )


def generation_key(host: HostModel) -> Key | None:
    """The host's place within its vendor, or None when it cannot be placed (an unknown
    vendor or no CPUID leaf 1)."""
    if host.vendor not in VENDORS or host.cpuid(1)[0] == 0:
        return None
    family, model, stepping = host.signature
    max_basic = host.cpuid(0)[0]
    max_ext = host.cpuid(0x8000_0000)[0]
    if host.vendor == INTEL:
        first = (max_basic, 0)
    else:
        first = (family, max_ext)
    return (*first, feature_bits(host), model, stepping)


def ordered(hosts: Sequence[HostModel]) -> list[int]:
    """Indexes into ``hosts`` in listing order (stable: equal keys keep the given order,
    hosts that cannot be placed come last as given)."""

    def key(i: int) -> tuple[int, Key, str]:
        h = hosts[i]
        gen = generation_key(h)
        if gen is None:
            return (len(VENDORS), (i,), "")
        return (VENDORS.index(h.vendor), gen, h.name)

    return sorted(range(len(hosts)), key=key)
