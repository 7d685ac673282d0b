"""A libvirt domain's ``<cpu>`` as the QEMU ``-cpu`` value libvirt 9.0 generates, resolved.

What libvirt does (libvirt 9.0, checked against the real libvirt 9.0.0-4+deb12u2 here with
``virsh domxml-to-native qemu-argv``; tests/qemu/test_libvirt_cpu.py):

- ``mode='custom'``: ``-cpu MODEL`` then each ``<feature>`` in document order as
  ``NAME=on`` (policy force, require) or ``NAME=off`` (disable, forbid); ``optional`` is
  settled against the host at start (on when the host has it, else off). Names go through
  libvirt's table virQEMUCapsCPUFeaturesX86 (src/qemu/qemu_capabilities.c: cmp_legacy ->
  cmp-legacy, pclmuldq -> pclmulqdq, ...); others pass unchanged. cmt, mbm_total,
  mbm_local, osxsave and ospke are never passed (virQEMUCapsCPUFilterFeatures: QEMU never
  had them or dropped them). ``<model vendor_id=>`` adds ``vendor=`` first; a model's
  cpu_map features marked ``removed='yes'`` (EPYC: monitor) are turned off after the
  features unless the domain names them. Feature names are the cpu_map's own: libvirt
  refuses QEMU spellings (``sse4_2``) and names it lacks (``pconfig`` it passes, though
  QEMU 7.2 has no such property: QEMU then refuses to start).
- ``match='minimum'``: libvirt starts the host-model CPU (the model is only a floor).
- ``host-passthrough``: ``-cpu host``; ``maximum``: ``-cpu max``; with ``migratable=`` and
  the features as above.
- ``host-model``: at start libvirt replaces it with its host CPU model (virCPUUpdate with
  virQEMUCapsGetHostModel): the cpu_map model closest to QEMU's migratable expansion of
  ``host`` plus the host's extra features (require) and the model's missing ones and its
  QEMU blockers (disable), x86Decode in src/cpu/cpu_x86.c; see :func:`decode`, which
  gives exactly libvirt 9.0's host-model line for the TCG host here. For a kvmfpu host it
  runs on the host description; what that leaves out is said in the notes.
- ``check``: none (no check), partial (libvirt compares the host CPU with the definition
  before starting QEMU and refuses a missing required feature), full (also after start,
  the vCPU QEMU created); libvirt's defaults (qemuDomainDefCPUPostParse): none for
  host-passthrough and maximum, partial otherwise. Both refusals stop the guest the way
  QEMU's ``enforce`` does, so partial/full resolve with ``enforce`` (noted).
- Domain settings appended in libvirt's order: ``<timer name='kvmclock' present=>``,
  ``<apic eoi=>`` (kvm-pv-eoi), ``<pvspinlock>`` (kvm-pv-unhalt), ``<hyperv>`` (hv-*, not
  modelled), ``<kvm>`` (hidden -> kvm=off, hint-dedicated, poll-control, pv-ipi),
  ``<pmu>``, ``<timer name='tsc' frequency=>`` (tsc-frequency).

Bad input raises :class:`kvmfpu.qemu.models.UnknownModel` (this layer's input error; the
guest resolver, kvmfpu.migrate.guest_spec, turns it into InputError).

Data: ``data/libvirt_cpu_map.json`` (libvirt's cpu_map, tools/import_libvirt_cpu_map.py).
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, replace
from functools import cache
from importlib import resources
from typing import Any, Final

from kvmfpu.qemu import features as qf
from kvmfpu.qemu import models
from kvmfpu.qemu.models import GuestModel, UnknownModel

#: Largest domain XML read (a domain with hundreds of devices is ~100 KiB).
MAX_XML: Final = 1 << 20
#: libvirt's cpu mode names and QEMU's model for the two that are QEMU models.
MODES: Final = ("custom", "host-model", "host-passthrough", "maximum")
MODE_QEMU: Final = {"host-passthrough": "host", "maximum": "max"}
POLICIES: Final = ("force", "require", "optional", "disable", "forbid")
CHECKS: Final = ("none", "partial", "full")
#: virQEMUCapsCPUFeaturesX86 (qemu_capabilities.c): libvirt name -> QEMU name.
RENAMES: Final = {
    "cmp_legacy": "cmp-legacy",
    "ds_cpl": "ds-cpl",
    "fxsr_opt": "fxsr-opt",
    "kvm_pv_eoi": "kvm-pv-eoi",
    "kvm_pv_unhalt": "kvm-pv-unhalt",
    "lahf_lm": "lahf-lm",
    "nodeid_msr": "nodeid-msr",
    "pclmuldq": "pclmulqdq",
    "perfctr_core": "perfctr-core",
    "perfctr_nb": "perfctr-nb",
    "tsc_adjust": "tsc-adjust",
}
#: virQEMUCapsCPUFilterFeatures: never passed to QEMU.
NEVER_PASSED: Final = frozenset({"cmt", "mbm_total", "mbm_local", "osxsave", "ospke"})
#: QEMU's default CPU type for x86_64 pc and q35 machines, which libvirt writes out.
DEFAULT_MODEL: Final = "qemu64"


@dataclass(frozen=True)
class Feature:
    name: str
    policy: str


@dataclass(frozen=True)
class DomainCpu:
    """The parts of a domain XML that decide the ``-cpu`` value."""

    mode: str
    check: str  # explicit, or libvirt's default for the mode
    check_given: bool
    match: str | None = None
    model: str | None = None
    fallback: str | None = None
    vendor_id: str | None = None
    migratable: str | None = None
    features: tuple[Feature, ...] = ()
    extra: tuple[tuple[str, str], ...] = ()  # (property, value) from <features>/<clock>
    virt_type: str | None = None
    default_model: bool = False  # no <model>: QEMU's default CPU type, written by libvirt
    unmodelled: tuple[str, ...] = ()  # <cpu> children kvmfpu does not turn into -cpu options


@cache
def cpu_map() -> dict[str, Any]:
    text = resources.files("kvmfpu.qemu").joinpath("data", "libvirt_cpu_map.json").read_text()
    data: dict[str, Any] = json.loads(text)
    return data


@cache
def feature_names() -> frozenset[str]:
    """The feature names a domain XML may use: the cpu_map's own. Its ``<alias
    source='qemu'>`` spellings are for reading QEMU's answers only (libvirt 9.0 here
    refuses ``sse4_2`` in a domain: "unknown CPU feature: sse4_2")."""
    return frozenset(f["name"] for f in cpu_map()["features"])


@cache
def qemu_aliases() -> dict[str, str]:
    """cpu_map ``<alias source='qemu'>``: QEMU spelling -> libvirt name."""
    return {a: f["name"] for f in cpu_map()["features"] for a in f.get("aliases", ())}


@cache
def cpu_models() -> dict[str, dict[str, Any]]:
    return {m["name"]: m for m in cpu_map()["models"]}


def source() -> dict[str, Any]:
    src: dict[str, Any] = cpu_map()["source"]
    return src


def qemu_name(name: str) -> str:
    """The name libvirt writes on the ``-cpu`` line for a cpu_map feature."""
    return RENAMES.get(name, name)


def _refuse_dtd(text: str, what: str) -> None:
    # xml.etree expands internal entities (billion laughs); a domain XML never has a DTD.
    if "<!DOCTYPE" in text or "<!ENTITY" in text:
        raise UnknownModel(f"{what}: XML with a DOCTYPE or ENTITY declaration is refused")


def parse(text: str, what: str = "domain XML") -> DomainCpu:
    """A whole ``<domain>`` or a bare ``<cpu>`` element -> :class:`DomainCpu`."""
    if len(text) > MAX_XML:
        raise UnknownModel(f"{what}: {len(text)} characters, more than the {MAX_XML} read")
    _refuse_dtd(text, what)
    try:
        root = ET.fromstring(text)
    except ET.ParseError as exc:
        raise UnknownModel(f"{what}: malformed XML: {exc}") from None
    cpu: ET.Element | None
    dom: ET.Element | None
    if root.tag == "cpu":
        cpu, dom = root, None
    elif root.tag == "domain":
        cpu, dom = root.find("cpu"), root
    else:
        raise UnknownModel(f"{what}: root element <{root.tag}>, expected <domain> or <cpu>")
    virt = None if dom is None else dom.get("type")
    mode = "custom" if cpu is None else cpu.get("mode", "custom")
    if mode not in MODES:
        raise UnknownModel(f"{what}: <cpu mode={mode!r}>: libvirt's modes are {', '.join(MODES)}")
    check = None if cpu is None else cpu.get("check")
    if check is not None and check not in CHECKS:
        raise UnknownModel(f"{what}: <cpu check={check!r}>: libvirt's values are {', '.join(CHECKS)}")
    model_el = None if cpu is None else cpu.find("model")
    model = None if model_el is None or not (model_el.text or "").strip() else model_el.text.strip()  # type: ignore[union-attr]
    default_model = mode == "custom" and model is None
    if default_model:
        # qemuDomainDefSetDefaultCPU: libvirt writes QEMU's default CPU type for the machine
        # (libvirt 9.0 here gives -cpu qemu64 for pc and q35 domains without <cpu>)
        model = DEFAULT_MODEL
    feats = []
    for f in () if cpu is None else cpu.findall("feature"):
        name, policy = f.get("name"), f.get("policy", "require")
        if not name:
            raise UnknownModel(f"{what}: <feature> without a name")
        if policy not in POLICIES:
            raise UnknownModel(
                f"{what}: feature {name}: policy {policy!r} is not one of {', '.join(POLICIES)}"
            )
        if name not in feature_names():
            alias = qemu_aliases().get(name)
            hint = f"; libvirt's name is {alias}" if alias else ""
            raise UnknownModel(f"{what}: unknown CPU feature: {name} (not in libvirt 9.0's cpu_map{hint})")
        feats.append(Feature(name, policy))
    # qemuDomainDefCPUPostParse: check defaults to none for host-passthrough and maximum and
    # for custom CPUs of TCG domains (not compared with the host), partial otherwise.
    tcg = mode == "custom" and virt not in (None, "kvm")
    default = "none" if mode in ("host-passthrough", "maximum") or tcg else "partial"
    return DomainCpu(
        mode=mode,
        check=check or default,
        check_given=check is not None,
        match=None if cpu is None else cpu.get("match"),
        model=model,
        fallback=None if model_el is None else model_el.get("fallback"),
        vendor_id=None if model_el is None else model_el.get("vendor_id"),
        migratable=None if cpu is None else cpu.get("migratable"),
        features=tuple(feats),
        extra=_domain_props(dom),
        unmodelled=tuple(t for t in ("cache", "maxphysaddr") if cpu is not None and cpu.find(t) is not None),
        virt_type=virt,
        default_model=default_model,
    )


#: <features><kvm> children -> the QEMU property libvirt sets (hidden inverts: kvm=off).
_KVM_FEATURES: Final = (
    ("hidden", "kvm"),
    ("hint-dedicated", "kvm-hint-dedicated"),
    ("poll-control", "kvm-poll-control"),
    ("pv-ipi", "kvm-pv-ipi"),
)


def _state(el: ET.Element | None, attr: str = "state") -> str | None:
    value = None if el is None else el.get(attr)
    return {"on": "on", "off": "off", "yes": "on", "no": "off"}.get(value or "")


def _domain_props(dom: ET.Element | None) -> tuple[tuple[str, str], ...]:
    """The domain-level settings libvirt appends to -cpu, in its order (libvirt 9.0 here:
    qemu64,kvm-pv-eoi=on,kvm-pv-unhalt=off,hv-relaxed=on,hv-vapic=on,kvm-hint-dedicated=on,
    ...; EPYC-Rome,kvm=off,pmu=off; libvirt's cpu-tsc-frequency test: tsc-frequency last)."""
    if dom is None:
        return ()
    out: list[tuple[str, str]] = []
    for t in dom.findall("clock/timer"):
        if t.get("name") == "kvmclock" and _state(t, "present"):
            out.append(("kvmclock", _state(t, "present") or ""))
    eoi = _state(dom.find("features/apic"), "eoi")
    if eoi:
        out.append(("kvm-pv-eoi", eoi))
    unhalt = _state(dom.find("features/pvspinlock"))
    if unhalt:
        out.append(("kvm-pv-unhalt", unhalt))
    hyperv = dom.find("features/hyperv")
    for h in () if hyperv is None else list(hyperv):
        if _state(h) != "on":
            continue
        if h.tag == "spinlocks":
            out.append(("hv-spinlocks", hex(int(h.get("retries", "0x1fff"), 0))))
        elif h.tag == "vendor_id":
            out.append(("hv-vendor-id", h.get("value", "")))
        else:
            out.append((f"hv-{h.tag.replace('_', '-')}", "on"))
    for tag, prop in _KVM_FEATURES:
        state = _state(dom.find(f"features/kvm/{tag}"))
        if state:
            out.append((prop, ("off" if state == "on" else "on") if tag == "hidden" else state))
    pmu = _state(dom.find("features/pmu"))
    if pmu:
        out.append(("pmu", pmu))
    for t in dom.findall("clock/timer"):
        if t.get("name") == "tsc" and t.get("frequency"):
            out.append(("tsc-frequency", t.get("frequency", "")))
    return tuple(out)


def host_model(host: Any, *, qemu: str | None = None) -> tuple[str, tuple[Feature, ...], list[str]]:
    """libvirt's host-model CPU for ``host`` (a kvmfpu.kvm.system.Kvm): (model, features
    with their policies, notes), :func:`decode` of QEMU's migratable expansion of ``host``."""
    from kvmfpu.qemu.host_cpu import host_expansion, supported_features

    on = {n for n, v in host_expansion(host).items() if v}
    supported = supported_features(host)
    name, req, dis = decode(on, host.host.vendor, _signature(host), qemu=qemu, supported=supported)
    notes = [
        f"host-model on {host.host.name}: libvirt's x86Decode of QEMU's migratable host expansion "
        f"gives {name} with {len(req)} added and {len(dis)} removed features (computed by kvmfpu "
        "from the host description; APPROXIMATED: feature-MSR bits (IA32_ARCH_CAPABILITIES...) "
        "are not in kvmfpu's host expansion, signature stepping ranges are not compared)"
    ]
    feats = tuple(Feature(f, "require") for f in req) + tuple(Feature(f, "disable") for f in dis)
    return name, feats, notes


def options(req: list[str], dis: list[str]) -> list[str]:
    """A decoded CPU's -cpu options: the required features, then the disabled ones."""
    opts = [f"{qemu_name(f)}=on" for f in req if f not in NEVER_PASSED]
    return opts + [f"{qemu_name(f)}=off" for f in dis if f not in NEVER_PASSED]


def decode(
    on: set[str],
    vendor: str | None,
    signature: tuple[int, int],
    *,
    qemu: str | None = None,
    accel: str = "kvm",
    supported: frozenset[str] | set[str] | None = None,
) -> tuple[str, list[str], list[str]]:
    """x86Decode (src/cpu/cpu_x86.c) of a QEMU feature set (canonical QEMU names): (model,
    features to require, features to disable), libvirt names in cpu_map order.

    Walk the cpu_map models from the last; skip those QEMU does not have, those with
    ``decode guest='off'`` and those of another vendor; a candidate lists what the CPU has
    beyond the model (require) and what the model has beyond the CPU, or QEMU's model
    beyond the CPU (its blockers, query-cpu-definitions unavailable-features), to disable;
    a model whose signature (family, model) matches beats one that does not, otherwise the
    one with fewer listed features wins (ties: the later model in the map). ``supported``:
    what the host can give a model (blockers are counted against it; default ``on``)."""
    have = {f["name"] for f in cpu_map()["features"] if _qemu_feature(f["name"]) in on}
    by_qemu = {q: f["name"] for f in cpu_map()["features"] if (q := _qemu_feature(f["name"]))}
    vendor_name = {"GenuineIntel": "Intel", "AuthenticAMD": "AMD", "HygonGenuine": "Hygon"}.get(vendor or "")
    fam, mod = signature
    best: tuple[str, list[str], list[str]] | None = None
    best_sig = False
    for m in reversed(cpu_map()["models"]):
        if not m["decode_guest"] or (m["vendor"] and vendor_name and m["vendor"] != vendor_name):
            continue
        try:
            qmodel = models.resolve(m["name"], qemu=qemu, accel=accel)
        except UnknownModel:
            continue  # not in QEMU's query-cpu-definitions
        feats = set(m["features"])
        blockers = {
            by_qemu[q] for q in qmodel.features - (on if supported is None else supported) if q in by_qemu
        }
        req = [f["name"] for f in cpu_map()["features"] if f["name"] in have - feats]
        dis = [f["name"] for f in cpu_map()["features"] if f["name"] in (feats | blockers) - have]
        sig = any(s["family"] == fam and s["model"] == mod for s in m["signatures"])
        if (
            best is None
            or (sig and not best_sig)
            or (sig == best_sig and len(best[1]) + len(best[2]) > len(req) + len(dis))
        ):
            best, best_sig = (m["name"], req, dis), sig
    if best is None:
        raise UnknownModel("host-model: no libvirt CPU model fits the host")
    return best


def _qemu_feature(name: str) -> str | None:
    try:
        return qf.canonical(qemu_name(name))
    except qf.UnknownFeature:
        return None


def _signature(host: Any) -> tuple[int, int]:
    eax = host.host.cpuid(1, 0)[0]
    family = (eax >> 8) & 0xF
    if family == 0xF:
        family += (eax >> 20) & 0xFF
    return family, ((eax >> 4) & 0xF) | ((eax >> 12) & 0xF0)


def _kvm(host: Any) -> Any:
    """``host`` is a Kvm or a function making one (built only when a mode needs it)."""
    return host() if callable(host) else host


def _feature_options(
    cpu: DomainCpu, host: Any, notes: list[str], offered: AbstractSet[str] | None
) -> list[str]:
    opts = []
    for f in cpu.features:
        if f.name in NEVER_PASSED:
            notes.append(
                f"{f.name} ({f.policy}): libvirt never passes it to QEMU (virQEMUCapsCPUFilterFeatures)"
            )
            continue
        if f.policy == "optional":
            if host is None and offered is None:
                notes.append(
                    f"{f.name} (optional): libvirt settles it against the host at start; "
                    "no host given, left out"
                )
                continue
            if offered is None:
                from kvmfpu.qemu.host_cpu import supported_features

                offered = supported_features(_kvm(host))
            on = _qemu_feature(f.name) in offered
            notes.append(
                f"{f.name} (optional): {'on' if on else 'off'}, the host {'has' if on else 'lacks'} it"
            )
            opts.append(f"{qemu_name(f.name)}={'on' if on else 'off'}")
            continue
        opts.append(f"{qemu_name(f.name)}={'on' if f.policy in ('force', 'require') else 'off'}")
    return opts


def qemu_cpu_arg(
    cpu: DomainCpu, *, host: Any = None, qemu: str | None = None, offered: AbstractSet[str] | None = None
) -> tuple[str, list[str]]:
    """The ``-cpu`` value libvirt generates for ``cpu`` and what kvmfpu notes about it.
    ``host`` (a kvmfpu.kvm.system.Kvm, or a function returning one) is needed for
    host-model and optional features only; ``offered`` (QEMU feature names) stands for
    the host's features when settling optional ones without a Kvm."""
    notes: list[str] = []
    if cpu.mode == "custom" and cpu.match == "minimum":
        # virCPUUpdate: match='minimum' starts the host-model CPU (libvirt 9.0 here gives
        # the same -cpu for <model>Penryn</model> minimum as for host-model)
        notes.append(f"match='minimum': libvirt starts the host-model CPU ({cpu.model} is only a minimum)")
        cpu = replace(cpu, mode="host-model")
    if cpu.mode == "host-model":
        if host is None:
            raise UnknownModel(
                "host-model: libvirt computes it on the host the guest starts on; kvmfpu needs that "
                "host (migrate --src, validate --host, models --host; matrix resolves it on each "
                "source)"
            )
        # virCPUUpdate: the domain becomes mode='custom' with the host CPU model; its own
        # features update the model's policies
        model, feats, more = host_model(_kvm(host), qemu=qemu)
        notes += more
        merged = {f.name: f for f in feats}
        merged.update((f.name, f) for f in cpu.features)
        cpu = replace(cpu, mode="custom", model=model, features=tuple(merged.values()))
    if cpu.mode in MODE_QEMU:
        head, opts = MODE_QEMU[cpu.mode], []
        if cpu.migratable in ("on", "off"):
            opts.append(f"migratable={cpu.migratable}")
    else:
        assert cpu.model is not None
        head, opts = cpu.model, []
        if cpu.default_model:
            notes.append(
                f"no <cpu><model>: libvirt writes QEMU's default CPU type ({cpu.model}); check "
                f"{cpu.check} by libvirt's defaults (UNVERIFIED for the default CPU)"
            )
        if cpu.model not in cpu_models():
            notes.append(f"{cpu.model}: not in libvirt 9.0's cpu_map; libvirt passes it if QEMU has it")
        if cpu.vendor_id:
            opts.append(f"vendor={cpu.vendor_id}")
    opts += _feature_options(cpu, host, notes, offered)
    if cpu.mode == "custom" and cpu.model is not None:
        # removed='yes' in the cpu_map: no longer the model's, turned off after the
        # features unless the domain names it (libvirt 9.0 here: EPYC,...,monitor=off)
        named = {f.name for f in cpu.features}
        gone = cpu_models().get(cpu.model, {}).get("removed", ())
        opts += [f"{qemu_name(f)}=off" for f in gone if f not in named]
    opts += [f"{k}={v}" for k, v in cpu.extra]
    for tag in cpu.unmodelled:
        notes.append(
            f"<cpu><{tag}>: its -cpu options (cache or physical-address-bits leaves only) are not "
            "modelled and left out of the line"
        )
    if cpu.check != "none":
        who = "before starting QEMU" if cpu.check == "partial" else "before and after starting QEMU"
        notes.append(
            f"check={cpu.check}{'' if cpu.check_given else ' (libvirt default)'}: libvirt refuses to "
            f"start the guest without a required feature ({who}); modelled as QEMU's enforce"
        )
    return ",".join([head, *opts]), notes


def from_domain_xml(
    text: str, *, host: Any = None, qemu: str | None = None, what: str = "domain XML"
) -> GuestModel:
    """A domain XML (or a ``<cpu>`` element) as the guest QEMU runs: the ``-cpu`` value
    libvirt generates, resolved by :func:`kvmfpu.qemu.models.resolve`."""
    cpu = parse(text, what)
    arg, notes = qemu_cpu_arg(cpu, host=host, qemu=qemu)
    enforce = cpu.check != "none" and not arg.startswith(("host", "max"))
    return _resolve(arg + (",enforce" if enforce else ""), arg, notes, qemu, what, cpu.virt_type)


def libvirt_mode(name: str, *, host: Any = None, qemu: str | None = None) -> GuestModel:
    """``host-passthrough``, ``host-model`` or ``maximum`` with libvirt's defaults."""
    if name not in MODES[1:]:
        raise UnknownModel(f"{name!r}: libvirt's CPU modes are {', '.join(MODES[1:])} (and custom models)")
    return from_domain_xml(f"<cpu mode='{name}'/>", host=host, qemu=qemu, what=name)


def _resolve(
    spec: str, arg: str, notes: list[str], qemu: str | None, what: str, virt: str | None
) -> GuestModel:
    if virt not in (None, "kvm"):
        notes.append(f"<domain type='{virt}'> (not KVM): kvmfpu models the guest under KVM")
    try:
        g = models.resolve(spec, qemu=qemu)
    except UnknownModel as exc:
        why = str(exc).strip('"').removeprefix(f"{spec!r}: ")
        raise UnknownModel(f"{what}: libvirt generates -cpu {arg}, which QEMU refuses: {why}") from None
    return replace(g, notes=(f"libvirt 9.0 generates -cpu {arg}", *notes, *g.notes))
