"""QEMU's named x86 CPU models, whole, and ``-cpu`` strings.

Data: ``data/cpu_models.json`` (builtin_x86_defs of qemu/qemu target/i386/cpu.c; releases and
commits named in the file) and :mod:`kvmfpu.qemu.features` (feature names, aliases,
feature_dependencies[], the non-feature properties).

A resolved model's features are what QEMU's feature words hold before host filtering, built
in QEMU's order:

1. x86_cpu_load_model: v1's features, plus ``hypervisor`` (always set for named models), then
   every version's props up to the one asked for (x86_cpu_apply_version_props); an
   unversioned name is v1 (default_cpu_version), an alias names one version;
2. the accelerator's defaults: kvm_cpu_instance_init applies kvm_default_props (kvmclock and the
   other PV features, x2apic on; acpi, monitor, svm off), tcg_cpu_instance_init tcg_default_props
   (vme off);
3. ``key=value`` options as global properties, after feat2prop ('_' -> '-'), last one wins;
4. x86_cpu_expand_features: every ``+f``, then every ``-f`` (kept verbatim, no feat2prop), then
   feature_dependencies[] in one pass; FEAT_KVM cleared without KVM or with ``kvm=off``.

Which XSAVE components a model enables is x86_ext_save_areas[] (cpu.c): a component is on
when any of its features is on; supervisor components (CET_U/CET_S, ARCH_LBR) only with
XSAVES (x86_cpu_enable_xsave_components).
"""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass, field, replace
from functools import cache
from importlib import resources
from typing import Any, Final

from kvmfpu.arch import xfeatures as xf
from kvmfpu.cpus.features import FeatureBit
from kvmfpu.qemu import features as qf

#: Every CPUID feature property (canonical name) -> its CPUID bit; MSR-word features are in
#: :data:`kvmfpu.qemu.features.FEATURES` only.
FEATURES: Final[dict[str, FeatureBit]] = {n: b for n in qf.FEATURES if (b := qf.cpuid_bit(n)) is not None}
#: Linux/kvmfpu spellings users type; QEMU itself rejects them (kept as a kvmfpu convenience,
#: with a note on the model).
SYNONYMS: Final = {
    "shstk": "cet-ss",
    "ibt": "cet-ibt",
    "apx": "apxf",
    "apx_f": "apxf",
    "ospke": "pku",
    "amx_tile": "amx-tile",
    "arch_lbr": "arch-lbr",
}
#: The releases kvmfpu tells a model version's presence for.
RELEASES: Final = ("6.2", "7.0", "7.2", "8.0", "8.2", "9.0", "9.2", "10.0", "10.1", "10.2", "11.0")

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
#: kvm_default_props[] (target/i386/kvm/kvm-cpu.c, v7.2.0 and v10.2.2 alike), with the
#: in-kernel irqchip QEMU uses by default; tcg_default_props[] (tcg/tcg-cpu.c).
ACCEL_DEFAULTS: Final[dict[str, tuple[tuple[str, bool], ...]]] = {
    "kvm": (
        ("kvmclock", True),
        ("kvm-nopiodelay", True),
        ("kvm-asyncpf", True),
        ("kvm-steal-time", True),
        ("kvm-pv-eoi", True),
        ("kvmclock-stable-bit", True),
        ("x2apic", True),
        ("kvm-msi-ext-dest-id", False),
        ("acpi", False),
        ("monitor", False),
        ("svm", False),
    ),
    "tcg": (("vme", False),),
}
_BOOL: Final = {
    "on": True,
    "yes": True,
    "true": True,
    "y": True,
    "off": False,
    "no": False,
    "false": False,
    "n": False,
}  # qapi_bool_parse
#: Why a non-feature property leaves the feature words alone, for GuestModel.notes.
_PROP_NOTES: Final = {
    "pmu": "pmu: leaf 0xA (and PDCM) follow it",
    "kvm": "kvm=off hides the KVM PV leaves (FEAT_KVM cleared)",
    "phys-bits": "leaf 0x80000008 EAX only",
    "host-phys-bits": "leaf 0x80000008 EAX only",
    "l3-cache": "cache leaves 2/4/0x8000001D only",
    "tsc-frequency": "TSC frequency: invtsc "
    "becomes migratable; the destination must run the same frequency (not checked)",
    "level": "caps the basic leaves the guest sees",
    "xlevel": "caps the extended leaves",
    "model-id": "brand string only",
    "vendor": "vendor string (leaf 0)",
    "family": "leaf 1 EAX only",
    "model": "leaf 1 EAX only",
    "stepping": "leaf 1 EAX only",
}


