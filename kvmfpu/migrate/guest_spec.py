"""One guest-CPU resolver for ``migrate --guest``, ``matrix --guest`` and ``validate
--guest-cpu``: whatever an operator holds, as the :class:`GuestModel` QEMU runs.

Accepted, in this order:

1. a path to a file, recognised by its content: a libvirt domain XML or ``<cpu>`` element
   (kvmfpu.qemu.libvirt_cpu) or a QEMU ``query-cpu-model-expansion`` reply
   (kvmfpu.qemu.expansion);
2. libvirt's mode names ``host-passthrough``, ``host-model``, ``maximum``;
3. a QEMU ``-cpu`` value (kvmfpu.qemu.models.resolve): ``Model[-vN][,options]``, ``host``,
   ``max``.

Bad input raises :class:`kvmfpu.blob.errors.InputError` with one line.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import replace
from typing import Final

from kvmfpu.blob.errors import InputError
from kvmfpu.kvm.system import Kvm
from kvmfpu.qemu import expansion, libvirt_cpu, models
from kvmfpu.qemu.models import GuestModel, UnknownModel

#: The most a guest description file may hold (libvirt_cpu.MAX_XML, expansion.MAX_JSON).
MAX_FILE: Final = max(libvirt_cpu.MAX_XML, expansion.MAX_JSON)

HostArg = Kvm | Callable[[], Kvm] | None


def _read(path: str) -> str:
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_FILE + 1)
    except OSError as exc:
        raise InputError(f"{path}: {exc.strerror}") from None
    if len(data) > MAX_FILE:
        raise InputError(f"{path}: larger than the {MAX_FILE} bytes a guest description may hold")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise InputError(f"{path}: not UTF-8 text (a domain XML or an expansion JSON)") from None


def is_file_spec(spec: str) -> bool:
    """A path to a regular file, unless the text is a mode name or starts a -cpu value."""
    head = spec.split(",", 1)[0].strip().lower()
    return head not in ("host", "max", *libvirt_cpu.MODES) and os.path.isfile(spec)


def resolve_guest(
    spec: str | GuestModel, *, host: HostArg = None, qemu: str | None = None, accel: str = "kvm"
) -> GuestModel:
    """``spec`` as the guest QEMU runs. ``host`` (a Kvm, or a function making one) is used
    for libvirt's host-model and ``optional`` features, which depend on the host."""
    if isinstance(spec, GuestModel):
        return spec
    try:
        if is_file_spec(spec):
            text = _read(spec)
            start = text.lstrip()[:1]
            if start == "<":
                return libvirt_cpu.from_domain_xml(text, host=host, qemu=qemu, what=spec)
            if start == "{":
                # the release the guest runs at (advice re-runs pick models of that release)
                return replace(expansion.from_json(text, what=spec), qemu=qemu)
            raise InputError(
                f"{spec}: neither a libvirt domain XML ('<') nor a query-cpu-model-expansion reply ('{{')"
            )
        name = spec.strip()
        if os.sep in name.split(",", 1)[0] or name.lower().endswith((".xml", ".json")):
            raise InputError(f"{spec}: no such file (a guest description file was meant?)")
        if name in libvirt_cpu.MODES[1:]:
            return libvirt_cpu.libvirt_mode(name, host=host, qemu=qemu)
        return models.resolve(spec, qemu=qemu, accel=accel)
    except UnknownModel as exc:
        raise InputError(str(exc).strip('"')) from None
