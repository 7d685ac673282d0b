"""crosvm snapshot fragments: one file per vCPU (``vcpu/vcpu<N>`` in the snapshot
directory), each an x86 ``VcpuSnapshot``.

From google/crosvm (read at f1e797a68): vm_control's snapshot writes the vCPUs into the
``vcpu`` namespace, and each vCPU thread ``write_fragment("vcpu{id}", &snapshot)``
(src/crosvm/sys/linux/vcpu.rs); snapshot/src/lib.rs serialises a fragment with
``ciborium::into_writer`` (CBOR, since 72d733e7e, 2025-01-08; serde_json before). The
struct (hypervisor/src/x86_64.rs) is {vcpu_id, regs, sregs, debug_regs, xcrs: BTreeMap<u32,
u64>, msrs: BTreeMap<u32, u64>, xsave: Xsave {data: Vec<u32>, len: usize}, hypervisor_data,
tsc_offset}; serde writes a struct as a map keyed by field names. ``Xsave`` has had that
shape since d0eaef9e0 (2023-04-10); KVM's get_xsave fills it from KVM_GET_XSAVE, or
KVM_GET_XSAVE2 when KVM_CAP_XSAVE2 reports more than 4096 bytes
(hypervisor/src/kvm/x86_64.rs). crosvm saves no CPUID, so the layout is inferred as for a
raw buffer.
"""

from __future__ import annotations

import json
from typing import Any

from kvmfpu.blob import cbor
from kvmfpu.blob.errors import InputError
from kvmfpu.blob.sources import Capture
from kvmfpu.blob.vmm_state import registers, u32_words, xcr0_at_464


def _map_u(value: Any, what: str) -> dict[int, int]:
    """A BTreeMap<u32, u64>: integer keys in CBOR, numeric strings in JSON."""
    if not isinstance(value, dict):
        raise InputError(f"{what}: not a map")
    out = {}
    for k, v in value.items():
        key = int(k) if isinstance(k, str) and k.isdigit() and len(k) <= 10 else k
        if isinstance(key, bool) or not isinstance(key, int) or not 0 <= key <= 0xFFFF_FFFF:
            raise InputError(f"{what}: key {str(k)[:20]!r} is not a u32")
        if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < 1 << 64:
            raise InputError(f"{what}: the value for {key:#x} is not a u64")
        out[key] = v
    return out


def vcpu_capture(snap: Any, encoding: str) -> Capture:
    if not isinstance(snap, dict) or "xsave" not in snap:
        raise InputError(
            "crosvm snapshot: not a VcpuSnapshot (no xsave field; the vcpu/vcpuN fragment is the one to give)"
        )
    vcpu = snap.get("vcpu_id")
    if isinstance(vcpu, bool) or not isinstance(vcpu, int) or vcpu < 0:
        raise InputError(f"crosvm snapshot: vcpu_id {str(vcpu)[:20]!r} is not a vCPU number")
    what = f"crosvm vCPU {vcpu}"
    xsave = snap["xsave"]
    if not isinstance(xsave, dict):
        raise InputError(
            f"{what}: xsave is a {type(xsave).__name__}, not {{data, len}} (crosvm "
            "before 2023-04-10 (d0eaef9e0) kept bytes: not read)"
        )
    words = xsave.get("data")
    size = xsave.get("len")
    if not isinstance(words, list):
        raise InputError(f"{what}: xsave.data is not a list of u32 words")
    if (
        isinstance(size, bool)
        or not isinstance(size, int)
        or not 0 <= size <= 4 * len(words)
        or -(-size // 4) != len(words)
    ):
        raise InputError(
            f"{what}: xsave.len {str(size)[:20]} does not match its "
            f"{len(words)} words (Xsave::new keeps len.div_ceil(4))"
        )
    data = u32_words(words, None, f"{what} xsave.data")[:size]
    cap = Capture(data, what, "crosvm", xcr0_at_464(data))
    xcrs = _map_u(snap.get("xcrs", {}), f"{what} xcrs")
    registers(
        cap, xcrs.get(0), _map_u(snap.get("msrs", {}), f"{what} msrs"), f"saved with the vCPU ({encoding})"
    )
    cap.notes.append("crosvm saves no CPUID: the layout is inferred from the buffer")
    return cap


def captures(data: bytes, max_size: int) -> list[Capture]:
    if data.lstrip()[:1] == b"{":
        try:
            snap = json.loads(data)
        except RecursionError:
            raise InputError("crosvm snapshot (JSON): nested too deeply") from None
        except ValueError as exc:
            raise InputError(f"crosvm snapshot (JSON): {str(exc)[:80]}") from None
        return [vcpu_capture(snap, "serde_json, before 2025-01")]
    return [vcpu_capture(cbor.loads(data, "crosvm snapshot"), "CBOR")]
