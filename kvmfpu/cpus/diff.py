"""What two host descriptions differ in: the question before any migration between them.

Compared: identity (vendor, family/model/stepping, brand, MXCSR_MASK, whose CPUID, kernel,
microcode),
every bit of the given CPUID feature words (by location, and by name where the word names
it), the XSAVE masks (CPUID.(0DH,0):EDX:EAX, CPUID.(0DH,1):EDX:ECX), each component's leaf
0xD geometry (size, standard offset, supervisor, 64-byte alignment, XFD), the standard and
compacted sizes (each host's own masks, and the masks both share), and the MSR indices two
Firecracker fingerprints recorded. Other CPUID rows (cache, topology, brand, ...) are listed
as differing rows, not interpreted.

Feature words and their names come from the caller (the CLI passes QEMU's feature words from
kvmfpu.qemu.features, a higher layer); :data:`DEFAULT_WORDS` names the bits kvmfpu.cpus reads.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, NamedTuple

from kvmfpu.arch.layout import Component, XsaveLayout
from kvmfpu.arch.xfeatures import bits, describe_mask, name_of
from kvmfpu.cpus.features import FEATURES
from kvmfpu.cpus.model import HostModel

REGS: Final = ("eax", "ebx", "ecx", "edx")


class Word(NamedTuple):
    """One CPUID register whose bits are features."""

    label: str  # "FEAT_7_0_EBX", or "7.0.ebx"
    leaf: int
    subleaf: int
    reg: int  # EAX=0 .. EDX=3
    names: tuple[str | None, ...] = ()  # per bit; () when unnamed


#: Leaf 0xD registers that are the XSAVE masks, compared as XCR0/XSS and components instead.
MASK_WORDS: Final = frozenset({(0xD, 0, 0), (0xD, 0, 3), (0xD, 1, 2), (0xD, 1, 3)})
#: Bits that mirror control-register state, not capabilities (SDM CPUID leaf 1 ECX[27]
#: OSXSAVE = CR4.OSXSAVE; leaf 7 ECX[4] OSPKE = CR4.PKE): a fingerprint reads them as 0.
DYNAMIC_BITS: Final = frozenset({(1, 0, 2, 27), (7, 0, 2, 4)})


def _default_words() -> tuple[Word, ...]:
    by_loc: dict[tuple[int, int, int], list[str | None]] = {}
    for name, fb in FEATURES.items():
        names = by_loc.setdefault((fb.leaf, fb.subleaf, fb.reg), [None] * 32)
        names[fb.bit] = name
    return tuple(
        Word(f"{leaf:#x}.{sub}.{REGS[reg]}", leaf, sub, reg, tuple(names))
        for (leaf, sub, reg), names in sorted(by_loc.items())
    )


#: The words of kvmfpu.cpus.features, named as there.
DEFAULT_WORDS: Final = _default_words()


@dataclass(frozen=True)
class BitDiff:
    word: str
    leaf: int
    subleaf: int
    reg: int
    bit: int
    name: str | None
    in_a: bool

    @property
    def location(self) -> str:
        return f"CPUID.({self.leaf:#x},{self.subleaf}):{REGS[self.reg].upper()}[{self.bit}]"

    @property
    def label(self) -> str:
        return self.name or self.location

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "word": self.word,
            "location": self.location,
            "in": "a" if self.in_a else "b",
        }


def _component_json(c: Component | None) -> dict[str, Any] | None:
    if c is None:
        return None
    return {
        "size": c.size,
        "offset": c.offset,
        "supervisor": c.supervisor,
        "align64": c.align64,
        "xfd": c.xfd,
    }


@dataclass(frozen=True)
class ComponentDiff:
    bit: int
    a: Component | None
    b: Component | None

    def fields(self) -> list[str]:
        """What differs: "missing in a/b" or the differing attributes."""
        if self.a is None or self.b is None:
            return [f"only in {'b' if self.a is None else 'a'}"]
        return [
            f
            for f in ("size", "offset", "supervisor", "align64", "xfd")
            if getattr(self.a, f) != getattr(self.b, f)
        ]

    def to_json(self) -> dict[str, Any]:
        return {
            "bit": self.bit,
            "name": name_of(self.bit),
            "differs": self.fields(),
            "a": _component_json(self.a),
            "b": _component_json(self.b),
        }


@dataclass
class HostDiff:
    a: HostModel
    b: HostModel
    identity: dict[str, tuple[Any, Any]] = field(default_factory=dict)
    bits: list[BitDiff] = field(default_factory=list)
    components: list[ComponentDiff] = field(default_factory=list)
    sizes: dict[str, tuple[int, int]] = field(default_factory=dict)
    msrs_only_a: list[int] = field(default_factory=list)
    msrs_only_b: list[int] = field(default_factory=list)
    other_rows: list[tuple[int, int]] = field(default_factory=list)
    words: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def only_a(self) -> list[BitDiff]:
        return [d for d in self.bits if d.in_a]

    @property
    def only_b(self) -> list[BitDiff]:
        return [d for d in self.bits if not d.in_a]

    @property
    def same(self) -> bool:
        """Nothing compared differs (identity, features, XSAVE layout, sizes, MSR lists)."""
        return not (
            self.identity
            or self.bits
            or self.components
            or self.xcr0_differs
            or self.xss_differs
            or any(a != b for a, b in self.sizes.values())
            or self.msrs_only_a
            or self.msrs_only_b
        )

    @property
    def xcr0_differs(self) -> bool:
        return self.a.supported_xcr0 != self.b.supported_xcr0

    @property
    def xss_differs(self) -> bool:
        return self.a.supported_xss != self.b.supported_xss

    def summary(self) -> str:
        """One line: what a migration between the two must reckon with."""
        a, b = self.a.name, self.b.name
        if self.same:
            return (
                f"{a} vs {b}: the same in all {self.words} feature words, XSAVE masks, "
                "components and sizes compared"
            )
        parts = []
        for key in ("vendor", "family", "model"):
            if key in self.identity:
                va, vb = self.identity[key]
                parts.append(f"{key} {_short(va)}/{_short(vb)}")
        for who, other, diffs in ((b, a, self.only_a), (a, b, self.only_b)):
            if diffs:
                parts.append(f"{who} lacks {len(diffs)} of {other}'s feature bits{_few(diffs)}")
        if "mxcsr_mask" in self.identity:
            ma, mb = self.identity["mxcsr_mask"]
            parts.append(f"MXCSR_MASK {ma:#x}/{mb:#x}")
        if self.xcr0_differs:
            parts.append(f"XCR0 {self.a.supported_xcr0:#x}/{self.b.supported_xcr0:#x}")
        if self.xss_differs:
            parts.append(f"XSS {self.a.supported_xss:#x}/{self.b.supported_xss:#x}")
        moved = [c for c in self.components if c.a and c.b and c.fields()]
        if moved:
            parts.append("leaf 0xD geometry of " + ",".join(name_of(c.bit) for c in moved))
        if (
            self.sizes.get("standard (own XCR0)", (0, 0))[0]
            != self.sizes.get("standard (own XCR0)", (0, 0))[1]
        ):
            sa, sb = self.sizes["standard (own XCR0)"]
            parts.append(f"standard size {sa}/{sb}")
        if self.msrs_only_a or self.msrs_only_b:
            parts.append(f"MSRs {len(self.msrs_only_a)} only in {a}, {len(self.msrs_only_b)} only in {b}")
        rest = [k for k in self.identity if k not in ("vendor", "family", "model", "mxcsr_mask")]
        if rest and not parts:
            parts.append("differ only in " + ", ".join(rest))
        return f"{a} vs {b}: " + "; ".join(parts)

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": "kvmfpu-host-diff/1",
            "summary": self.summary(),
            "same": self.same,
            "a": {"name": self.a.name, "title": self.a.title, "source": self.a.source},
            "b": {"name": self.b.name, "title": self.b.title, "source": self.b.source},
            "identity": {k: {"a": va, "b": vb} for k, (va, vb) in self.identity.items()},
            "feature_words_compared": self.words,
            "features_only_in_a": [d.to_json() for d in self.only_a],
            "features_only_in_b": [d.to_json() for d in self.only_b],
            "xcr0": {"a": f"{self.a.supported_xcr0:#x}", "b": f"{self.b.supported_xcr0:#x}"},
            "xss": {"a": f"{self.a.supported_xss:#x}", "b": f"{self.b.supported_xss:#x}"},
            "components": [c.to_json() for c in self.components],
            "sizes": {k: {"a": va, "b": vb} for k, (va, vb) in self.sizes.items()},
            "msrs_only_in_a": [f"{i:#x}" for i in self.msrs_only_a],
            "msrs_only_in_b": [f"{i:#x}" for i in self.msrs_only_b],
            "other_cpuid_rows_differing": [[f"{leaf:#x}", sub] for leaf, sub in self.other_rows],
            "notes": self.notes,
        }

    def lines(self) -> list[str]:
        """The report as text, summary first."""
        a, b = self.a.name, self.b.name
        out = [self.summary()]
        for key, (va, vb) in self.identity.items():
            out.append(f"  {key}: {_short(va)} | {_short(vb)}")
        for who, other, diffs in ((a, b, self.only_a), (b, a, self.only_b)):
            if diffs:
                out.append(f"  features {who} has and {other} lacks ({len(diffs)}):")
                out += [f"    {d.name or '-':24} {d.location}" for d in diffs]
        out.append(f"  XCR0 {describe_mask(self.a.supported_xcr0)} | {describe_mask(self.b.supported_xcr0)}")
        out.append(f"  XSS  {describe_mask(self.a.supported_xss)} | {describe_mask(self.b.supported_xss)}")
        if self.components:
            out.append(f"  leaf 0xD components that differ ({a} | {b}):")
            for c in self.components:
                out.append(
                    f"    {c.bit:>2} {name_of(c.bit):12} {_geometry(c.a):28} | "
                    f"{_geometry(c.b):28} ({', '.join(c.fields())})"
                )
        for key, (va, vb) in self.sizes.items():
            mark = "" if va == vb else "   differs"
            out.append(f"  {key:34} {va:>6} | {vb:<6}{mark}")
        if self.msrs_only_a or self.msrs_only_b:
            out.append(f"  MSRs only in {a}: {' '.join(f'{i:#x}' for i in self.msrs_only_a) or '-'}")
            out.append(f"  MSRs only in {b}: {' '.join(f'{i:#x}' for i in self.msrs_only_b) or '-'}")
        if self.other_rows:
            shown = " ".join(f"{leaf:#x}.{sub}" for leaf, sub in self.other_rows[:24])
            more = f" (+{len(self.other_rows) - 24})" if len(self.other_rows) > 24 else ""
            out.append(f"  other CPUID rows differing ({len(self.other_rows)}): {shown}{more}")
        out += [f"  note: {n}" for n in self.notes]
        return out


def _short(v: Any) -> str:
    return f"{v:#x}" if isinstance(v, int) and not isinstance(v, bool) else str(v)


def _few(diffs: Sequence[BitDiff], n: int = 6) -> str:
    """A few of them, named ones first (a multi-bit name once)."""
    labels = list(
        dict.fromkeys([d.name for d in diffs if d.name] + [d.location for d in diffs if not d.name])
    )
    if not labels:
        return ""
    return f" ({', '.join(labels[:n])}{', ...' if len(labels) > n else ''})"


def _geometry(c: Component | None) -> str:
    if c is None:
        return "-"
    flags = "".join(f for f, on in (("S", c.supervisor), ("A", c.align64), ("X", c.xfd)) if on)
    where = "-" if c.supervisor else f"{c.offset:#x}"
    return f"size {c.size:#x} at {where}{' ' + flags if flags else ''}"


#: Identity fields only some descriptions record (a capture, a fingerprint).
_RECORDED: Final = ("kernel", "microcode")


def _identity(m: HostModel) -> dict[str, Any]:
    fam, mod, step = m.signature
    return {
        "vendor": m.vendor,
        "family": fam,
        "model": mod,
        "stepping": step,
        "brand": m.brand,
        # XRSTOR/FXRSTOR #GP on an MXCSR bit outside the mask (SDM Vol.1 11.6.6): AMD's MM bit 17.
        "mxcsr_mask": m.behaviour.mxcsr_mask,
        "cpuid_view": m.cpuid_view,
        "kernel": m.kernel,
        "microcode": m.microcode,
    }


def _sizes(a: XsaveLayout, b: XsaveLayout, ma: HostModel, mb: HostModel) -> dict[str, tuple[int, int]]:
    def std(lay: XsaveLayout, mask: int) -> int:
        return lay.standard_size(mask) if lay.user_mask else 512

    def cmp(lay: XsaveLayout, mask: int) -> int:
        return lay.compacted_size(mask) if lay.user_mask else 512

    common_user = ma.supported_xcr0 & mb.supported_xcr0
    common_all = common_user | (ma.supported_xss & mb.supported_xss)
    return {
        "standard (own XCR0)": (std(a, ma.supported_xcr0), std(b, mb.supported_xcr0)),
        "compacted (own XCR0|XSS)": (
            cmp(a, ma.supported_xcr0 | ma.supported_xss),
            cmp(b, mb.supported_xcr0 | mb.supported_xss),
        ),
        f"standard (common XCR0 {common_user:#x})": (std(a, common_user), std(b, common_user)),
        f"compacted (common {common_all:#x})": (cmp(a, common_all), cmp(b, common_all)),
    }


def diff(a: HostModel, b: HostModel, words: Iterable[Word] = DEFAULT_WORDS) -> HostDiff:
    """Everything :class:`HostDiff` compares, between hosts ``a`` and ``b``."""
    out = HostDiff(a, b)
    ia, ib = _identity(a), _identity(b)
    # A kernel or microcode one description does not record is unknown, not different.
    out.identity = {
        k: (ia[k], ib[k]) for k in ia if ia[k] != ib[k] and not (k in _RECORDED and None in (ia[k], ib[k]))
    }
    seen: set[tuple[int, int, int]] = set()
    for w in words:
        loc = (w.leaf, w.subleaf, w.reg)
        if loc in seen or loc in MASK_WORDS:
            continue
        seen.add(loc)
        va, vb = a.cpuid(w.leaf, w.subleaf)[w.reg], b.cpuid(w.leaf, w.subleaf)[w.reg]
        for bit in bits(va ^ vb):
            if (*loc, bit) in DYNAMIC_BITS:
                continue
            name = w.names[bit] if bit < len(w.names) else None
            out.bits.append(BitDiff(w.label, w.leaf, w.subleaf, w.reg, bit, name, bool(va >> bit & 1)))
    out.words = len(seen)
    la, lb = a.layout, b.layout
    for bit in sorted(set(la.components) | set(lb.components)):
        cd = ComponentDiff(bit, la.components.get(bit), lb.components.get(bit))
        if cd.a != cd.b:
            out.components.append(cd)
    out.sizes = _sizes(la, lb, a, b)
    if a.msrs and b.msrs:
        out.msrs_only_a = sorted(set(a.msrs) - set(b.msrs))
        out.msrs_only_b = sorted(set(b.msrs) - set(a.msrs))
    compared_leaves = {(leaf, sub) for leaf, sub, _ in seen}
    for key in sorted(set(a.table) | set(b.table)):
        if key[0] == 0xD or key in compared_leaves:
            continue
        if a.cpuid(*key) != b.cpuid(*key):
            out.other_rows.append(key)
    out.notes = _notes(a, b, out)
    return out


def _notes(a: HostModel, b: HostModel, d: HostDiff) -> list[str]:
    notes = []
    for m in (a, b):
        if m.cpuid_view == "firecracker-guest":
            notes.append(
                f"{m.name}'s CPUID is a Firecracker guest's on Linux {m.kernel} "
                "(KVM_GET_SUPPORTED_CPUID after Firecracker's normalisation): a bit it "
                "lacks may still be on that host"
            )
    if a.cpuid_view != b.cpuid_view:
        notes.append(
            "one host's own CPUID against a guest's: bits KVM or the VMM hide, or add "
            "(hypervisor, tsc-deadline, ...), count as differences"
        )
    for key in _RECORDED:
        unknown = [m.name for m in (a, b) if getattr(m, key) is None]
        if len(unknown) == 1:
            notes.append(f"{unknown[0]} records no {key}: not compared")
    notes.append("OSXSAVE and OSPKE mirror CR4, not capabilities: not compared")
    notes.append(
        "rows of feature words compared bit by bit; leaf 0xD through its components "
        "and masks (subleaf 0/1 EBX follow the current XCR0/XSS); other rows listed, "
        "not interpreted"
    )
    if not (a.msrs and b.msrs):
        notes.append(
            "MSR lists compared only between two descriptions that record MSRs (Firecracker fingerprints)"
        )
    return notes