class UnknownModel(LookupError):
    """Not a QEMU CPU model this data knows, or a malformed ``-cpu`` string."""


@dataclass(frozen=True)
class ModelVersion:
    version: int
    alias: str | None = None
    props: tuple[tuple[str, str], ...] = ()
    note: str | None = None
    unverified: str | None = None
    since: str | None = None  # first of RELEASES with this version
    since_unknown_before: bool = False  # present at `since`, earlier releases not known


@dataclass(frozen=True)
class ModelDef:
    name: str
    vendor: str
    features: frozenset[str]  # v1, canonical names
    versions: tuple[ModelVersion, ...]
    family: int | None = None
    model: int | None = None
    stepping: int | None = None
    level: int | None = None
    xlevel: int | None = None
    model_id: str | None = None
    unnamed_bits: tuple[tuple[str, int], ...] = ()
    partial: str | None = None
    unmodelled: tuple[str, ...] = ()  # QEMU feature names of the model this data has no word for

    @property
    def latest(self) -> int:
        return max(v.version for v in self.versions)

    def version_def(self, version: int) -> ModelVersion:
        return next(v for v in self.versions if v.version == version)


def components_of(features: frozenset[str] | set[str]) -> int:
    """x86_cpu_enable_xsave_components: the XCR0 | XSS components a feature set enables."""
    if "xsave" not in features:
        return 0
    mask = xf.FPSSE
    for bits, needs in SAVE_AREAS:
        if any(f in features for f in needs):
            mask |= bits
    if "xsaves" not in features:
        mask &= ~xf.SUPERVISOR_MASK
    if "mpx" in features and "apxf" in features:
        # APX reuses MPX's area: QEMU marks both unavailable ("Add APX EGPRs into xsave
        # area", qemu-devel <20251227094759.35658-21-pbonzini@redhat.com>).
        mask &= ~(xf.MPX | xf.APX)
    return mask


@dataclass(frozen=True)
class GuestModel:
    """A resolved ``-cpu`` value: a model version with its options, or host passthrough."""

    spec: str  # what the user wrote, normalised (e.g. "EPYC-Rome-v4,-pku")
    name: str  # base model name, or "host"
    version: int | None
    features: frozenset[str]  # CPUID-word features, canonical names (host/max: empty)
    vendor: str | None
    options: tuple[tuple[str, bool], ...] = ()
    passthrough: bool = False
    unverified: str | None = None
    enforce: bool = False  # "enforce": QEMU refuses to start without every feature
    check: bool = True  # "check" (default on): QEMU warns about filtered features
    notes: tuple[str, ...] = ()
    family: int | None = None
    model: int | None = None
    stepping: int | None = None
    qemu_since: str | None = None  # first QEMU release (of RELEASES) with this model version
    qemu: str | None = None  # the release it was resolved at (None: the newest data)
    msr_features: frozenset[str] = frozenset()  # MSR-word features (ARCH_CAPABILITIES, VMX...)

    @property
    def label(self) -> str:
        if self.passthrough:
            return self.spec
        base = f"{self.name}-v{self.version}"
        return (
            base
            + "".join(f",{'+' if on else '-'}{f}" for f, on in self.options)
            + (",enforce" if self.enforce else "")
        )

    def has(self, feature: str) -> bool:
        return feature in self.features

    @property
    def components(self) -> int:
        """x86_cpu_enable_xsave_components before filtering: XCR0 | XSS bits requested."""
        return xf.KNOWN_MASK if self.passthrough else components_of(self.features)

    @property
    def xcr0(self) -> int:
        return self.components & ~xf.SUPERVISOR_MASK

    @property
    def xss(self) -> int:
        return self.components & xf.SUPERVISOR_MASK

    def to_json(self) -> dict[str, Any]:
        return {
            "spec": self.spec,
            "model": self.name,
            "version": self.version,
            "label": self.label,
            "passthrough": self.passthrough,
            "features": sorted(self.features),
            "xcr0": f"{self.xcr0:#x}",
            "xss": f"{self.xss:#x}",
            "unverified": self.unverified,
            "enforce": self.enforce,
            "check": self.check,
            "notes": list(self.notes),
            "family": self.family,
            "model_number": self.model,
            "stepping": self.stepping,
            "qemu_since": self.qemu_since,
            "qemu": self.qemu,
        }


def _data() -> dict[str, Any]:
    text = resources.files("kvmfpu.qemu").joinpath("data", "cpu_models.json").read_text()
    data: dict[str, Any] = json.loads(text)
    return data


