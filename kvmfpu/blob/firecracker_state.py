"""Firecracker vmstate files of the serde/bincode era (v1.7-v1.14), read by their layout.

From firecracker-microvm/firecracker (tags v1.7.0 ... v1.14.4), src/vmm/src/snapshot/mod.rs:
``SnapshotHdr {magic: u64, version: semver::Version}``, then ``MicrovmState``, then a CRC64
of everything before it (crate crc64: CRC-64/Jones, init 0, reflected). bincode with fixed
little-endian integers (bincode 1 ``serialize_into`` in v1.7-v1.11; bincode 2 ``standard()
.with_fixed_int_encoding().with_little_endian()`` from v1.12): u8 bools and Option tags,
u32 enum variants, u64 lengths before strings, Vecs and byte strings. semver writes the
version as a string. kvm-bindings' structs serialise as their raw bytes (``serde_impls!``,
a byte string; kvm-bindings 0.8 on, v1.8 on. v1.7 used Firecracker's fork, tag v0.7.0-2,
taken to serialise the same way: UNVERIFIED, the fork's source was not available);
vmm-sys-util's FamStructWrapper as (header, entries).

``MicrovmState`` (src/vmm/src/persist.rs) begins vm_info, then, by SNAPSHOT_VERSION:

- 1.0.0 (v1.7), 2.0.0 (v1.8), 3.0.0 (v1.9, v1.10.0), 4.0.0 (v1.10.1): memory_state
  {regions: [{base_address, size, offset}]}, vm_state {pitstate, clock, pic_master,
  pic_slave, ioapic, kvm_cap_modifiers: [String]}, vcpu_states.
- 5.0.0 (v1.11): memory_state {regions: [{base_address, size}]}, kvm_state
  {kvm_cap_modifiers}, vm_state {the five kvm structs}, vcpu_states.
- 6.0.0 (v1.12): kvm_state, vm_state {memory, the five}, vcpu_states.
- 8.0.0 (v1.13, v1.14): kvm_state, vm_state {memory, resource_allocator (vm-allocator's
  trees), the five}, vcpu_states. Both releases write 8.0.0, yet v1.14's memory regions
  gain region_type and plugged and its ResourceAllocator past_mmio64_memory (read at both
  tags): the bytes before the vCPUs cannot be told apart by the version. So the vCPUs are
  found by their own layout (a Vec count of 1-32, then CpuId's 8-byte kvm_cpuid2 header
  whose nent equals the entry count, then 40-byte kvm_cpuid_entry2 entries) and read by
  it; the VM state before them is not decoded.

``VcpuState`` (src/vmm/src/vstate/vcpu/x86_64.rs, src/vmm/src/arch/x86_64/vcpu.rs from
v1.12): cpuid, saved_msrs: [Msrs], debug_regs, lapic, mp_state, regs, sregs, vcpu_events,
xcrs, xsave, tsc_khz: Option<u32>; xsave is kvm_xsave (4096 bytes) to 5.0.0, and from
6.0.0 kvm-bindings' Xsave = FamStructWrapper<kvm_xsave2 {len: usize, xsave: kvm_xsave}>
with ``len`` u32 words of KVM_GET_XSAVE2 beyond 4096 bytes.

v1.15 on use bitcode (no published layout): ``snapshot-editor info-vmstate vcpu-states``
prints them as text, which kvmfpu.blob.firecracker_text reads. Older files (v1.6 and
before, versionize) have a non-zero format number in the magic's low 16 bits.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Final

from kvmfpu.blob.errors import InputError
from kvmfpu.blob.sources import Capture
from kvmfpu.blob.vmm_state import CpuidEntry, cut_short, layout_note, registers, xcr0_at_464

MAGIC_X86_64: Final = 0x0710_1984_8664_0000
MAGIC_AARCH64: Final = 0x0710_1984_AAAA_0000
#: SNAPSHOT_VERSION -> the releases that write it (src/vmm/src/persist.rs at each tag).
FORMATS: Final = {
    "1.0.0": "v1.7",
    "2.0.0": "v1.8",
    "3.0.0": "v1.9-v1.10.0",
    "4.0.0": "v1.10.1",
    "5.0.0": "v1.11",
    "6.0.0": "v1.12",
    "8.0.0": "v1.13-v1.14",
}
#: vmm_config/machine_config.rs MAX_SUPPORTED_VCPUS.
MAX_VCPUS: Final = 32
KVM_CPUID_ENTRY2_SIZE: Final = 40
KVM_XSAVE_SIZE: Final = 4096
#: Firecracker deserialises at most 10 MiB of state (snapshot/mod.rs VM_STATE_DESERIALIZE_LIMIT
#: v1.7-v1.11, DESERIALIZATION_BYTES_LIMIT from v1.12): a larger file is no vmstate it loads,
#: and refusing it bounds the CRC64 below (a few seconds of Python at most).
STATE_LIMIT: Final = 10 << 20
#: CRC-64/Jones (Redis' crc64, the crc64 crate): reflected polynomial 0xad93d23594c935a9.
_POLY_REFLECTED: Final = 0x95AC9329AC4BC9B5


def _table() -> list[int]:
    out = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ _POLY_REFLECTED if c & 1 else c >> 1
        out.append(c)
    return out


_TABLE: Final = _table()


def crc64(data: bytes, crc: int = 0) -> int:
    """crc64::crc64(crc, data) as Firecracker's CRC64Writer computes it."""
    t = _TABLE
    for b in data:
        crc = t[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc


class _Bincode:
    """A reader of bincode's fixint little-endian encoding; every length is checked against
    what remains, so nothing is allocated past the file's own size."""

    def __init__(self, data: bytes, pos: int = 0):
        self.data = data
        self.pos = pos

    def take(self, n: int, what: str) -> bytes:
        if n > len(self.data) - self.pos:
            raise InputError(
                f"Firecracker vmstate: {what} wants {n} bytes at byte {self.pos} "
                f"where {len(self.data) - self.pos} remain"
            )
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def u8(self, what: str) -> int:
        return self.take(1, what)[0]

    def u32(self, what: str) -> int:
        return int.from_bytes(self.take(4, what), "little")

    def u64(self, what: str) -> int:
        return int.from_bytes(self.take(8, what), "little")

    def count(self, what: str, item_size: int) -> int:
        """A Vec or byte-string length, refused when its items cannot fit in the rest."""
        n = self.u64(what)
        if n * item_size > len(self.data) - self.pos:
            raise InputError(
                f"Firecracker vmstate: {what} counts {n} items at byte "
                f"{self.pos - 8}, more than the {len(self.data) - self.pos} "
                "bytes left hold"
            )
        return n

    def bytes_(self, what: str) -> bytes:
        return self.take(self.count(what, 1), what)

    def string(self, what: str) -> str:
        return self.bytes_(what).decode("utf-8", "replace")

    def option(self, what: str, read: Callable[[str], object]) -> object:
        tag = self.u8(what)
        if tag > 1:
            raise InputError(f"Firecracker vmstate: {what} has Option tag {tag}")
        return read(what) if tag else None

    def vec(self, what: str, item_size: int, read: Callable[[str], object]) -> list[object]:
        return [read(what) for _ in range(self.count(what, item_size))]


def header(data: bytes) -> tuple[str, int]:
    """The snapshot format version and where the state starts; refuses other magics and
    versions kvmfpu has not read."""
    if len(data) < 24:
        raise InputError("Firecracker vmstate: shorter than its header")
    magic = int.from_bytes(data[:8], "little")
    if magic & ~0xFFFF == MAGIC_AARCH64:
        raise InputError(f"Firecracker vmstate of an aarch64 microVM (magic {magic:#x}): no x86 xsave state")
    if magic & ~0xFFFF != MAGIC_X86_64:
        raise InputError(f"not a Firecracker vmstate (magic {magic:#x})")
    if magic & 0xFFFF:
        raise InputError(
            f"Firecracker vmstate in the versionize format {magic & 0xFFFF} "
            "(Firecracker v1.6 or older, magic's low 16 bits): kvmfpu reads "
            "v1.7-v1.14"
        )
    r = _Bincode(data, 8)
    version = r.string("SnapshotHdr.version")
    if version not in FORMATS:
        later = version.split(".")[0].isdigit() and int(version.split(".")[0]) >= 9
        hint = (
            (" (v1.15 on use bitcode: give `snapshot-editor info-vmstate vcpu-states` output instead)")
            if later
            else ""
        )
        raise InputError(
            f"Firecracker vmstate SnapshotHdr.version {version[:20]!r} is not one "
            f"kvmfpu has read (it reads {', '.join(FORMATS)}){hint}"
        )
    return version, r.pos


def _vm_info(r: _Bincode) -> str:
    r.u64("vm_info.mem_size_mib")
    r.u8("vm_info.smt")
    r.u32("vm_info.cpu_template")
    kernel = r.string("vm_info.boot_source.kernel_image_path")
    r.option("vm_info.boot_source.initrd_path", r.string)
    r.option("vm_info.boot_source.boot_args", r.string)
    r.u32("vm_info.huge_pages")
    return kernel


def _regions(r: _Bincode, words: int) -> None:
    for _ in range(r.count("memory regions", 8 * words)):
        r.take(8 * words, "memory region")


def _kvm_structs(r: _Bincode) -> None:
    for name in ("pitstate", "clock", "pic_master", "pic_slave", "ioapic"):
        r.bytes_(f"vm_state.{name}")


def _to_vcpus(r: _Bincode, version: str) -> None:
    """Skip what precedes vcpu_states, field by field (formats 1.0.0-6.0.0)."""
    major = int(version.split(".")[0])
    caps = "kvm_cap_modifiers"
    if major <= 4:
        _regions(r, 3)
        _kvm_structs(r)
        r.vec(caps, 8, r.string)
    elif major == 5:
        _regions(r, 2)
        r.vec(caps, 8, r.string)
        _kvm_structs(r)
    else:
        r.vec(caps, 8, r.string)
        _regions(r, 2)
        _kvm_structs(r)


def _find_vcpus(data: bytes, start: int) -> int:
    """Where vcpu_states begins (its Vec count), found by the first VcpuState's layout."""
    anchor = (8).to_bytes(8, "little")
    pos = data.find(anchor, start + 8)
    while pos != -1 and pos + 32 <= len(data):
        nent, _pad, entries, first = struct.unpack_from("<IIQQ", data, pos + 8)
        count = int.from_bytes(data[pos - 8 : pos], "little")
        if nent == entries and first == KVM_CPUID_ENTRY2_SIZE and 1 <= count <= MAX_VCPUS:
            return pos - 8
        pos = data.find(anchor, pos + 1)
    raise InputError(
        "Firecracker vmstate: no vcpu_states found (no CpuId header and entries after the VM state)"
    )


def _vcpu(r: _Bincode, index: int, version: str) -> Capture:
    what = f"vcpu_states[{index}]"
    if len(r.bytes_(f"{what}.cpuid header")) < 8:
        raise InputError(f"Firecracker vmstate: {what}.cpuid header is not kvm_cpuid2's")
    cpuid: list[CpuidEntry] = []
    for _ in range(r.count(f"{what}.cpuid entries", 8 + KVM_CPUID_ENTRY2_SIZE)):
        e = r.bytes_(f"{what}.cpuid entry")
        if len(e) < 28:
            raise InputError(f"Firecracker vmstate: {what}: a {len(e)}-byte cpuid entry")
        f, i, _flags, a, b, c, d = struct.unpack_from("<7I", e)
        cpuid.append((f, i, a, b, c, d))
    msrs: dict[int, int] = {}
    for _ in range(r.count(f"{what}.saved_msrs", 16)):
        r.bytes_(f"{what}.saved_msrs header")
        for _ in range(r.count(f"{what}.saved_msrs entries", 8 + 16)):
            m = r.bytes_(f"{what}.msr entry")
            if len(m) >= 16:
                idx, _res, value = struct.unpack_from("<IIQ", m)
                msrs[idx] = value
    for name in ("debug_regs", "lapic", "mp_state", "regs", "sregs", "vcpu_events"):
        r.bytes_(f"{what}.{name}")
    xcrs = r.bytes_(f"{what}.xcrs")
    if int(version.split(".")[0]) <= 5:
        data = r.bytes_(f"{what}.xsave")
        if len(data) != KVM_XSAVE_SIZE:
            raise InputError(
                f"Firecracker vmstate: {what}.xsave is {len(data)} bytes, not kvm_xsave's {KVM_XSAVE_SIZE}"
            )
    else:
        head = r.bytes_(f"{what}.xsave (kvm_xsave2)")
        if len(head) != 8 + KVM_XSAVE_SIZE:
            raise InputError(
                f"Firecracker vmstate: {what}.xsave header is {len(head)} bytes, "
                f"not kvm_xsave2's {8 + KVM_XSAVE_SIZE}"
            )
        extra = r.take(4 * r.count(f"{what}.xsave extra", 4), f"{what}.xsave extra")
        if int.from_bytes(head[:8], "little") != len(extra) // 4:
            raise InputError(
                f"Firecracker vmstate: {what}.xsave says {int.from_bytes(head[:8], 'little')} "
                f"extra words and holds {len(extra) // 4}"
            )
        data = head[8:] + extra
    r.option(f"{what}.tsc_khz", r.u32)
    cap = Capture(data, f"Firecracker vCPU {index}", "firecracker", xcr0_at_464(data))
    note = layout_note(cpuid)
    if note:
        cap.layout_note = note
        cap.notes.append(
            "layout from the vCPU's saved CPUID leaf 0xD (read as an NT_X86_XSAVE_LAYOUT note would be)"
        )
    xcr0 = _xcr0(xcrs)
    registers(cap, xcr0, msrs, "saved with the vCPU")
    cut_short(cap, xcr0, "Firecracker before v1.12 (format 6.0.0) saved kvm_xsave's 4096 bytes")
    return cap


def _xcr0(raw: bytes) -> int | None:
    if len(raw) < 8:
        return None
    (nr,) = struct.unpack_from("<I", raw)
    for i in range(min(nr, 16)):
        if 8 + 16 * (i + 1) > len(raw):
            break
        xcr, _, value = struct.unpack_from("<IIQ", raw, 8 + 16 * i)
        if xcr == 0:
            return int(value)
    return None


def captures(data: bytes, max_size: int) -> list[Capture]:
    version, pos = header(data)
    if len(data) - pos - 8 > STATE_LIMIT:
        raise InputError(
            f"Firecracker vmstate: {len(data) - pos - 8} bytes of state, more than the "
            f"{STATE_LIMIT} Firecracker deserialises (VM_STATE_DESERIALIZE_LIMIT)"
        )
    if len(data) < pos + 8:
        raise InputError("Firecracker vmstate: no room for the state and its CRC64")
    stored = int.from_bytes(data[-8:], "little")
    body = data[:-8]
    if crc64(body) != stored:
        raise InputError(
            f"Firecracker vmstate: CRC64 {crc64(body):#018x} does not match the "
            f"stored {stored:#018x} (a truncated or edited file)"
        )
    r = _Bincode(body, pos)
    kernel = _vm_info(r)
    how = "read field by field"
    if version == "8.0.0":
        r.pos = _find_vcpus(body, r.pos)
        how = "found by the first VcpuState's CpuId layout (the VM state before it is not decoded)"
    else:
        _to_vcpus(r, version)
    count = r.count("vcpu_states", 64)
    if not 1 <= count <= MAX_VCPUS:
        raise InputError(f"Firecracker vmstate: {count} vCPUs (Firecracker runs 1 to {MAX_VCPUS})")
    out = []
    for i in range(count):
        cap = _vcpu(r, i, version)
        cap.notes.insert(
            0,
            f"Firecracker vmstate format {version} ({FORMATS[version]}), "
            f"kernel {kernel[:60]!r}; vcpu_states {how}",
        )
        out.append(cap)
    return out
