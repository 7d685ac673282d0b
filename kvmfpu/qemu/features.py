"""QEMU's x86 CPU feature words and feature property names, as data.

Data: ``data/feature_words.json``, QEMU's ``feature_word_info[]``, ``feature_dependencies[]`` and
the aliases ``x86_cpu_initfn`` registers (target/i386/cpu.c; releases and commit in the file).

Naming, the way QEMU registers properties:

- every named bit is a boolean property under its ``feat_names`` name
  (x86_cpu_register_feature_bit_props); that name is what query-cpu-model-expansion type=static
  reports, so it is the canonical name here ("sse4.1", "pni", "lahf-lm");
- legacy spellings are aliases (object_property_add_alias in x86_cpu_initfn): "sse4_1",
  "sse4-1", "lahf_lm", "i64", "xd", "ffxsr", "pclmuldq", ...;
- ``-cpu`` ``key=value`` options go through feat2prop ('_' -> '-') first, so "lahf_lm=on" and
  "avx512_vnni=on"-style spellings reach a property when the '-' form exists; ``+f``/``-f`` do
  not (x86_cpu_parse_featurestr keeps them verbatim), see :func:`canonical`.

One name may own several bits of a word ("kvmclock": FEAT_KVM bits 0 and 3;
"vmx-invept-single-context": EPT_VPID_CAPS bits 25 and 41): x86_cpu_register_bit_prop ORs
them into one property mask, see :func:`mask`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any, Final

from kvmfpu.cpus.features import FeatureBit


class UnknownFeature(LookupError):
    """Not a feature property QEMU registers."""


@dataclass(frozen=True)
class FeatureWord:
    word: str  # QEMU's enum name, "FEAT_7_0_EBX"
    leaf: int | None  # CPUID leaf; None for MSR words
    subleaf: int
    reg: int  # kvmfpu.cpus.features EAX=0 .. EDX=3
    msr: int | None  # MSR index for MSR words
    names: tuple[str | None, ...]  # one per bit: QEMU's property name (None: unnamed)
    unmigratable: int  # bits QEMU never exposes with migratable=on
    no_autoenable: int


def _data() -> dict[str, Any]:
    text = resources.files("kvmfpu.qemu").joinpath("data", "feature_words.json").read_text()
    data: dict[str, Any] = json.loads(text)
    return data


def _load_words() -> tuple[FeatureWord, ...]:
    out = []
    for w in _data()["words"]:
        is_msr = w["msr"] is not None
        out.append(
            FeatureWord(
                word=w["word"],
                leaf=None if is_msr else w["leaf"],
                subleaf=0 if is_msr else w["subleaf"],
                reg=w["reg"],
                msr=w["msr"],
                names=tuple(w["names"]),
                unmigratable=int(w["unmigratable"], 16),
                no_autoenable=int(w["no_autoenable"], 16),
            )
        )
    return tuple(out)


WORDS: Final[tuple[FeatureWord, ...]] = _load_words()
WORD: Final[dict[str, FeatureWord]] = {w.word: w for w in WORDS}


def _load_features() -> dict[str, tuple[FeatureWord, int]]:
    out: dict[str, tuple[FeatureWord, int]] = {}
    for w in WORDS:
        for bit, name in enumerate(w.names):
            if name is not None and name not in out:  # first bit of a multi-bit name
                out[name] = (w, bit)
    return out


#: canonical name -> (word, bit); the lowest bit for a name that owns several.
FEATURES: Final[dict[str, tuple[FeatureWord, int]]] = _load_features()
#: alias -> canonical name (object_property_add_alias in x86_cpu_initfn).
ALIASES: Final[dict[str, str]] = {a: t for a, t in _data()["aliases"]}
#: (feature, feature it needs), feature_dependencies[] in table order (the order matters:
#: x86_cpu_expand_features walks it once).
DEPENDENCIES: Final[tuple[tuple[str, str], ...]] = tuple((f, n) for f, n in _data()["dependencies"])


#: (feature, needed) -> the first release read whose table has the entry, for the entries
#: v7.2.0 lacks ("10.0": 8.0 .. 10.0; "10.2": 10.1 .. 10.2).
def _dep_key(k: str) -> tuple[str, str]:
    f, n = k.split(" <- ")
    return f, n


DEPENDENCY_FIRST_SEEN: Final[dict[tuple[str, str], str]] = {
    _dep_key(k): r for k, r in _data()["dependencies_first_seen"].items()
}
#: Non-feature ``-cpu`` properties -> QOM kind ("bool", "int", "str", "on-off-auto").
PROPERTIES: Final[dict[str, str]] = {n: p["kind"] for n, p in _data()["properties"].items()}
#: Properties only host and max have (max_x86_cpu_properties[]): "migratable", "host-cache-info".
HOST_MAX_ONLY: Final[frozenset[str]] = frozenset(
    n for n, p in _data()["properties"].items() if p.get("host_max_only")
)
_PROPERTY_FIRST_SEEN: Final[dict[str, str]] = {
    n: p["first_seen"] for n, p in _data()["properties"].items() if "first_seen" in p
}
_FIRST_SEEN: Final[dict[str, str]] = {n: r for w in _data()["words"] for n, r in w["first_seen"].items()}


def sources() -> tuple[dict[str, str], ...]:
    return tuple(_data()["sources"])


def registered(name: str) -> bool:
    """A property QEMU registers under exactly this spelling (canonical or alias)."""
    return name in FEATURES or name in ALIASES


def canonical(name: str) -> str:
    """Any spelling QEMU accepts -> the canonical (static expansion) name.

    Accepts the registered names and aliases, and the feat2prop form ('_' -> '-') that
    ``key=value`` options get. Raises :class:`UnknownFeature` with a did-you-mean hint."""
    for cand in (name, name.replace("_", "-")):
        if cand in FEATURES:
            return cand
        if cand in ALIASES:
            return ALIASES[cand]
    raise UnknownFeature(f"{name!r} is not a QEMU x86 CPU feature{_hint(name)}")


def _hint(name: str) -> str:
    import difflib

    close = difflib.get_close_matches(
        name.replace("_", "-"), list(FEATURES) + list(ALIASES), n=3, cutoff=0.75
    )
    return f"; did you mean {', '.join(close)}?" if close else ""


def spellings(name: str) -> tuple[str, ...]:
    """Every property name QEMU registers for the feature: canonical first, then aliases."""
    c = canonical(name)
    return (c, *sorted(a for a, t in ALIASES.items() if t == c))


def mask(name: str) -> tuple[FeatureWord, int]:
    """The word and every bit the property sets (x86_cpu_register_bit_prop ORs same names)."""
    w, _ = FEATURES[canonical(name)]
    c = canonical(name)
    return w, sum(1 << i for i, n in enumerate(w.names) if n == c)


def cpuid_bit(name: str) -> FeatureBit | None:
    """The CPUID bit of a feature; None for MSR-word features (ARCH_CAPABILITIES, VMX...)."""
    w, bit = FEATURES[canonical(name)]
    if w.leaf is None:
        return None
    return FeatureBit(w.leaf, w.subleaf, w.reg, bit)


def is_migratable(name: str) -> bool:
    """False for the bits x86_cpu_get_migratable_flags leaves out (e.g. invtsc)."""
    w, bit = FEATURES[canonical(name)]
    return not (w.unmigratable >> bit) & 1


def first_seen(name: str) -> str:
    """The first release read whose table names the feature: "7.2" (or older), "10.0" (8.0 ..
    10.0), "10.2" (10.1 .. 10.2) or "11.0" (the 11.0 cycle)."""
    c = canonical(name)
    return _FIRST_SEEN.get(c, "7.2")


def property_first_seen(name: str) -> str:
    """Like :func:`first_seen` for a non-feature property ("7.2" or "10.2")."""
    return _PROPERTY_FIRST_SEEN.get(name, "7.2")


@cache
def needs() -> dict[str, tuple[str, ...]]:
    """feature -> every feature it needs directly (DEPENDENCIES folded)."""
    out: dict[str, list[str]] = {}
    for f, n in DEPENDENCIES:
        out.setdefault(f, []).append(n)
    return {f: tuple(ns) for f, ns in out.items()}


def apply_dependencies(features: set[str], release: str | None = None) -> set[str]:
    """x86_cpu_expand_features: one pass over feature_dependencies[] in order; a feature whose
    needed feature is off is cleared. ``release``: only the entries that release's table is known
    to have (entries first seen later are left out). Returns the names it removed."""
    removed = set()
    rel = None if release is None else tuple(int(x) for x in release.split("."))
    for f, n in DEPENDENCIES:
        first = DEPENDENCY_FIRST_SEEN.get((f, n))
        if rel is not None and first is not None and rel < tuple(int(x) for x in first.split(".")):
            continue
        if n not in features and f in features:
            features.discard(f)
            removed.add(f)
    return removed