@cache
def catalogue() -> tuple[ModelDef, ...]:
    out = []
    for m in _data()["models"]:
        versions = tuple(
            ModelVersion(
                v["version"],
                v.get("alias"),
                tuple((k, str(x)) for k, x in v.get("props", [])),
                v.get("note"),
                v.get("unverified") or m.get("partial"),
                v.get("since"),
                bool(v.get("since_unknown_before")),
            )
            for v in m["versions"]
        )
        out.append(
            ModelDef(
                m["name"],
                m["vendor"],
                frozenset(m["features"]),
                versions,
                m.get("family"),
                m.get("model"),
                m.get("stepping"),
                m.get("level"),
                m.get("xlevel"),
                m.get("model_id"),
                tuple((w, int(b, 16)) for w, b in m.get("unnamed_bits", {}).items()),
                m.get("partial"),
                tuple(m.get("features_unmodelled", ())),
            )
        )
    return tuple(out)


@cache
def sources() -> tuple[dict[str, str], ...]:
    return tuple(_data()["sources"])


@cache
def removed_models() -> dict[str, dict[str, Any]]:
    """Models older releases had that the data does not model (e.g. Icelake-Client)."""
    out = {}
    for r in _data()["removed_models"]:
        for n in (r["name"], *r["aliases"]):
            out[n.lower()] = r
    return out


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


def _rel(r: str) -> tuple[int, ...]:
    return tuple(int(x) for x in r.split("."))


def in_release(m: ModelDef, version: int, release: str) -> bool | None:
    """Whether QEMU ``release`` has ``m``-v``version``; None where the data cannot tell."""
    v = m.version_def(version)
    if v.since is None:
        return None
    if _rel(release) >= _rel(v.since):
        return True
    return None if v.since_unknown_before else False


def features_of(m: ModelDef, version: int) -> frozenset[str]:
    """x86_cpu_apply_version_props: v1's features with each version's props up to
    ``version`` applied in order (no accelerator defaults, no hypervisor bit)."""
    feats = set(m.features)
    for v in sorted(m.versions, key=lambda v: v.version):
        if v.version > version:
            break
        for prop, value in v.props:
            if qf.registered(prop):
                (feats.add if _BOOL[value] else feats.discard)(qf.canonical(prop))
    return frozenset(feats)


def non_feature_props(m: ModelDef, version: int) -> dict[str, str]:
    """The version props up to ``version`` that are not features (model-id, stepping...)."""
    out: dict[str, str] = {}
    for v in sorted(m.versions, key=lambda v: v.version):
        if v.version > version:
            break
        out.update((p, x) for p, x in v.props if not qf.registered(p))
    return out


def _feature_hint(name: str) -> str:
    known = [*qf.FEATURES, *qf.ALIASES, *qf.PROPERTIES]
    close = difflib.get_close_matches(name.lower(), known, n=3, cutoff=0.75)
    return f"; did you mean {', '.join(close)}?" if close else ""


def describe_feature(name: str) -> str:
    """ "avx (CPUID[eax=1h].ECX[28])"; MSR-word features name their MSR."""
    c = qf.canonical(name)
    w, bit = qf.FEATURES[c]
    if w.leaf is None:
        return f"{c} (MSR {w.msr:#x} {w.word.removeprefix('FEAT_')} bit {bit})"
    sub = f",ecx={w.subleaf:x}h" if w.leaf in (7, 0xD, 0x14, 0x24) or w.subleaf else ""
    return f"{c} (CPUID[eax={w.leaf:x}h{sub}].{REG_NAMES[w.reg]}[{bit}])"


@dataclass
class _Options:
    """A parsed ``-cpu`` option list (x86_cpu_parse_featurestr)."""

    globals_: list[tuple[str, bool]] = field(default_factory=list)  # key=value features
    plus: list[str] = field(default_factory=list)
    minus: list[str] = field(default_factory=list)
    props: dict[str, str] = field(default_factory=dict)  # non-feature properties
    notes: list[str] = field(default_factory=list)


def _feature_name(name: str, spec: str, notes: list[str], qemu: str | None) -> str | None:
    """Canonical name of a feature spelling, or None when it is no feature."""
    if qf.registered(name):
        canon = qf.canonical(name)
    elif name.lower() in SYNONYMS:
        canon = SYNONYMS[name.lower()]
        notes.append(f"{name}: Linux's name; QEMU calls it {canon} and rejects {name!r}")
    else:
        return None
    if qemu is not None:
        first = qf.first_seen(canon)
        if _rel(qemu) < _rel(first):
            prev = {"10.0": "7.2", "10.2": "10.0", "11.0": "10.2"}.get(first, "0")
            if _rel(qemu) <= _rel(prev):
                raise UnknownModel(
                    f"{spec!r}: QEMU {qemu} has no CPU feature {canon!r} "
                    f"(feature_word_info[] names it from {first})"
                )
            notes.append(
                f"{canon}: UNVERIFIED whether QEMU {qemu} knows it (named by {first}, not by {prev})"
            )
    return canon


