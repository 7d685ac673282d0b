"""VMM and CRIU state files written the way each project's serialisation code writes them,
around a model vCPU's KVM_GET_XSAVE buffer, CPUID, XCR0 and MSRs.

No Cloud Hypervisor, crosvm or Firecracker binary can run here and their repositories
publish no snapshot files, so these writers follow the code that writes them (the
sources are in each reader's docstring: kvmfpu.blob.cloud_hypervisor, crosvm,
firecracker_state, criu); the tests check the writers against independent encoders where
one exists (cbor2 for CBOR, Debian's crit for CRIU images) and against the crc64 crate's
published check value.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from typing import Any

from kvmfpu.arch import legacy
from kvmfpu.arch.layout import XsaveLayout


@dataclass
class VcpuSample:
    xsave: bytes
    cpuid: list[tuple[int, int, int, int, int, int, int]]  # function, index, flags, eax..edx
    xcr0: int
    msrs: dict[int, int] = field(default_factory=dict)
    host: str = ""


def model_vcpu(host: str, kernel: str = "6.6", salt: int = 0) -> VcpuSample:
    """A model vCPU on ``host`` whose guest wrote x87, SSE, AVX(-512), opmask and PKRU
    where the host has them (as tests/blob/conftest.py's guest_blob does)."""
    from kvmfpu import Kvm

    kvm = Kvm(host, kernel)
    v = kvm.create_vm().create_vcpu()
    cpuid = kvm.get_supported_cpuid()
    v.set_cpuid2(cpuid)
    v.set_sregs(cr4_osxsave=True, cr4_pke=kvm.caps.pku)
    xcr0 = v.gsx & ~(v.gsx & 0x60000 if v.gsx & 0x60000 != 0x60000 else 0)
    v.set_xcrs([(0, xcr0)])
    with v.guest() as g:
        g.set_reg("fcw", 0x027F)
        g.set_reg("xmm1", 0x1234 + salt)
        if xcr0 & 0x4:
            g.set_reg("ymm2", (0xABCD + salt) << 200)
        if xcr0 & 0xE0:
            g.set_reg("zmm3", (7 << 500) | 5)
            g.set_reg("k1", 0xFF)
            g.set_reg("zmm20", 9 << 300)
        if xcr0 & 0x200:
            g.set_reg("pkru", 0xC)
    entries = [(e.function, e.index, e.flags, e.eax, e.ebx, e.ecx, e.edx) for e in cpuid]
    return VcpuSample(v.get_xsave(), entries, xcr0, {0xDA0: 0}, host)


# --- Cloud Hypervisor: serde_json of vm-migration's Snapshot tree -------------------------


def _ch_xcrs(xcr0: int, as_bytes: bool) -> Any:
    if not as_bytes:  # the ch-v0.7.0 kvm-bindings fork's derived serde
        xcrs = [{"xcr": 0, "reserved": 0, "value": xcr0}] + [{"xcr": 0, "reserved": 0, "value": 0}] * 15
        return {"nr_xcrs": 1, "flags": 0, "xcrs": xcrs, "padding": [0] * 16}
    raw = struct.pack("<II", 1, 0) + struct.pack("<IIQ", 0, 0, xcr0) + bytes(15 * 16 + 128)
    return list(raw)


def ch_vcpu_state(s: VcpuSample, *, extra: bytes = b"", xcrs_bytes: bool = True) -> dict[str, Any]:
    """CpuState::Kvm(VcpuKvmState), fields in declaration order (hypervisor/src/kvm/x86_64)."""
    words = list(struct.unpack(f"<{len(s.xsave[:4096]) // 4}I", s.xsave[:4096]))
    xsave: dict[str, Any] = {"region": words}
    if extra:
        xsave["extra"] = list(struct.unpack(f"<{len(extra) // 4}I", extra))
    state = {
        "cpuid": [
            dict(zip(("function", "index", "flags", "eax", "ebx", "ecx", "edx"), e, strict=True))
            for e in s.cpuid
        ],
        "msrs": [{"index": k, "data": v} for k, v in s.msrs.items()],
        "vcpu_events": list(bytes(64)),
        "regs": list(bytes(144)),
        "sregs": list(bytes(312)),
        "fpu": {
            "fpr": [[0] * 16] * 8,
            "fcw": 0x37F,
            "fsw": 0,
            "ftwx": 0,
            "last_opcode": 0,
            "last_ip": 0,
            "last_dp": 0,
            "xmm": [[0] * 16] * 16,
            "mxcsr": 0x1F80,
        },
        "lapic_state": list(bytes(1024)),
        "xsave": xsave,
        "xcrs": _ch_xcrs(s.xcr0, xcrs_bytes),
        "mp_state": list(bytes(4)),
        "tsc_khz": 2_000_000,
        "nested_state": None,
        "hyperv_synic": False,
    }
    return {"Kvm": state}


def ch_state_json(vcpus: list[VcpuSample], *, era: str = "v39", common_cpuid: bool = True) -> bytes:
    """state.json: era "v39" (SnapshotData {state: String}, v39.0 on), "v38" (SnapshotData(
    Vec<u8>), v29.0-v38.0, with the fork's field-by-field kvm_xcrs) or "v50" (XSAVE2
    ``extra``)."""

    def data(state: Any) -> Any:
        text = json.dumps(state, separators=(",", ":"))
        return {"state": text} if era != "v38" else list(text.encode())

    cpus = {
        str(i): {
            "snapshots": {},
            "snapshot_data": data(
                ch_vcpu_state(s, extra=bytes(range(64)) * 2 if era == "v50" else b"", xcrs_bytes=era != "v38")
            ),
        }
        for i, s in enumerate(vcpus)
    }
    vm = {
        "common_cpuid": [
            dict(zip(("function", "index", "flags", "eax", "ebx", "ecx", "edx"), e, strict=True))
            for e in (vcpus[0].cpuid if common_cpuid else [])
        ]
    }
    top = {
        "snapshots": {
            "cpu-manager": {"snapshots": cpus, "snapshot_data": None},
            "memory-manager": {"snapshots": {}, "snapshot_data": data({"memory_ranges": []})},
        },
        "snapshot_data": data(vm),
    }
    return json.dumps(top, separators=(",", ":")).encode()


# --- crosvm: ciborium CBOR of VcpuSnapshot --------------------------------------------------


def cbor_dumps(value: Any) -> bytes:
    """Minimal definite-length CBOR (RFC 8949 §3; the shortest argument encoding, as ciborium
    writes): ints, text, bytes, lists, dicts, bools, None."""

    def head(major: int, n: int) -> bytes:
        if n < 24:
            return bytes([major << 5 | n])
        for info, width in ((24, 1), (25, 2), (26, 4), (27, 8)):
            if n < 1 << 8 * width:
                return bytes([major << 5 | info]) + n.to_bytes(width, "big")
        raise ValueError(n)

    if value is True or value is False:
        return bytes([0xF5 if value else 0xF4])
    if value is None:
        return b"\xf6"
    if isinstance(value, int):
        return head(0, value) if value >= 0 else head(1, -1 - value)
    if isinstance(value, bytes):
        return head(2, len(value)) + value
    if isinstance(value, str):
        raw = value.encode()
        return head(3, len(raw)) + raw
    if isinstance(value, list):
        return head(4, len(value)) + b"".join(cbor_dumps(v) for v in value)
    if isinstance(value, dict):
        return head(5, len(value)) + b"".join(cbor_dumps(k) + cbor_dumps(v) for k, v in value.items())
    raise TypeError(type(value))


def crosvm_snapshot(s: VcpuSample, vcpu_id: int = 0) -> dict[str, Any]:
    """VcpuSnapshot as serde hands it to the serializer (hypervisor/src/x86_64.rs)."""
    size = len(s.xsave)
    padded = s.xsave + bytes(-size % 4)
    regs = {
        k: 0
        for k in (
            "rax",
            "rbx",
            "rcx",
            "rdx",
            "rsi",
            "rdi",
            "rsp",
            "rbp",
            "r8",
            "r9",
            "r10",
            "r11",
            "r12",
            "r13",
            "r14",
            "r15",
            "rip",
            "rflags",
        )
    }
    return {
        "vcpu_id": vcpu_id,
        "regs": regs,
        "sregs": {"cr0": 0x80050033, "cr4": 0x40020},
        "debug_regs": {"db": [0, 0, 0, 0], "dr6": 0xFFFF0FF0, "dr7": 0x400},
        "xcrs": {0: s.xcr0},
        "msrs": dict(sorted(s.msrs.items())),
        "xsave": {"data": list(struct.unpack(f"<{len(padded) // 4}I", padded)), "len": size},
        "hypervisor_data": {"interrupts": {}, "nested_state": []},
        "tsc_offset": 0,
    }


def crosvm_fragment(s: VcpuSample, vcpu_id: int = 0, *, encoding: str = "cbor") -> bytes:
    snap = crosvm_snapshot(s, vcpu_id)
    if encoding == "json":  # serde_json before 72d733e7e: map keys become strings
        snap = {
            **snap,
            "xcrs": {str(k): v for k, v in snap["xcrs"].items()},
            "msrs": {str(k): v for k, v in snap["msrs"].items()},
        }
        return json.dumps(snap).encode()
    return cbor_dumps(snap)


# --- Firecracker: bincode (fixint, little-endian) of Snapshot<MicrovmState> ---------------


def _u64(n: int) -> bytes:
    return struct.pack("<Q", n)


def _bytes(b: bytes) -> bytes:
    return _u64(len(b)) + b


def _str(s: str) -> bytes:
    return _bytes(s.encode())


def _fc_vcpu(s: VcpuSample, major: int) -> bytes:
    out = _bytes(struct.pack("<II", len(s.cpuid), 0)) + _u64(len(s.cpuid))
    out += b"".join(_bytes(struct.pack("<7I3I", *e, 0, 0, 0)) for e in s.cpuid)
    msrs = [struct.pack("<IIQ", k, 0, v) for k, v in s.msrs.items()]
    out += _u64(1) + _bytes(struct.pack("<II", len(msrs), 0)) + _u64(len(msrs)) + b"".join(map(_bytes, msrs))
    for size in (128, 1024, 4, 144, 312, 64):  # debug_regs lapic mp_state regs sregs events
        out += _bytes(bytes(size))
    out += _bytes(struct.pack("<II", 1, 0) + struct.pack("<IIQ", 0, 0, s.xcr0) + bytes(15 * 16 + 128))
    region, extra = s.xsave[:4096], s.xsave[4096:]
    if major <= 5:
        out += _bytes(region)
    else:
        out += _bytes(_u64(len(extra) // 4) + region) + _u64(len(extra) // 4) + extra
    return out + b"\x01" + struct.pack("<I", 2_000_000)  # tsc_khz: Some(2000000)


def crc64_jones(data: bytes) -> int:
    """The crc64 crate's crc64(0, data), bit by bit (kept apart from the reader's table)."""
    crc = 0
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ 0x95AC9329AC4BC9B5 if crc & 1 else crc >> 1
    return crc


def firecracker_vmstate(
    vcpus: list[VcpuSample],
    version: str = "1.0.0",
    *,
    kernel: str = "/vmlinux",
    magic: int = 0x0710_1984_8664_0000,
    release: str = "v1.14",
) -> bytes:
    """A vmstate as Snapshot::save writes it for SNAPSHOT_VERSION ``version`` (for 8.0.0, as
    ``release`` v1.13 or v1.14 lays out the VM state)."""
    major = int(version.split(".")[0])
    vm_info = (
        _u64(128)
        + b"\x00"
        + struct.pack("<I", 0)
        + _str(kernel)
        + b"\x00"
        + b"\x01"
        + _str("console=ttyS0 reboot=k")
        + struct.pack("<I", 0)
    )
    five = b"".join(_bytes(bytes(n)) for n in (112, 56, 520, 520, 520))
    caps = _u64(1) + _str("!159")
    if major <= 4:
        prefix = _u64(1) + struct.pack("<QQQ", 0, 128 << 20, 0) + five + caps
    elif major == 5:
        prefix = _u64(1) + struct.pack("<QQ", 0, 128 << 20) + caps + five
    elif major == 6:
        prefix = caps + _u64(1) + struct.pack("<QQ", 0, 128 << 20) + five
    else:  # 8.0.0: v1.14's regions add region_type and plugged; an opaque resource allocator
        allocator = _u64(3) + bytes(range(40 if release == "v1.14" else 32)) + _u64(0)
        region = struct.pack("<QQ", 0, 128 << 20)
        if release == "v1.14":
            region += struct.pack("<I", 0) + _u64(2) + b"\x01\x01"
        prefix = caps + _u64(1) + region + allocator + five
    state = vm_info + prefix + _u64(len(vcpus)) + b"".join(_fc_vcpu(s, major) for s in vcpus)
    state += _u64(0) * 4  # device states (empty lists: not read)
    body = _u64(magic) + _str(version) + state
    return body + _u64(crc64_jones(body))


# --- CRIU: a core image as criu/arch/x86/crtools.c fills it -------------------------------


#: user_x86_xsave_entry field -> (field number, xfeature bit, word bytes) (images/core-x86.proto).
CRIU_XSAVE: dict[str, tuple[int, int, int]] = {
    "ymmh_space": (2, 2, 4),
    "bndreg_state": (3, 3, 8),
    "bndcsr_state": (4, 4, 8),
    "opmask_reg": (5, 5, 8),
    "zmm_upper": (6, 6, 8),
    "hi16_zmm": (7, 7, 8),
    "pkru": (8, 9, 4),
}


def criu_fields(xstate: bytes, layout: XsaveLayout, mask: int) -> dict[str, Any]:
    """user_x86_fpregs_entry as crit's JSON shows it, from an NT_X86_XSTATE buffer of a host
    with ``layout`` whose XCR0 is ``mask`` (crtools.c: the FXSAVE words, then each component
    the host has, copied from its CPUID offset)."""
    cwd, swd, twd, fop, rip, rdp, mxcsr, mxcsr_mask = struct.unpack_from("<HHHHQQII", xstate)
    words = struct.unpack_from("<96I", xstate, legacy.ST_SPACE)
    xsave: dict[str, Any] = {"xstate_bv": int.from_bytes(xstate[512:520], "little")}
    for name, (_num, bit, width) in CRIU_XSAVE.items():
        if mask >> bit & 1 and bit in layout.components:
            off, size = layout.standard_offset(bit), layout.size(bit)
            xsave[name] = [
                int.from_bytes(xstate[off + i : off + i + width], "little") for i in range(0, size, width)
            ]
    return {
        "cwd": cwd,
        "swd": swd,
        "twd": twd,
        "fop": fop,
        "rip": rip,
        "rdp": rdp,
        "mxcsr": mxcsr,
        "mxcsr_mask": mxcsr_mask,
        "st_space": list(words[:32]),
        "xmm_space": list(words[32:]),
        "xsave": xsave,
    }


def criu_json(fpregs: dict[str, Any], comm: str = "fpu") -> dict[str, Any]:
    """A CORE image in crit's JSON form (what `crit decode` prints, `crit encode` takes)."""
    gp: dict[str, Any] = {
        k: 0
        for k in (
            "r15",
            "r14",
            "r13",
            "r12",
            "bp",
            "bx",
            "r11",
            "r10",
            "r9",
            "r8",
            "ax",
            "cx",
            "dx",
            "si",
            "di",
            "orig_ax",
            "ip",
            "cs",
            "flags",
            "sp",
            "ss",
            "fs_base",
            "gs_base",
            "ds",
            "es",
            "fs",
            "gs",
        )
    }
    gp.update(cs=0x33, ss=0x2B, mode="NATIVE")
    entry = {
        "mtype": "X86_64",
        "thread_info": {"clear_tid_addr": 0, "gpregs": gp, "fpregs": fpregs},
        "tc": {"task_state": 1, "exit_code": 0, "personality": 0, "flags": 0, "blk_sigset": 0, "comm": comm},
    }
    return {"magic": "CORE", "entries": [entry]}


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _pb(number: int, value: int | bytes) -> bytes:
    if isinstance(value, bytes):
        return _varint(number << 3 | 2) + _varint(len(value)) + value
    return _varint(number << 3) + _varint(value)


def criu_core_image(fpregs: dict[str, Any], comm: str = "fpu") -> bytes:
    """The protobuf wire bytes of ``criu_json(fpregs)`` (proto2, unpacked repeated fields,
    in field-number order as protobuf-c writes them)."""
    x = fpregs["xsave"]
    xs = _pb(1, x["xstate_bv"]) + b"".join(
        _pb(num, w) for name, (num, _b, _w) in CRIU_XSAVE.items() for w in x.get(name, [])
    )
    f = b"".join(
        _pb(n, fpregs[k])
        for n, k in enumerate(("cwd", "swd", "twd", "fop", "rip", "rdp", "mxcsr", "mxcsr_mask"), 1)
    )
    f += b"".join(_pb(9, w) for w in fpregs["st_space"]) + b"".join(_pb(10, w) for w in fpregs["xmm_space"])
    f += _pb(13, xs)
    gp = b"".join(_pb(n, {18: 0x33, 21: 0x2B}.get(n, 0)) for n in range(1, 28)) + _pb(28, 1)
    ti = _pb(1, 0) + _pb(2, gp) + _pb(3, f)
    tc = _pb(1, 1) + _pb(2, 0) + _pb(3, 0) + _pb(4, 0) + _pb(5, 0) + _pb(6, comm.encode())
    core = _pb(1, 1) + _pb(2, ti) + _pb(3, tc)
    return struct.pack("<II", 0x54564319, 0x55053847) + struct.pack("<i", len(core)) + core


# --- Firecracker v1.15+: snapshot-editor info-vmstate vcpu-states (Rust {:#?}) -----------


@dataclass
class RustStruct:
    """A value Rust's derived Debug prints as ``Name { field: value, ... }``."""

    name: str
    fields: list[tuple[str, Any]]


def rust_debug(value: Any, indent: int = 0) -> str:
    """Rust's pretty Debug (``{:#?}``): structs and lists one item per line, four spaces
    per level, a trailing comma after each item; integers in decimal; Some(x)/None."""
    pad, inner = " " * indent, " " * (indent + 4)
    if isinstance(value, RustStruct):
        if not value.fields:
            return value.name
        body = "".join(f"{inner}{k}: {rust_debug(v, indent + 4)},\n" for k, v in value.fields)
        return f"{value.name} {{\n{body}{pad}}}"
    if isinstance(value, list):
        if not value:
            return "[]"
        return "[\n" + "".join(f"{inner}{rust_debug(v, indent + 4)},\n" for v in value) + f"{pad}]"
    if isinstance(value, tuple) and value[0] == "Some":
        return f"Some(\n{inner}{rust_debug(value[1], indent + 4)},\n{pad})"
    if value is None:
        return "None"
    return str(value)


def firecracker_info_text(vcpus: list[VcpuSample]) -> bytes:
    """What ``snapshot-editor info-vmstate vcpu-states`` prints for these vCPUs (info.rs:
    "vcpu {i}:" then "{state:#?}"), written by Rust's pretty-Debug rules. The FamStructWrapper
    framing is vmm-sys-util's and was not seen in real output: the reader does not rely on it."""
    out = []
    for i, s in enumerate(vcpus):
        entries = [
            RustStruct(
                "kvm_cpuid_entry2",
                [
                    *zip(("function", "index", "flags", "eax", "ebx", "ecx", "edx"), e, strict=True),
                    ("padding", [0, 0, 0]),
                ],
            )
            for e in s.cpuid
        ]
        cpuid = RustStruct(
            "FamStructWrapper",
            [
                (
                    "mem_allocator",
                    [
                        RustStruct(
                            "kvm_cpuid2",
                            [("nent", len(entries)), ("padding", 0), ("entries", RustStruct("[]", []))],
                        )
                    ],
                ),
                ("entries", entries),
            ],
        )
        xcrs = RustStruct(
            "kvm_xcrs",
            [
                ("nr_xcrs", 1),
                ("flags", 0),
                (
                    "xcrs",
                    [
                        RustStruct(
                            "kvm_xcr", [("xcr", 0), ("reserved", 0), ("value", s.xcr0 if j == 0 else 0)]
                        )
                        for j in range(16)
                    ],
                ),
                ("padding", [0] * 16),
            ],
        )
        region = list(struct.unpack("<1024I", s.xsave[:4096]))
        extra = list(struct.unpack(f"<{len(s.xsave[4096:]) // 4}I", s.xsave[4096:]))
        xsave = RustStruct(
            "FamStructWrapper",
            [
                (
                    "mem_allocator",
                    [
                        RustStruct(
                            "kvm_xsave2",
                            [
                                ("len", len(extra)),
                                (
                                    "xsave",
                                    RustStruct(
                                        "kvm_xsave", [("region", region), ("extra", RustStruct("[]", []))]
                                    ),
                                ),
                            ],
                        )
                    ],
                ),
                ("entries", extra),
            ],
        )
        state = RustStruct(
            "VcpuState",
            [
                ("cpuid", cpuid),
                ("saved_msrs", [RustStruct("kvm_msrs", [("nmsrs", len(s.msrs)), ("pad", 0)])]),
                ("debug_regs", RustStruct("kvm_debugregs", [("db", [0] * 4), ("dr6", 0), ("dr7", 0)])),
                ("lapic", RustStruct("kvm_lapic_state", [("regs", [0] * 8)])),
                ("mp_state", RustStruct("kvm_mp_state", [("mp_state", 0)])),
                ("regs", RustStruct("kvm_regs", [("rax", 0), ("rip", 0)])),
                ("sregs", RustStruct("kvm_sregs", [("cr0", 0x80050033)])),
                ("vcpu_events", RustStruct("kvm_vcpu_events", [("flags", 0)])),
                ("xcrs", xcrs),
                ("xsave", xsave),
                ("tsc_khz", ("Some", 2_000_000)),
            ],
        )
        out.append(f"vcpu {i}:\n{rust_debug(state)}\n")
    return "".join(out).encode()
