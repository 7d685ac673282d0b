"""QEMU migration streams: the CPU sections, read with the stream's own JSON description,
and the xsave buffer QEMU would build from them for a chosen destination host.

Stream format (QEMU migration/savevm.c, read the way scripts/analyze-migration.py reads it):
the ``QEVM`` magic and version 3; sections (START/FULL with id, name, instance and version;
PART/END with the id), each followed by a footer; the iterative ``ram`` section in RAM's
own encoding; at the end the VM description (section type 6, a length, JSON) naming every
field of every device section and its size. Integers are big-endian.

The buffer follows x86_cpu_xsave_all_areas (target/i386/xsave_helper.c): zeroed; FCW from
fpuc, FSW with TOP from fpus, the abridged tag word from the tags, FOP/FIP/FDP, ST0-7,
MXCSR, XMM0-15; XSTATE_BV copied verbatim; every other component at the destination's own
CPUID offsets, when the destination has it (XTILEDATA only when the buffer is big enough).
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

from kvmfpu.arch import legacy
from kvmfpu.arch import xfeatures as xf
from kvmfpu.arch.layout import XsaveLayout
from kvmfpu.blob.errors import InputError
from kvmfpu.blob.sources import Capture

EOF_, START, PART, END, FULL, SUBSECTION, VMDESC, CONFIGURATION, COMMAND, FOOTER = (
    0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x7E)
RAM_ZERO, RAM_MEM_SIZE, RAM_PAGE, RAM_EOS, RAM_CONTINUE = 0x02, 0x04, 0x08, 0x10, 0x20
RAM_UNSUPPORTED: Final = 0x40 | 0x100 | 0x200      # XBZRLE, COMPRESS_PAGE, MULTIFD


class _Reader:
    def __init__(self, data: bytes):
        self.data = data
        self.pos = 0

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise InputError(f"QEMU stream: truncated at byte {self.pos} (wanted {n} more)")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def uint(self, n: int) -> int:
        return int.from_bytes(self.take(n), "big")

    def peek(self) -> int:
        if self.pos >= len(self.data):
            raise InputError("QEMU stream: truncated before the end-of-file marker")
        return self.data[self.pos]

    def string(self) -> str:
        return self.take(self.uint(1)).decode("latin-1")


def _vmdesc(data: bytes) -> dict[str, Any]:
    at = data.rfind(b'{"page_size"')
    if at < 5 or data[at - 5] != VMDESC or int.from_bytes(data[at - 4:at], "big") != len(data) - at:
        raise InputError("QEMU stream without its JSON VM description (was it written by "
                         "QEMU with the description enabled?)")
    try:
        desc: dict[str, Any] = json.loads(data[at:])
    except ValueError as exc:
        raise InputError(f"QEMU stream: unreadable VM description: {exc}") from None
    return desc


def _fields(r: _Reader, fields: list[dict[str, Any]], out: dict[str, Any]) -> None:
    for f in fields:
        count = f.get("array_len")
        values = [_one(r, f) for _ in range(count if count is not None else 1)]
        out[f["name"]] = values if count is not None else values[0]


def _one(r: _Reader, f: dict[str, Any]) -> Any:
    kind = f.get("type")
    if kind == "struct":
        inner: dict[str, Any] = {"__vmsd__": f["struct"].get("vmsd_name")}
        _vmsd(r, f["struct"], inner)
        return inner
    if kind == "tmp":
        inner = {}
        _fields(r, f.get("fields", []), inner)
        return inner
    size = int(f.get("size", 0))
    if kind in ("uint8", "uint16", "uint32", "uint64", "int8", "int16", "int32", "int64",
                "bool", "be16", "be32", "be64"):
        return int.from_bytes(r.take(size), "big", signed=kind.startswith("int"))
    return r.take(size)


def _vmsd(r: _Reader, desc: dict[str, Any], out: dict[str, Any]) -> None:
    _fields(r, desc.get("fields", []), out)
    for sub in desc.get("subsections", []):
        if r.peek() != SUBSECTION:
            raise InputError(f"QEMU stream: subsection {sub.get('vmsd_name')} missing at "
                             f"byte {r.pos}")
        r.take(1)
        name = r.string()
        r.uint(4)
        if name != sub.get("vmsd_name"):
            raise InputError(f"QEMU stream: subsection {name!r} where the description has "
                             f"{sub.get('vmsd_name')!r}")
        inner: dict[str, Any] = {}
        _vmsd(r, sub, inner)
        out[name] = inner


def _ram(r: _Reader, page_size: int) -> None:
    while True:
        addr = r.uint(8)
        flags = addr & (page_size - 1)
        if flags & RAM_MEM_SIZE:
            total = addr & ~(page_size - 1)
            seen = 0
            while seen < total:
                r.string()
                seen += r.uint(8)
            continue
        if flags & RAM_EOS:
            return
        if flags & RAM_UNSUPPORTED:
            raise InputError(f"QEMU stream: RAM page flags {flags:#x} (compression, XBZRLE or "
                             "multifd) are not supported")
        if not flags & RAM_CONTINUE:
            r.string()
        if flags & RAM_ZERO:
            r.take(1)
        elif flags & RAM_PAGE:
            r.take(page_size)
        else:
            raise InputError(f"QEMU stream: unknown RAM page flags {flags:#x}")


@dataclass
class CpuState:
    """One ``cpu`` section: the fields QEMU migrates, by their description names."""

    instance: int
    fields: dict[str, Any] = field(default_factory=dict)

    def find(self, *names: str) -> Any:
        """The first field whose name ends with one of ``names``, searching subsections."""
        def walk(d: dict[str, Any]) -> Any:
            for k, v in d.items():
                if any(k == n or k.endswith("." + n) for n in names):
                    return v
            for v in d.values():
                if isinstance(v, dict):
                    found = walk(v)
                    if found is not None:
                        return found
            return None
        return walk(self.fields)

    def vectors(self, vmsd: str) -> list[dict[str, Any]]:
        """The entries of the register array whose struct is ``vmsd`` (xmm_reg, ymmh_reg,
        zmmh_reg, hi16_zmm_reg)."""
        def walk(d: dict[str, Any]) -> list[dict[str, Any]] | None:
            for v in d.values():
                if isinstance(v, list) and v and isinstance(v[0], dict) \
                        and v[0].get("__vmsd__") == vmsd:
                    return v
                if isinstance(v, dict):
                    found = walk(v)
                    if found is not None:
                        return found
            return None
        return walk(self.fields) or []

    def int(self, *names: str, default: int = 0) -> int:
        v = self.find(*names)
        return int(v) if isinstance(v, int) else default


def _header(data: bytes) -> None:
    if len(data) < 8 or data[:4] != b"QEVM":
        raise InputError("not a QEMU migration stream (no QEVM magic)")
    version = int.from_bytes(data[4:8], "big")
    if version != 3:
        raise InputError(f"QEMU stream version {version} (kvmfpu reads version 3)")


def parse(data: bytes) -> list[CpuState]:
    """The ``cpu`` sections of a stream, by instance."""
    _header(data)
    desc = _vmdesc(data)
    page_size = int(desc.get("page_size", 4096))
    devices = {(d["name"], d.get("instance_id", 0)): d for d in desc.get("devices", [])}
    r = _Reader(data)
    r.pos = 8
    sections: dict[int, str] = {}
    cpus: list[CpuState] = []
    while True:
        kind = r.uint(1)
        if kind in (EOF_, VMDESC):
            break
        if kind == CONFIGURATION:
            r.take(r.uint(4))
            conf = devices.get(("configuration", 0))
            if conf and r.peek() == SUBSECTION:
                _vmsd(r, {"subsections": conf.get("subsections", [])}, {})
            continue
        if kind == FOOTER:
            r.uint(4)
            continue
        if kind == COMMAND:
            r.uint(2)
            r.take(r.uint(2))
            continue
        if kind in (START, FULL):
            sid = r.uint(4)
            name = r.string()
            instance = r.uint(4)
            r.uint(4)
            sections[sid] = name
        elif kind in (PART, END):
            sid = r.uint(4)
            if sid not in sections:
                raise InputError(f"QEMU stream: section id {sid} continues a section never "
                                 "started")
            name, instance = sections[sid], -1
        else:
            raise InputError(f"QEMU stream: unknown section type {kind:#x} at byte {r.pos - 1}")
        if name == "ram":
            _ram(r, page_size)
            continue
        device = devices.get((name, instance))
        if device is None:
            raise InputError(f"QEMU stream: no description for section {name!r} instance "
                             f"{instance}")
        values: dict[str, Any] = {}
        _vmsd(r, device, values)
        if name == "cpu":
            cpus.append(CpuState(instance, values))
    if not cpus:
        raise InputError("the QEMU stream has no cpu section")
    return cpus


def xsave_buffer(cpu: CpuState, layout: XsaveLayout, size: int) -> bytes:
    """What QEMU's kvm_put_xsave hands KVM_SET_XSAVE on a host with ``layout``."""
    buf = bytearray(size)
    # cpu_pre_save: fpus_vmstate is FSW with TOP; fptag_vmstate bit i = !fptags[i], which
    # is the abridged tag word XSAVE stores.
    fsw = cpu.int("fpus_vmstate")
    ftw = cpu.int("fptag_vmstate") & 0xFF
    struct.pack_into("<HHB", buf, 0, cpu.int("fpuc"), fsw, ftw)
    struct.pack_into("<HQQ", buf, legacy.FOP, cpu.int("fpop"), cpu.int("fpip"), cpu.int("fpdp"))
    struct.pack_into("<I", buf, legacy.MXCSR, cpu.int("mxcsr"))
    regs = cpu.find("fpregs")
    for i, reg in enumerate(regs or []):
        tmp = reg.get("tmp", reg)
        struct.pack_into("<QH", buf, legacy.ST_SPACE + 16 * i, int(tmp.get("tmp_mant", 0)),
                         int(tmp.get("tmp_exp", 0)))
    q = "_q_ZMMReg"
    for i, reg in enumerate(cpu.vectors("xmm_reg")[:16]):
        struct.pack_into("<QQ", buf, legacy.XMM_SPACE + 16 * i, reg[f"{q}[0]"], reg[f"{q}[1]"])
    struct.pack_into("<Q", buf, legacy.XSTATE_BV, cpu.int("xstate_bv"))

    def at(bit: int) -> int | None:
        c = layout.components.get(bit)
        if c is None or c.supervisor or c.offset + c.size > size:
            return None
        return c.offset
    if (o := at(xf.XFeature.YMM)) is not None:
        for i, reg in enumerate(cpu.vectors("ymmh_reg")[:16]):
            struct.pack_into("<QQ", buf, o + 16 * i, reg[f"{q}[2]"], reg[f"{q}[3]"])
    if (o := at(xf.XFeature.BNDREGS)) is not None and at(xf.XFeature.BNDCSR) is not None:
        for i, b in enumerate(cpu.find("bnd_regs") or []):
            struct.pack_into("<QQ", buf, o + 16 * i, int(b.get("lb", 0)), int(b.get("ub", 0)))
        struct.pack_into("<QQ", buf, at(xf.XFeature.BNDCSR) or 0, cpu.int("bndcs_regs.cfgu"),
                         cpu.int("bndcs_regs.sts"))
    if (o := at(xf.XFeature.OPMASK)) is not None:
        for i, k in enumerate(cpu.find("opmask_regs") or []):
            struct.pack_into("<Q", buf, o + 8 * i, int(k))
        if (z := at(xf.XFeature.ZMM_HI256)) is not None:
            for i, reg in enumerate(cpu.vectors("zmmh_reg")[:16]):
                struct.pack_into("<QQQQ", buf, z + 32 * i, *(reg[f"{q}[{j}]"] for j in (4, 5, 6, 7)))
        if (h := at(xf.XFeature.HI16_ZMM)) is not None:
            for i, reg in enumerate(cpu.vectors("hi16_zmm_reg")[:16]):
                struct.pack_into("<8Q", buf, h + 64 * i, *(reg[f"{q}[{j}]"] for j in range(8)))
    if (o := at(xf.XFeature.PKRU)) is not None:
        struct.pack_into("<I", buf, o, cpu.int("pkru"))
    if (o := at(xf.XFeature.XTILECFG)) is not None:
        cfg = cpu.find("xtilecfg")
        if isinstance(cfg, bytes):
            buf[o:o + len(cfg)] = cfg
    if (o := at(xf.XFeature.XTILEDATA)) is not None:
        data = cpu.find("xtiledata")
        if isinstance(data, bytes):
            buf[o:o + len(data)] = data
    return bytes(buf)


