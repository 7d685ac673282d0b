"""QEMU's named x86 CPU models, as far as XSAVE is concerned.

Data: ``data/cpu_models.json`` (builtin_x86_defs of qemu/qemu target/i386/cpu.c, commits
named in the file). A model version's features are v1's with the ``.props`` of every
version up to it applied in order (x86_cpu_apply_version_props); an unversioned name is v1
(default_cpu_version), an alias names one version. ``-cpu`` style suffixes (``,+pku``,
``,-xsaves``, ``,pku=off``) change features the way QEMU's feature properties do.

Which XSAVE components a model enables is x86_ext_save_areas[] (cpu.c): a component is on
when any of its features is on; supervisor components (CET_U/CET_S, ARCH_LBR) only with
XSAVES (x86_cpu_enable_xsave_components).
"""

from __future__ import annotations

import difflib
import json
import re
from dataclasses import dataclass, field, replace
from functools import cache
from importlib import resources
from typing import Any, Final

from kvmfpu.arch import xfeatures as xf
from kvmfpu.cpus.features import EAX, EBX, ECX, EDX, FeatureBit

#: QEMU feature property -> the CPUID bit (feature_word_info[] names in cpu.c).
FEATURES: Final[dict[str, FeatureBit]] = {
    "xsave": FeatureBit(1, 0, ECX, 26),
    "avx": FeatureBit(1, 0, ECX, 28),
    "mpx": FeatureBit(7, 0, EBX, 14),
    "avx512f": FeatureBit(7, 0, EBX, 16),
    "pku": FeatureBit(7, 0, ECX, 3),
    "cet-ss": FeatureBit(7, 0, ECX, 7),
    "arch-lbr": FeatureBit(7, 0, EDX, 19),
    "cet-ibt": FeatureBit(7, 0, EDX, 20),
    "amx-tile": FeatureBit(7, 0, EDX, 24),
    "avx10": FeatureBit(7, 1, EDX, 19),
    "apxf": FeatureBit(7, 1, EDX, 21),
    "xsaveopt": FeatureBit(0xD, 1, EAX, 0),
    "xsavec": FeatureBit(0xD, 1, EAX, 1),
    "xgetbv1": FeatureBit(0xD, 1, EAX, 2),
    "xsaves": FeatureBit(0xD, 1, EAX, 3),
    "xfd": FeatureBit(0xD, 1, EAX, 4),
}
#: Linux/kvmfpu spellings users type for the same properties.
SYNONYMS: Final = {"shstk": "cet-ss", "ibt": "cet-ibt", "amx_tile": "amx-tile",
                   "arch_lbr": "arch-lbr", "apx": "apxf", "apx_f": "apxf", "ospke": "pku"}

#: x86_ext_save_areas[]: components and the features any one of which enables them.
#: APX (bit 19) has no entry in the cpu.c the data comes from; it is listed for models
#: and options that ask for apxf (QEMU's APX series, UNVERIFIED as merged).
SAVE_AREAS: Final[tuple[tuple[int, tuple[str, ...]], ...]] = (
    (xf.YMM, ("avx",)),
    (xf.MPX, ("mpx",)),
    (xf.AVX512, ("avx512f", "avx10")),
    (xf.PKRU, ("pku",)),
    (xf.CET, ("cet-ss", "cet-ibt")),
    (xf.LBR, ("arch-lbr",)),
    (xf.XTILE, ("amx-tile",)),
    (xf.APX, ("apxf",)),
)
REG_NAMES: Final = ("EAX", "EBX", "ECX", "EDX")


class UnknownModel(LookupError):
    """Not a QEMU CPU model this data knows, or a malformed ``-cpu`` string."""


@dataclass(frozen=True)
class ModelVersion:
    version: int
    alias: str | None = None
    props: dict[str, str] = field(default_factory=dict)
    note: str | None = None
    unverified: str | None = None


@dataclass(frozen=True)
class ModelDef:
    name: str
    vendor: str
    features: frozenset[str]
    versions: tuple[ModelVersion, ...]
    family: int | None = None
    model: int | None = None

    @property
    def latest(self) -> int:
        return max(v.version for v in self.versions)


@dataclass(frozen=True)
class GuestModel:
    """A resolved ``-cpu`` value: a model version with its options, or host passthrough."""

    spec: str                      # what the user wrote, normalised (e.g. "EPYC-Rome-v4,-pku")
    name: str                      # base model name, or "host"
    version: int | None
    features: frozenset[str]       # requested XSAVE-relevant features (host: empty, see passthrough)
    vendor: str | None
    options: tuple[tuple[str, bool], ...] = ()
    passthrough: bool = False
    unverified: str | None = None

    @property
    def label(self) -> str:
        if self.passthrough:
            return self.spec
        base = f"{self.name}-v{self.version}"
        return base + "".join(f",{'+' if on else '-'}{f}" for f, on in self.options)

    def has(self, feature: str) -> bool:
        return feature in self.features

    @property
    def components(self) -> int:
        """x86_cpu_enable_xsave_components before filtering: XCR0 | XSS bits requested."""
        if self.passthrough:
            return xf.KNOWN_MASK
        if "xsave" not in self.features:
            return 0
        mask = xf.FPSSE
        for bits, needs in SAVE_AREAS:
            if any(f in self.features for f in needs):
                mask |= bits
        if "xsaves" not in self.features:
            mask &= ~xf.SUPERVISOR_MASK
        if "mpx" in self.features and "apxf" in self.features:
            # APX reuses MPX's area: QEMU marks both unavailable ("Add APX EGPRs into xsave
            # area", qemu-devel <20251227094759.35658-21-pbonzini@redhat.com>).
            mask &= ~(xf.MPX | xf.APX)
        return mask

    @property
    def xcr0(self) -> int:
        return self.components & ~xf.SUPERVISOR_MASK

    @property
    def xss(self) -> int:
        return self.components & xf.SUPERVISOR_MASK

    def to_json(self) -> dict[str, Any]:
        return {"spec": self.spec, "model": self.name, "version": self.version,
                "label": self.label, "passthrough": self.passthrough,
                "features": sorted(self.features), "xcr0": f"{self.xcr0:#x}",
                "xss": f"{self.xss:#x}", "unverified": self.unverified}


