"""One call from captured bytes (or a path) to decoded images: read the container, choose
each image's layout, decode. What ``kvmfpu decode`` does, and what the fuzzers drive."""

from __future__ import annotations

import os
from dataclasses import dataclass

from kvmfpu.blob import decode as dec
from kvmfpu.blob import infer, sources
from kvmfpu.blob.sources import MAX_SIZE, Capture
from kvmfpu.blob.stream import Readable
from kvmfpu.cpus.model import HostModel


@dataclass
class Loaded:
    capture: Capture
    choice: infer.Choice
    decoded: dec.Decoded


def load(source: str | os.PathLike[str] | bytes | Readable, host: str | HostModel | None = None,
         fmt: str | None = None, *, max_size: int = MAX_SIZE,
         xfd: int | None = None, snapshot: str | None = None) -> list[Loaded]:
    """Every xsave image in ``source`` (a path, bytes, or a binary stream), decoded.
    ``host`` names the layout (else it is inferred, and AmbiguousLayout says when it cannot
    be); ``xfd`` is the vCPU's IA32_XFD (QEMU streams carry their own); ``snapshot`` picks a
    qcow2 snapshot by name or ID. Bad input raises InputError, nothing else."""
    out = []
    for cap in sources.read(source, fmt, max_size, snapshot=snapshot):
        choice = infer.choose(cap, host)
        armed = xfd if xfd is not None else cap.extra.get("xfd", 0)
        decoded = dec.decode(cap.data, choice.layout, host=choice.host, xcr0=cap.xcr0_hint,
                             mxcsr_mask=choice.mxcsr_mask, xfd=armed)
        out.append(Loaded(cap, choice, decoded))
    return out
