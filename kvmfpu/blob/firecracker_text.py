"""``snapshot-editor info-vmstate vcpu-states`` output: how Firecracker v1.15 on (bitcode
vmstate, no published layout) shows a vmstate's vCPUs.

src/snapshot-editor/src/info.rs (v1.15.0, v1.16.0) prints ``vcpu {i}:`` and then
``{state:#?}``: Rust's pretty Debug of VcpuState (src/vmm/src/arch/x86_64/vcpu.rs, its own
Debug impl listing cpuid, saved_msrs, debug_regs, lapic, mp_state, regs, sregs,
vcpu_events, xcrs, xsave, tsc_khz). Pretty Debug writes ``name: value,`` one per line and
arrays one element per line, integers in decimal; the kvm structs are bindgen's derived
Debug (``kvm_cpuid_entry2 { function: .., index: .., flags: .., eax: .., ... }``,
``kvm_xcr { xcr, reserved, value }``, ``kvm_xsave { region: [..] }`` inside ``kvm_xsave2
{ len, xsave }``). kvmfpu reads the cpuid entries (leaf 0xD places the components), XCR0
and the xsave region with ``len`` extra words; it does not read the MSRs, which that Debug
impl prints as raw kvm_msrs headers. No real snapshot-editor output was available: the
reader follows those Debug rules and refuses what does not fit them.
"""

from __future__ import annotations

import re
from typing import Final

from kvmfpu.blob.errors import InputError
from kvmfpu.blob.sources import Capture
from kvmfpu.blob.vmm_state import CpuidEntry, layout_note, registers, xcr0_at_464

MAX_VCPUS: Final = 32
_VCPU: Final = re.compile(r"^vcpu (\d{1,3}):[ \t]*$", re.M)
_N = r"(\d{1,20})"
_CPUID: Final = re.compile(
    r"kvm_cpuid_entry2 \{\s*function: " + _N + r",\s*index: " + _N + r",\s*flags: \d{1,20},"
    r"\s*eax: " + _N + r",\s*ebx: " + _N + r",\s*ecx: " + _N + r",\s*edx: " + _N + ","
)
_XCR: Final = re.compile(r"kvm_xcr \{\s*xcr: " + _N + r",\s*reserved: \d{1,20},\s*value: " + _N + ",")
_NR_XCRS: Final = re.compile(r"nr_xcrs: " + _N + ",")
_LIST: Final = re.compile(r"\[((?:\s*\d{1,20},)*)\s*\]")
_INT: Final = re.compile(r"\d{1,20}")


def _words(body: str, what: str) -> list[int]:
    out = [int(w) for w in _INT.findall(body)]
    if any(w > 0xFFFF_FFFF for w in out):
        raise InputError(f"{what}: a word larger than 32 bits")
    return out


def _xsave(block: str, what: str) -> bytes:
    at = block.find("\n    xsave: ")
    if at < 0:
        raise InputError(f"{what}: no top-level xsave field")
    end = block.find("\n    tsc_khz: ", at)
    section = block[at : end if end >= 0 else len(block)]
    r = section.find("region: [")
    if r < 0:
        raise InputError(f"{what}: the xsave field has no region list")
    m = _LIST.match(section, r + len("region: "))
    if m is None:
        raise InputError(f"{what}: the xsave region is not a list of integers")
    region = _words(m.group(1), what)
    if len(region) != 1024:
        raise InputError(f"{what}: the xsave region has {len(region)} words, not kvm_xsave's 1024")
    data = b"".join(w.to_bytes(4, "little") for w in region)
    n = re.search(r"\blen: " + _N + ",", section)
    extra = int(n.group(1)) if n else 0
    if extra:
        for more in _LIST.finditer(section, m.end()):
            words = _words(more.group(1), what)
            if len(words) == extra:
                return data + b"".join(w.to_bytes(4, "little") for w in words)
        raise InputError(f"{what}: kvm_xsave2 says {extra} extra words and no list of them follows")
    return data


def captures(data: bytes, max_size: int) -> list[Capture]:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise InputError("snapshot-editor output: not UTF-8 text") from None
    starts = list(_VCPU.finditer(text))
    if not starts:
        raise InputError("snapshot-editor output: no 'vcpu N:' line (give `info-vmstate vcpu-states` output)")
    if len(starts) > MAX_VCPUS:
        raise InputError(
            f"snapshot-editor output: {len(starts)} vCPUs (Firecracker runs at most {MAX_VCPUS})"
        )
    out = []
    for k, m in enumerate(starts):
        block = text[m.end() : starts[k + 1].start() if k + 1 < len(starts) else len(text)]
        what = f"snapshot-editor vcpu {m.group(1)}"
        if not block.lstrip().startswith("VcpuState {"):
            raise InputError(
                f"{what}: not followed by 'VcpuState {{' (an aarch64 microVM, or not snapshot-editor output)"
            )
        buf = _xsave(block, what)
        cpuid: list[CpuidEntry] = [
            (int(f), int(i), int(a), int(b), int(c), int(d)) for f, i, a, b, c, d in _CPUID.findall(block)
        ]
        nr = _NR_XCRS.search(block)
        xcrs = _XCR.findall(block)[: int(nr.group(1)) if nr else 0]
        xcr0 = next((int(v) for x, v in xcrs if x == "0"), None)
        cap = Capture(buf, f"Firecracker vCPU {m.group(1)}", "firecracker-info", xcr0_at_464(buf))
        note = layout_note(cpuid)
        if note:
            cap.layout_note = note
            cap.notes.append(
                "layout from the vCPU's CPUID leaf 0xD in the text (read as an "
                "NT_X86_XSAVE_LAYOUT note would be)"
            )
        registers(
            cap,
            xcr0 if xcr0 is None or xcr0 < 1 << 64 else None,
            {},
            "snapshot-editor info-vmstate text (MSRs not read)",
        )
        out.append(cap)
    return out
