"""Cloud Hypervisor snapshot ``state.json``: each vCPU's KVM_GET_XSAVE region, its saved
CPUID (whose leaf 0xD places the components), XCR0 and MSRs.

Layout, from the cloud-hypervisor repository (read at v38.0, v39.0, v40.0, v50.0, v53.0):
the file is vm-migration's ``Snapshot`` tree serialised by serde_json (vmm/src/vm.rs
``Transportable for Vm``): ``{"snapshots": {id: Snapshot}, "snapshot_data": ...}``. The
vCPUs are ``snapshots["cpu-manager"].snapshots["0"...]`` (vmm/src/cpu.rs). Their data is
``{"state": "<JSON text>"}`` from v39.0 (10ab87d6a, "Migrate away from versionize"); before,
``SnapshotData(Vec<u8>)``: the same JSON as a list of byte values (v29.0-v38.0, since
4517b76a2). The state is ``CpuState`` (hypervisor/src/lib.rs), externally tagged:
``{"Kvm": VcpuKvmState}`` with cpuid (list of CpuIdEntry {function, index, flags, eax, ebx,
ecx, edx}), msrs ({index, data}), xsave (XsaveState: ``region`` [u32; 1024], and from v50.0
``extra`` u32 words of KVM_GET_XSAVE2 beyond 4096 bytes, 4b4954ff8) and xcrs. xcrs is
kvm_bindings' kvm_xcrs: serialised as its raw bytes (a list of 392 byte values) since v39.0
(kvm-bindings 0.8.1 ``serde_impls!``, src/x86_64/serialize.rs); the older fork
(cloud-hypervisor/kvm-bindings ch-v0.7.0 ``with-serde``) derived it field by field.
The VM's own data (``VmSnapshot``) carries ``common_cpuid``, used when a vCPU has none.
"""

from __future__ import annotations

import json
import struct
from typing import Any, Final

from kvmfpu.blob.errors import InputError
from kvmfpu.blob.sources import Capture
from kvmfpu.blob.vmm_state import CpuidEntry, cut_short, layout_note, registers, u32_words, xcr0_at_464

CPU_MANAGER: Final = "cpu-manager"
#: struct kvm_xcrs: u32 nr_xcrs, u32 flags, struct kvm_xcr xcrs[16] {u32 xcr, u32 reserved,
#: u64 value}, u64 padding[16] (include/uapi/asm/kvm.h).
KVM_XCRS_SIZE: Final = 392
KVM_MAX_XCRS: Final = 16
#: The vCPUs kvmfpu reads from one file (Cloud Hypervisor's max_vcpus is a u8 in
#: CpusConfig; KVM_MAX_VCPUS is 4096 on x86).
MAX_VCPUS: Final = 4096


def _json(text: str | bytes, what: str) -> Any:
    try:
        return json.loads(text)
    except RecursionError:
        raise InputError(f"{what}: nested too deeply") from None
    except ValueError as exc:
        raise InputError(f"{what}: not JSON ({str(exc)[:80]})") from None