def buffer_size(layout: XsaveLayout, xcr0: int) -> int:
    """kvm_init_xsave: KVM_CAP_XSAVE2's size rounded up to 4096, at least 4096."""
    need = layout.standard_size(xcr0)
    return max(4096, (need + 4095) & ~4095)


def held(cpu: CpuState) -> int:
    """The user components whose registers hold data in the stream (QEMU sends a
    component's subsection only when the guest CPU has it; zeros are init state)."""
    mask = xf.FPSSE
    q = "_q_ZMMReg"
    if any(r[f"{q}[2]"] or r[f"{q}[3]"] for r in cpu.vectors("ymmh_reg")):
        mask |= xf.YMM
    if any(int(b.get("lb", 0)) or int(b.get("ub", 0)) for b in cpu.find("bnd_regs") or []) \
            or cpu.int("bndcs_regs.cfgu") or cpu.int("bndcs_regs.sts"):
        mask |= xf.BNDREGS | xf.BNDCSR
    if any(int(k) for k in cpu.find("opmask_regs") or []):
        mask |= xf.OPMASK
    if any(any(r[f"{q}[{j}]"] for j in range(4, 8)) for r in cpu.vectors("zmmh_reg")):
        mask |= xf.ZMM_HI256
    if any(any(r[f"{q}[{j}]"] for j in range(8)) for r in cpu.vectors("hi16_zmm_reg")):
        mask |= xf.HI16_ZMM
    if cpu.int("pkru"):
        mask |= xf.PKRU
    for name, bit in (("xtilecfg", xf.XTILECFG), ("xtiledata", xf.XTILEDATA)):
        value = cpu.find(name)
        if isinstance(value, bytes) and any(value):
            mask |= bit
    return mask


