"""QEMU's ``query-cpu-model-expansion`` reply as a guest CPU.

Accepted shapes (QMP, qapi/machine-target.json CpuModelExpansionInfo): the whole reply
``{"return": {"model": {...}}}``, its ``return`` object ``{"model": {...}}``, or the
CpuModelInfo itself ``{"name": ..., "props": {...}}``. ``type`` static answers with model
``base`` and the features as properties; ``full`` with the model asked for and every
property. Either way the guest's features are the boolean properties QEMU registers that
are true (x86_cpu_expand_features has already run in the QEMU that answered: dependencies
and host filtering of *that* QEMU are in the answer); ``vendor``, ``family``, ``model``,
``stepping`` and ``enforce``/``check`` are taken when present. Properties kvmfpu's QEMU
data does not name (a newer QEMU) are listed in the notes, not guessed.

Bad input raises :class:`kvmfpu.qemu.models.UnknownModel` (this layer's input error).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Final

from kvmfpu.qemu import features as qf
from kvmfpu.qemu import models
from kvmfpu.qemu.models import FEATURES, GuestModel, UnknownModel

#: Largest reply read (a full expansion of ``max`` is ~30 KiB).
MAX_JSON: Final = 1 << 20


@dataclass(frozen=True)
class ExpandedGuest(GuestModel):
    """A guest whose features are a QEMU expansion's, verbatim: not a model version, so
    its label is the expansion's name and it is never re-resolved at another release.
    ``spec`` is a ``-cpu`` value kvmfpu resolves to the same features where one exists
    (advice re-runs start from it), else the label."""

    expansion: str = ""

    @property
    def label(self) -> str:
        return self.expansion or self.spec


def equivalent_spec(on: frozenset[str], name: str, vendor: str | None) -> str | None:
    """A ``Model-vN,+f,-f`` that models.resolve turns into exactly ``on``: the expansion's
    own model if it is one, else the model version of the same vendor needing the fewest
    options."""
    tried = [name] if name.lower() in {n.lower() for n in models.names(versions=True)} else []
    tried += [f"{m.name}-v{v.version}" for m in models.catalogue() for v in m.versions]
    best: tuple[tuple[int, int], str] | None = None
    for label in tried:
        base = models.resolve(label)
        have = base.features | base.msr_features
        opts = [f"+{f}" for f in sorted(on - have)] + [f"-{f}" for f in sorted(have - on)]
        spec = ",".join([base.label, *opts])
        try:
            g = models.resolve(spec)
        except UnknownModel:
            continue
        if g.features | g.msr_features != on:
            continue
        if label == name:
            return spec
        key = (int(vendor is not None and base.vendor != vendor), len(opts))
        if best is None or key < best[0]:
            best = (key, spec)
    return None if best is None else best[1]


def _model_info(doc: Any, what: str) -> dict[str, Any]:
    if isinstance(doc, dict) and "return" in doc:
        doc = doc["return"]
    if isinstance(doc, dict) and isinstance(doc.get("model"), dict):
        doc = doc["model"]
    if not isinstance(doc, dict) or not isinstance(doc.get("name"), str):
        raise UnknownModel(
            f"{what}: not a query-cpu-model-expansion reply (no model name; expected "
            '{"return": {"model": {"name": ..., "props": {...}}}})'
        )
    if not isinstance(doc.get("props", {}), dict):
        raise UnknownModel(f"{what}: model.props is not an object")
    return doc


def from_json(text: str, what: str = "query-cpu-model-expansion") -> ExpandedGuest:
    """A reply as text -> the guest it describes."""
    if len(text) > MAX_JSON:
        raise UnknownModel(f"{what}: {len(text)} characters, more than the {MAX_JSON} read")
    try:
        doc = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise UnknownModel(f"{what}: malformed JSON: {exc}") from None
    return from_reply(doc, what)


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def from_reply(doc: Any, what: str = "query-cpu-model-expansion") -> ExpandedGuest:
    info = _model_info(doc, what)
    props: dict[str, Any] = info.get("props", {})
    on: set[str] = set()
    unknown: list[str] = []
    for name, value in props.items():
        if not isinstance(value, bool):
            continue
        if qf.registered(name) or qf.registered(name.replace("_", "-")):
            if value:
                on.add(qf.canonical(name))
        elif name not in qf.PROPERTIES:
            unknown.append(name)
    msr = frozenset(f for f in on if f not in FEATURES)
    name = info["name"]
    vendor = props.get("vendor")
    spec = equivalent_spec(frozenset(on), name, vendor if isinstance(vendor, str) else None)
    notes = [
        f"QEMU's expansion of model {name!r}: {len(on)} features on, taken verbatim (the answering "
        "QEMU's own dependencies and host filtering are in it)"
    ]
    if unknown:
        notes.append(
            f"{len(unknown)} properties kvmfpu's QEMU data does not name (left out): "
            + ", ".join(sorted(unknown)[:12])
            + (" ..." if len(unknown) > 12 else "")
        )
    notes.append(
        f"the same features as -cpu {spec}"
        if spec
        else "no -cpu value kvmfpu resolves gives the same features"
    )
    return ExpandedGuest(
        expansion=f"expansion:{name}",
        spec=spec or f"expansion:{name}",
        name=name,
        version=None,
        features=frozenset(on) - msr,
        msr_features=msr,
        vendor=vendor if isinstance(vendor, str) else None,
        enforce=props.get("enforce") is True,
        check=props.get("check") is not False,
        notes=tuple(notes),
        family=_int(props.get("family")),
        model=_int(props.get("model")),
        stepping=_int(props.get("stepping")),
    )