def _parse_options(parts: list[str], spec: str, named: bool, qemu: str | None) -> _Options:
    o = _Options()
    for raw in parts:
        part = raw.strip()
        if not part:
            continue  # strtok skips empty fields
        if part[0] in "+-":
            # Compatibility syntax: kept verbatim (no feat2prop), set with
            # object_property_set_bool in x86_cpu_expand_features.
            name = part[1:]
            canon = _feature_name(name, spec, o.notes, qemu)
            if canon is not None:
                (o.plus if part[0] == "+" else o.minus).append(canon)
                continue
            if qf.PROPERTIES.get(name) == "bool":
                _set_prop(o, name, "on" if part[0] == "+" else "off", spec, named)
                continue
            raise UnknownModel(
                f"{spec!r}: {name!r} is not a QEMU CPU property (+/- names are taken verbatim, "
                f"no '_' -> '-'){_feature_hint(name)}"
            )
        key, eq, value = part.partition("=")
        value = value if eq else "on"
        prop = key.replace("_", "-")  # feat2prop
        if prop == "tsc-freq":
            prop, value = "tsc-frequency", str(_metric(value, spec))
        canon = _feature_name(prop, spec, o.notes, qemu) or _feature_name(key, spec, o.notes, qemu)
        if canon is not None:
            if value.lower() not in _BOOL:
                raise UnknownModel(
                    f"{spec!r}: {key}={value}: QEMU's bool properties take on|off (also yes|no|true|false)"
                )
            if canon in o.plus or canon in o.minus:
                o.notes.append(
                    f"{canon}: QEMU warns of an ambiguous CPU model string "
                    "(+/- and =value mixed); the +/- form is applied last"
                )
            o.globals_.append((canon, _BOOL[value.lower()]))
            continue
        if prop in qf.PROPERTIES:
            _set_prop(o, prop, value, spec, named)
            continue
        raise UnknownModel(f"{spec!r}: {key!r} is not a QEMU CPU property{_feature_hint(prop)}")
    return o