def captures(data: bytes) -> list[Capture]:
    """One capture per vCPU. QEMU lays the buffer out at the destination's CPUID offsets,
    so without ``--host`` it is shown for the packaged host with the fewest components
    that holds everything the vCPU has (XCR0, XSTATE_BV and registers with data)."""
    try:
        return _captures(data)
    except (KeyError, TypeError, AttributeError, IndexError, ValueError, RecursionError,
            struct.error) as exc:
        if isinstance(exc, InputError):
            raise
        # The JSON description is part of the input: any shape can arrive.
        raise InputError(f"QEMU stream: the VM description does not match the sections "
                         f"({type(exc).__name__}: {str(exc)[:80]})") from None


def _captures(data: bytes) -> list[Capture]:
    from kvmfpu import cpus as hosts
    models = [hosts.load(n) for n in hosts.names()]
    models = sorted((m for m in models if m.has("xsave")),
                    key=lambda m: (bin(m.layout.user_mask).count("1"), m.name))
    _header(data)
    desc = _vmdesc(data)
    under_kvm = any(d.get("name") == "kvmclock" for d in desc.get("devices", []))
    out = []
    for cpu in parse(data):
        xcr0 = cpu.int("xcr0", default=3)
        need = (xcr0 | cpu.int("xstate_bv") | held(cpu)) & ~xf.XCOMP_COMPACTED
        ref = next((m for m in models if not need & ~m.layout.user_mask), None)
        if ref is None:
            raise InputError(f"no packaged host holds the vCPU's {xf.describe_mask(need)}: "
                             "give --host")
        lay = ref.layout
        cap = Capture(xsave_buffer(cpu, lay, buffer_size(lay, xcr0)), f"QEMU cpu {cpu.instance}",
                      "qemu")
        cap.extra.update(xcr0=xcr0, xss=cpu.int("xss"), xfd=cpu.int("msr_xfd", "xfd"),
                         xfd_err=cpu.int("msr_xfd_err", "xfd_err"))
        cap.notes.append(f"guest XCR0 {xf.describe_mask(xcr0)}"
                         + (f", IA32_XFD {cap.extra['xfd']:#x}" if cap.extra["xfd"] else ""))
        cap.notes += _x87_order_note(cpu, under_kvm)
        cap.rebuild = _rebuilder(cpu, xcr0)
        cap.reference_host = ref.name
        out.append(cap)
    return out


def _x87_order_note(cpu: CpuState, under_kvm: bool) -> list[str]:
    """QEMU's fpregs array is copied into the ST slots verbatim (x86_cpu_xsave_all_areas),
    which suits KVM (x86_cpu_xrstor_all_areas fills it in ST order) but not TCG, whose
    fpregs are numbered physically (ST(i) is fpregs[(fpstt + i) & 7], target/i386/cpu.h)."""
    top = cpu.int("fpus_vmstate") >> 11 & 7
    valid = cpu.int("fptag_vmstate") & 0xFF
    if under_kvm or top == 0 or not valid:
        return []
    return [f"no kvmclock section, so probably written under TCG, where QEMU numbers x87 "
            f"registers physically: with TOP={top}, ST(i) is in slot (i+{top})&7 here, and "
            "the buffer QEMU hands KVM_SET_XSAVE after a TCG->KVM migration has the stack "
            "rotated"]


def _rebuilder(cpu: CpuState, xcr0: int) -> Callable[[XsaveLayout], bytes]:
    def build(layout: XsaveLayout) -> bytes:
        return xsave_buffer(cpu, layout, buffer_size(layout, xcr0))
    return build