def _obj(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise InputError(f"{what}: expected a JSON object, found {type(value).__name__}")
    return value


def _u(value: Any, bits: int, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 1 << bits:
        raise InputError(f"{what}: {str(value)[:40]!r} is not a u{bits}")
    return value


def _state(snapshot: dict[str, Any], what: str) -> Any:
    """The JSON a Snapshot's snapshot_data holds (None when it has none)."""
    data = snapshot.get("snapshot_data")
    if data is None:
        return None
    if isinstance(data, dict) and isinstance(data.get("state"), str):
        return _json(data["state"], f"{what} state")
    if isinstance(data, list):  # SnapshotData(Vec<u8>), v29.0-v38.0
        if not all(isinstance(b, int) and not isinstance(b, bool) and 0 <= b < 256 for b in data):
            raise InputError(f"{what}: snapshot_data is a list but not of byte values")
        return _json(bytes(data), f"{what} state")
    raise InputError(
        f'{what}: snapshot_data is neither {{"state": text}} (v39.0 on) nor a list of bytes (v29.0-v38.0)'
    )


def _cpuid(entries: Any, what: str) -> list[CpuidEntry]:
    if not isinstance(entries, list):
        raise InputError(f"{what}: cpuid is not a list")
    out = []
    for e in entries:
        e = _obj(e, f"{what} cpuid entry")
        out.append(
            tuple(
                _u(e.get(k, 0), 32, f"{what} cpuid.{k}")
                for k in ("function", "index", "eax", "ebx", "ecx", "edx")
            )
        )
    return out  # type: ignore[return-value]


def _xcr0(xcrs: Any, what: str) -> int | None:
    """XCR0 from kvm_xcrs in either serialisation."""
    if isinstance(xcrs, list):
        raw = bytes(_u(b, 8, f"{what} xcrs byte") for b in xcrs)
        if len(raw) < 8:
            raise InputError(f"{what}: xcrs is {len(raw)} bytes, not struct kvm_xcrs")
        (nr,) = struct.unpack_from("<I", raw)
        found = None
        for i in range(min(nr, KVM_MAX_XCRS)):
            if 8 + 16 * (i + 1) > len(raw):
                raise InputError(f"{what}: xcrs says {nr} XCRs in {len(raw)} bytes")
            xcr, _, value = struct.unpack_from("<IIQ", raw, 8 + 16 * i)
            if xcr == 0:
                found = value
        return found
    if isinstance(xcrs, dict):
        nr = _u(xcrs.get("nr_xcrs", 0), 32, f"{what} xcrs.nr_xcrs")
        items = xcrs.get("xcrs", [])
        if not isinstance(items, list):
            raise InputError(f"{what}: xcrs.xcrs is not a list")
        for x in items[: min(nr, KVM_MAX_XCRS)]:
            x = _obj(x, f"{what} xcr")
            if x.get("xcr") == 0:
                return _u(x.get("value"), 64, f"{what} xcr0")
        return None
    raise InputError(f"{what}: xcrs is neither kvm_xcrs bytes nor an object")


def _msrs(msrs: Any, what: str) -> dict[int, int]:
    if not isinstance(msrs, list):
        raise InputError(f"{what}: msrs is not a list")
    out = {}
    for m in msrs:
        m = _obj(m, f"{what} msr")
        out[_u(m.get("index"), 32, f"{what} msr index")] = _u(m.get("data"), 64, f"{what} msr data")
    return out


def vcpu_capture(state: Any, vcpu: str, common: list[CpuidEntry]) -> Capture:
    what = f"Cloud Hypervisor vCPU {vcpu}"
    state = _obj(state, what)
    if "Kvm" not in state:
        kinds = ", ".join(sorted(state)[:3]) or "nothing"
        raise InputError(
            f"{what}: the state is {kinds}, not Kvm (kvmfpu reads KVM vCPUs; MSHV keeps no KVM xsave buffer)"
        )
    kvm = _obj(state["Kvm"], what)
    xsave = _obj(kvm.get("xsave"), f"{what} xsave")
    region = u32_words(xsave.get("region"), 1024, f"{what} xsave.region")
    extra = xsave.get("extra", [])
    data = region + (u32_words(extra, None, f"{what} xsave.extra") if extra else b"")
    cap = Capture(data, f"Cloud Hypervisor vCPU {vcpu}", "cloud-hypervisor", xcr0_at_464(data))
    cpuid = _cpuid(kvm.get("cpuid", []), what)
    note = layout_note(cpuid or common)
    if note:
        cap.layout_note = note
        src = "the vCPU's" if cpuid else "the VM's common"
        cap.notes.append(
            f"layout from {src} saved CPUID leaf 0xD (read as an NT_X86_XSAVE_LAYOUT note would be)"
        )
    if extra:
        cap.notes.append(f"KVM_GET_XSAVE2 buffer: {len(data)} bytes (xsave.extra, v50.0 on)")
    xcr0 = _xcr0(kvm.get("xcrs"), what)
    registers(cap, xcr0, _msrs(kvm.get("msrs", []), what), "saved with the vCPU")
    # cloud-hypervisor issue #5800 (AMX guest, 4 KiB kvm_xsave); XSAVE2 state from v50.0.
    cut_short(cap, xcr0, "Cloud Hypervisor before v50.0 kept KVM_GET_XSAVE's 4096 bytes only, issue #5800")
    return cap


def captures(data: bytes, max_size: int) -> list[Capture]:
    top = _obj(_json(data, "Cloud Hypervisor state.json"), "Cloud Hypervisor state.json")
    if "snapshots" not in top:
        raise InputError(
            'Cloud Hypervisor state.json: no "snapshots" (a config.json? give the snapshot\'s state.json)'
        )
    subs = _obj(top["snapshots"], "Cloud Hypervisor snapshots")
    if CPU_MANAGER not in subs:
        raise InputError(
            f"Cloud Hypervisor state.json: no {CPU_MANAGER!r} snapshot (the file "
            "predates v29.0's snapshot tree, or is not a VM snapshot)"
        )
    vm = _state(top, "Cloud Hypervisor VM")
    common = _cpuid(vm.get("common_cpuid", []), "Cloud Hypervisor VM") if isinstance(vm, dict) else []
    vcpus = _obj(_obj(subs[CPU_MANAGER], CPU_MANAGER).get("snapshots", {}), CPU_MANAGER)
    if not vcpus:
        raise InputError("Cloud Hypervisor state.json: the cpu-manager snapshot has no vCPU")
    if len(vcpus) > MAX_VCPUS:
        raise InputError(f"Cloud Hypervisor state.json: {len(vcpus)} vCPUs (more than {MAX_VCPUS})")
    out = []
    for vcpu in sorted(vcpus, key=lambda k: (len(k), k)):
        state = _state(_obj(vcpus[vcpu], f"vCPU {vcpu}"), f"Cloud Hypervisor vCPU {vcpu}")
        if state is None:
            raise InputError(f"Cloud Hypervisor vCPU {vcpu}: no snapshot_data")
        out.append(vcpu_capture(state, vcpu, common))
    return out