def _metric(value: str, spec: str) -> int:
    """qemu_strtosz_metric for tsc-freq: 2G, 2.5G, 2000M, 2000000000."""
    scale = {"k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12}
    v = value.strip().lower()
    mult = scale.get(v[-1:], 1)
    try:
        return int(float(v[:-1] if mult != 1 else v) * mult)
    except ValueError:
        raise UnknownModel(f"{spec!r}: tsc-freq={value}: bad numerical value") from None


def _set_prop(o: _Options, name: str, value: str, spec: str, named: bool) -> None:
    if named and name in qf.HOST_MAX_ONLY:
        raise UnknownModel(
            f"{spec!r}: {name} is a property of host and max only "
            "(max_x86_cpu_properties); QEMU says the property is not found"
        )
    kind = qf.PROPERTIES[name]
    if kind == "bool" and value.lower() not in _BOOL:
        raise UnknownModel(f"{spec!r}: {name}={value}: expects on or off")
    if kind == "on-off-auto" and value.lower() not in ("on", "off", "auto"):
        raise UnknownModel(f"{spec!r}: {name}={value}: expects on, off or auto")
    if kind == "int":
        try:
            int(value, 0)
        except ValueError:
            raise UnknownModel(f"{spec!r}: {name}={value}: expects a number") from None
    o.props[name] = value
    if name not in ("check", "enforce"):
        why = _PROP_NOTES.get(name) or (
            "Hyper-V enlightenment (leaves 0x40000000+, not modelled)"
            if name.startswith("hv-")
            else "no CPUID feature word changes"
        )
        o.notes.append(f"{name}={value}: {why}")


def _on(o: _Options, name: str, default: bool) -> bool:
    return _BOOL[o.props[name].lower()] if name in o.props else default


def _passthrough(head: str, rest: list[str], spec: str, qemu: str | None) -> GuestModel:
    o = _parse_options(rest, spec, named=False, qemu=qemu)
    options = tuple(o.globals_) + tuple((f, True) for f in o.plus) + tuple((f, False) for f in o.minus)
    return GuestModel(
        spec=head.lower() + "".join("," + r.strip() for r in rest if r.strip()),
        name=head.lower(),
        version=None,
        features=frozenset(),
        vendor=None,
        options=options,
        passthrough=True,
        enforce=_on(o, "enforce", False),
        check=_on(o, "check", True),
        notes=tuple(o.notes),
        qemu=qemu,
    )


def resolve(spec: str, *, qemu: str | None = None, accel: str = "kvm") -> GuestModel:
    """A ``-cpu`` value: ``Model``, ``Model-vN``, an alias, or ``host``/``max``, with any
    option QEMU takes (``,+f``, ``,-f``, ``,f=on|off``, ``check``, ``enforce``, ``level=``...).

    ``qemu``: resolve as that QEMU release would (a model version or feature it lacks is an
    error; one the data cannot place is noted UNVERIFIED). ``accel``: "kvm" (default) or "tcg",
    whose instance-init defaults differ."""
    if accel not in ACCEL_DEFAULTS:
        raise UnknownModel(f"accel {accel!r}: kvmfpu models kvm and tcg")
    if qemu is not None and qemu not in RELEASES:
        raise UnknownModel(f"QEMU {qemu!r}: kvmfpu knows the models of {', '.join(RELEASES)}")
    text = spec.strip()
    if not text:
        raise UnknownModel("empty CPU model")
    head, *rest = text.split(",")
    head = head.strip()
    if head.lower() in ("host", "max"):
        return _passthrough(head, rest, spec, qemu)
    found = _index().get(head.lower())
    if found is None:
        gone = removed_models().get(head.lower())
        if gone is not None:
            raise UnknownModel(f"{head!r}: {gone['note']} (QEMU {', '.join(gone['present_in'])} had it)")
        close = difflib.get_close_matches(head, names(versions=True), n=3, cutoff=0.6)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise UnknownModel(f"unknown QEMU CPU model {head!r}{hint} (`kvmfpu models` lists them)")
    model, version = found
    version = 1 if version is None else version  # default_cpu_version
    vdef = model.version_def(version)
    notes: list[str] = []
    if qemu is not None:
        present = in_release(model, version, qemu)
        if present is False:
            raise UnknownModel(f"QEMU {qemu} has no {model.name}-v{version} (first in QEMU {vdef.since})")
        if present is None:
            notes.append(
                f"{model.name}-v{version}: UNVERIFIED whether QEMU {qemu} has it (known from {vdef.since})"
            )
    o = _parse_options(rest, spec, named=True, qemu=qemu)
    feats = set(features_of(model, version)) | {"hypervisor"}  # x86_cpu_load_model
    for name, on in ACCEL_DEFAULTS[accel]:
        (feats.add if on else feats.discard)(name)
    for name, on in o.globals_:
        (feats.add if on else feats.discard)(name)
    feats.update(o.plus)
    feats.difference_update(o.minus)
    asked = {f for f, on in o.globals_ if on} | set(o.plus)
    dropped = qf.apply_dependencies(feats, qemu)
    for f in sorted(dropped & asked):
        notes.append(
            f"{f}: dropped, it needs {', '.join(qf.needs()[f])} (QEMU warns: depends "
            "on other features that were not requested)"
        )
    if accel != "kvm" or not _on(o, "kvm", True):
        feats.difference_update(n for n, (w, _) in qf.FEATURES.items() if w.word == "FEAT_KVM")
    if "pdcm" in feats and not _on(o, "pmu", False) and (qemu is None or _rel(qemu) >= (10, 2)):
        feats.discard("pdcm")  # x86_cpu_expand_features (v10.2.2)
        notes.append("pdcm: cleared without pmu=on")
    vprops = non_feature_props(model, version) | o.props
    options = tuple(o.globals_) + tuple((f, True) for f in o.plus) + tuple((f, False) for f in o.minus)
    msr = frozenset(f for f in feats if f not in FEATURES)
    g = GuestModel(
        spec="",
        name=model.name,
        version=version,
        features=frozenset(feats) - msr,
        msr_features=msr,
        vendor=o.props.get("vendor", model.vendor),
        options=options,
        unverified=vdef.unverified,
        enforce=_on(o, "enforce", False),
        check=_on(o, "check", True),
        notes=tuple(notes + o.notes),
        family=_int(vprops.get("family"), model.family),
        model=_int(vprops.get("model"), model.model),
        stepping=_int(vprops.get("stepping"), model.stepping),
        qemu_since=vdef.since,
        qemu=qemu,
    )
    return replace(g, spec=g.label)


def _int(value: str | None, default: int | None) -> int | None:
    return default if value is None else int(value, 0)


def versions_of(name: str) -> list[GuestModel]:
    """Every version of one model, v1 first."""
    g = resolve(name)
    m = next(m for m in catalogue() if m.name == g.name)
    return [resolve(f"{m.name}-v{v.version}") for v in sorted(m.versions, key=lambda v: v.version)]
