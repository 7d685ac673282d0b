"""The VMM and checkpoint state files kvmfpu reads, as one table sources.py extends its
formats and detection with: Cloud Hypervisor's snapshot state.json, crosvm's per-vCPU
snapshot fragments, CRIU core images, Firecracker vmstate files (v1.7-v1.14) and
``snapshot-editor info-vmstate vcpu-states`` text (v1.15 on).

Detection looks only at a file's first bytes (or, for JSON, its first keys), so it is
cheap and never mistakes another format's bytes; the readers are imported when used.
"""

from __future__ import annotations

import importlib
import re
import struct
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from kvmfpu.blob.sources import Capture

#: --format name -> reader module (each has ``captures(data, max_size)``).
READERS: Final = {
    "cloud-hypervisor": "kvmfpu.blob.cloud_hypervisor",
    "crosvm": "kvmfpu.blob.crosvm",
    "criu": "kvmfpu.blob.criu",
    "firecracker": "kvmfpu.blob.firecracker_state",
    "firecracker-info": "kvmfpu.blob.firecracker_text",
}
FORMATS: Final = tuple(READERS)

_CRIU_FIRST: Final = (0x54564319, 0x55105940)  # IMG_COMMON_MAGIC, IMG_SERVICE_MAGIC
_CRIU_CORE: Final = 0x55053847
#: Firecracker's SNAPSHOT_MAGIC_ID (x86_64 and aarch64) in the high 48 bits; the low 16 bits
#: are 0 from v1.7 and the versionize format version before (src/snapshot/src/lib.rs).
_FIRECRACKER_MAGICS: Final = (0x0710_1984_8664_0000, 0x0710_1984_AAAA_0000)
#: A ciborium-written struct is a CBOR map whose first key is the first field's name:
#: crosvm's x86 VcpuSnapshot begins with ``vcpu_id`` (text string of 7 bytes: 0x67).
_CBOR_VCPU: Final = b"\x67vcpu_id"
#: `snapshot-editor info-vmstate vcpu-states` (src/snapshot-editor/src/info.rs): "vcpu 0:"
#: then VcpuState's pretty Debug.
_SNAPSHOT_EDITOR: Final = re.compile(rb"\Avcpu \d{1,3}:[ \t]*\r?\n\s*VcpuState \{")
_JSON_FIRST_KEY: Final = re.compile(rb'\A\s*\{\s*"([a-z_]{1,32})"\s*:')


def detect(data: bytes) -> str | None:
    """The format of ``data`` when it is one of these files, else None."""
    if len(data) >= 8:
        first, second = struct.unpack_from("<II", data)
        if first in _CRIU_FIRST and second == _CRIU_CORE:
            return "criu"
        if struct.unpack_from("<Q", data)[0] & ~0xFFFF in _FIRECRACKER_MAGICS:
            return "firecracker"
    if data[:1] and data[0] & 0xE0 == 0xA0 and data[1:9] == _CBOR_VCPU:
        return "crosvm"
    if _SNAPSHOT_EDITOR.match(data[:64]):
        return "firecracker-info"
    m = _JSON_FIRST_KEY.match(data[:256])
    if m:
        key = m.group(1)
        # config.json (VmConfig, vmm/src/vm_config.rs, begins with cpus) is taken too, so
        # that its reader can point at state.json instead of a hex-dump error.
        if key in (b"snapshots", b"cpus"):
            return "cloud-hypervisor"
        if key == b"vcpu_id":  # crosvm before CBOR (2023-2025: serde_json fragments)
            return "crosvm"
    return None


def read(kind: str, data: bytes, max_size: int) -> list[Capture]:
    module = importlib.import_module(READERS[kind])
    caps: list[Capture] = module.captures(data, max_size)
    return caps