def _data() -> dict[str, Any]:
    text = resources.files("kvmfpu.qemu").joinpath("data", "cpu_models.json").read_text()
    data: dict[str, Any] = json.loads(text)
    return data


@cache
def catalogue() -> tuple[ModelDef, ...]:
    out = []
    for m in _data()["models"]:
        versions = tuple(ModelVersion(v["version"], v.get("alias"), dict(v.get("props", {})),
                                      v.get("note"), v.get("unverified"))
                         for v in m["versions"])
        out.append(ModelDef(m["name"], m["vendor"], frozenset(m["features"]), versions,
                            m.get("family"), m.get("model")))
    return tuple(out)


@cache
def sources() -> tuple[dict[str, str], ...]:
    return tuple(_data()["sources"])


@cache
def _index() -> dict[str, tuple[ModelDef, int | None]]:
    """Every accepted name (lower case) -> (model, version or None for 'unversioned')."""
    idx: dict[str, tuple[ModelDef, int | None]] = {}
    for m in catalogue():
        idx[m.name.lower()] = (m, None)
        for v in m.versions:
            idx[f"{m.name}-v{v.version}".lower()] = (m, v.version)
            if v.alias:
                idx[v.alias.lower()] = (m, v.version)
    return idx


def names(versions: bool = False) -> list[str]:
    """Model names in QEMU's table order (with every -vN and alias when ``versions``)."""
    out = []
    for m in catalogue():
        out.append(m.name)
        if versions:
            out += [f"{m.name}-v{v.version}" for v in m.versions]
            out += [v.alias for v in m.versions if v.alias]
    return out


def features_of(m: ModelDef, version: int) -> frozenset[str]:
    """x86_cpu_apply_version_props: v1's features with each version's props up to
    ``version`` applied in order."""
    feats = set(m.features)
    for v in sorted(m.versions, key=lambda v: v.version):
        if v.version > version:
            break
        for prop, value in v.props.items():
            if prop in FEATURES:
                (feats.add if value == "on" else feats.discard)(prop)
    return frozenset(feats)


_OPTION = re.compile(r"^([+-]?)([a-z0-9_-]+)(?:=(on|off|true|false))?$")


def _parse_options(parts: list[str], spec: str) -> tuple[tuple[str, bool], ...]:
    opts: list[tuple[str, bool]] = []
    for part in parts:
        m = _OPTION.match(part.strip().lower())
        if not m or (m.group(1) and m.group(3)):
            raise UnknownModel(f"{spec!r}: cannot read option {part!r} (use +feature, "
                               "-feature or feature=on|off)")
        sign, name, value = m.groups()
        name = SYNONYMS.get(name, name)
        if name in ("enforce", "check", "migratable"):
            continue       # QEMU options that do not change XSAVE features (enforce: see check)
        if name not in FEATURES:
            raise UnknownModel(f"{spec!r}: {name!r} is not an XSAVE-relevant feature kvmfpu "
                               f"models ({', '.join(FEATURES)})")
        on = sign != "-" if value is None else value in ("on", "true")
        opts.append((name, on))
    return tuple(opts)


def resolve(spec: str) -> GuestModel:
    """A ``-cpu`` value: ``Model``, ``Model-vN``, an alias, or ``host``/``max``, with
    optional ``,+feature`` / ``,-feature`` / ``,feature=on|off`` options."""
    text = spec.strip()
    if not text:
        raise UnknownModel("empty CPU model")
    head, *rest = text.split(",")
    options = _parse_options(rest, spec)
    if head.lower() in ("host", "max"):
        return GuestModel(spec=head.lower() + "".join("," + r.strip() for r in rest),
                          name=head.lower(), version=None, features=frozenset(), vendor=None,
                          options=options, passthrough=True)
    found = _index().get(head.lower())
    if found is None:
        close = difflib.get_close_matches(head, names(versions=True), n=3, cutoff=0.6)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise UnknownModel(f"unknown QEMU CPU model {head!r}{hint} (`kvmfpu models` lists them)")
    model, version = found
    version = 1 if version is None else version      # default_cpu_version
    feats = set(features_of(model, version))
    for name, on in options:
        (feats.add if on else feats.discard)(name)
    vdef = next(v for v in model.versions if v.version == version)
    g = GuestModel(spec="", name=model.name, version=version, features=frozenset(feats),
                   vendor=model.vendor, options=options, unverified=vdef.unverified)
    return replace(g, spec=g.label)


def versions_of(name: str) -> list[GuestModel]:
    """Every version of one model, v1 first."""
    g = resolve(name)
    m = next(m for m in catalogue() if m.name == g.name)
    return [resolve(f"{m.name}-v{v.version}") for v in sorted(m.versions, key=lambda v: v.version)]


def describe_feature(name: str) -> str:
    b = FEATURES[name]
    sub = f",ecx={b.subleaf:x}h" if b.leaf in (7, 0xD) else ""
    return f"{name} (CPUID[eax={b.leaf:x}h{sub}].{REG_NAMES[b.reg]}[{b.bit}])"
