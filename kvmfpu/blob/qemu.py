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
from kvmfpu.qemu.env import QemuEnv, xsave_all_areas

EOF_, START, PART, END, FULL, SUBSECTION, VMDESC, CONFIGURATION, COMMAND, FOOTER = (
    0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x7E)
RAM_ZERO, RAM_MEM_SIZE, RAM_PAGE, RAM_EOS, RAM_CONTINUE = 0x02, 0x04, 0x08, 0x10, 0x20
RAM_UNSUPPORTED: Final = 0x40 | 0x100 | 0x200      # XBZRLE, COMPRESS_PAGE, MULTIFD
U64: Final = (1 << 64) - 1
#: The stream's bytes for each integer type: QEMU's VMStateInfo get functions read fixed
#: widths whatever the field's size (migration/vmstate-types.c: get_uint64 is qemu_get_be64).
INT_WIDTHS: Final = {"uint8": 1, "uint16": 2, "uint32": 4, "uint64": 8, "int8": 1, "int16": 2,
                     "int32": 4, "int64": 8, "bool": 1, "be16": 2, "be32": 4, "be64": 8}
#: The RAM section's flags sit in the low bits of each page address (up to
#: RAM_SAVE_FLAG_MULTIFD_FLUSH 0x200, migration/ram.c), so a page is at least 1 KiB; 64 KiB
#: bounds QEMU's target pages (kvmfpu reads x86 streams: 4 KiB). The upper bound is kvmfpu's.
PAGE_SIZES: Final = tuple(1 << b for b in range(10, 17))
#: Field values decoded per stream byte: zero-size fields cost no bytes, so an ``array_len``
#: of 1e12 on one would run for hours; a real stream decodes far fewer values than bytes.
WORK_PER_BYTE: Final = 1
WORK_SLACK: Final = 1 << 16


class _Reader:
    def __init__(self, data: bytes):
        self.data = data
        self.pos = 0
        self.work = 0
        self.budget = WORK_PER_BYTE * len(data) + WORK_SLACK

    def spend(self, n: int) -> None:
        """Count ``n`` field values decoded against the stream's budget."""
        self.work += n
        if self.work > self.budget:
            raise InputError(f"QEMU stream: the VM description asks for more than "
                             f"{self.budget} field values from a {len(self.data)}-byte "
                             "stream (array_len on empty fields?)")

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
    except RecursionError:
        raise InputError("QEMU stream: the VM description is nested too deeply") from None
    return desc


def _count(r: _Reader, f: dict[str, Any], key: str, default: int) -> int:
    """A non-negative integer from the description, at most the stream's length (no field
    or array in it can be larger)."""
    value = f.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= len(r.data):
        raise InputError(f"QEMU stream: field {str(f.get('name'))[:40]!r} has {key} "
                         f"{str(value)[:40]}: not a count this {len(r.data)}-byte stream holds")
    return value


def _fields(r: _Reader, fields: list[dict[str, Any]], out: dict[str, Any]) -> None:
    for f in fields:
        count = f.get("array_len")
        n = _count(r, f, "array_len", 1) if count is not None else 1
        r.spend(n)
        values = [_one(r, f) for _ in range(n)]
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
    size = _count(r, f, "size", 0)
    if isinstance(kind, str) and kind in INT_WIDTHS:
        if size != INT_WIDTHS[kind]:
            raise InputError(f"QEMU stream: field {str(f.get('name'))[:40]!r} of type {kind} "
                             f"has size {size}; QEMU reads {INT_WIDTHS[kind]} bytes for it")
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
        """The field as an unsigned 64-bit value (an int64 field holding -1 is 2**64-1)."""
        v = self.find(*names)
        return int(v) & U64 if isinstance(v, int) else default


def _u64(value: Any) -> int:
    """A register word from a field: an integer, taken as unsigned 64 bits."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise InputError(f"QEMU stream: a register field holds {type(value).__name__}, not an "
                         "integer")
    return value & U64


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
    page_size = desc.get("page_size", 4096)
    if isinstance(page_size, bool) or page_size not in PAGE_SIZES:
        raise InputError(f"QEMU stream: page_size {str(page_size)[:40]} is not a power of two "
                         f"from {PAGE_SIZES[0]} to {PAGE_SIZES[-1]}")
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


def env_of(cpu: CpuState) -> QemuEnv:
    """The CPUX86State fields a ``cpu`` section carries (machine.c's vmstate_x86_cpu and its
    subsections; absent subsections leave QEMU's reset values)."""
    q = "_q_ZMMReg"
    env = QemuEnv(fpuc=cpu.int("fpuc", default=legacy.FCW_INIT),
                  # cpu_pre_save: fpus_vmstate is FSW with TOP; fptag_vmstate bit i =
                  # !fptags[i], the abridged tag word XSAVE stores.
                  fpus=cpu.int("fpus_vmstate"), fptag=cpu.int("fptag_vmstate") & 0xFF,
                  fpop=cpu.int("fpop"), fpip=cpu.int("fpip"), fpdp=cpu.int("fpdp"),
                  mxcsr=cpu.int("mxcsr", default=legacy.MXCSR_INIT),
                  xstate_bv=cpu.int("xstate_bv"), xcr0=cpu.int("xcr0", default=xf.FP),
                  xss=cpu.int("xss"), xfd=cpu.int("msr_xfd", "xfd"),
                  xfd_err=cpu.int("msr_xfd_err", "xfd_err"), pkru=cpu.int("pkru"),
                  bndcfgu=cpu.int("bndcs_regs.cfgu"), bndstatus=cpu.int("bndcs_regs.sts"))
    regs = cpu.find("fpregs") or []
    # Every word masked to its register's width: a field declared int64 may hold -1, and
    # none may reach past its register into the next (the stream is input).
    env.fpregs = [(_u64(r.get("tmp", r).get("tmp_mant", 0)),
                   _u64(r.get("tmp", r).get("tmp_exp", 0)) & 0xFFFF)
                  for r in regs[:8]] + [(0, 0)] * (8 - min(len(regs), 8))
    zmm = [0] * 32
    for i, r in enumerate(cpu.vectors("xmm_reg")[:16]):
        zmm[i] |= _u64(r[f"{q}[1]"]) << 64 | _u64(r[f"{q}[0]"])
    for i, r in enumerate(cpu.vectors("ymmh_reg")[:16]):
        zmm[i] |= (_u64(r[f"{q}[3]"]) << 64 | _u64(r[f"{q}[2]"])) << 128
    for i, r in enumerate(cpu.vectors("zmmh_reg")[:16]):
        zmm[i] |= sum(_u64(r[f"{q}[{j}]"]) << 64 * (j - 4) for j in range(4, 8)) << 256
    for i, r in enumerate(cpu.vectors("hi16_zmm_reg")[:16]):
        zmm[16 + i] = sum(_u64(r[f"{q}[{j}]"]) << 64 * j for j in range(8))
    env.zmm = zmm
    env.opmask = ([_u64(k) for k in cpu.find("opmask_regs") or []] + [0] * 8)[:8]
    env.bnd = ([(_u64(b.get("lb", 0)), _u64(b.get("ub", 0))) for b in cpu.find("bnd_regs") or []]
               + [(0, 0)] * 4)[:4]
    for name in ("xtilecfg", "xtiledata"):
        value = cpu.find(name)
        if isinstance(value, bytes):
            setattr(env, name, value)
    return env


def xsave_buffer(cpu: CpuState, layout: XsaveLayout, size: int) -> bytes:
    """What QEMU's kvm_put_xsave hands KVM_SET_XSAVE on a host with ``layout``."""
    return xsave_all_areas(env_of(cpu), layout, size)


def buffer_size(layout: XsaveLayout, xcr0: int) -> int:
    """kvm_init_xsave: KVM_CAP_XSAVE2's size rounded up to 4096, at least 4096."""
    need = layout.standard_size(xcr0)
    return max(4096, (need + 4095) & ~4095)


def held(env: QemuEnv) -> int:
    """The user components whose registers hold data (zeros are their init state)."""
    mask = xf.FPSSE
    if any(z >> 128 & ((1 << 128) - 1) for z in env.zmm[:16]):
        mask |= xf.YMM
    if any(lb or ub for lb, ub in env.bnd) or env.bndcfgu or env.bndstatus:
        mask |= xf.BNDREGS | xf.BNDCSR
    if any(env.opmask):
        mask |= xf.OPMASK
    if any(z >> 256 for z in env.zmm[:16]):
        mask |= xf.ZMM_HI256
    if any(env.zmm[16:]):
        mask |= xf.HI16_ZMM
    if env.pkru:
        mask |= xf.PKRU
    if any(env.xtilecfg):
        mask |= xf.XTILECFG
    if any(env.xtiledata):
        mask |= xf.XTILEDATA
    return mask


def captures(data: bytes) -> list[Capture]:
    """One capture per vCPU. QEMU lays the buffer out at the destination's CPUID offsets,
    so without ``--host`` it is shown for the packaged host with the fewest components
    that holds everything the vCPU has (XCR0, XSTATE_BV and registers with data)."""
    try:
        return _captures(data)
    except (KeyError, TypeError, AttributeError, IndexError, ValueError, RecursionError,
            OverflowError, struct.error) as exc:
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
        env = env_of(cpu)
        xcr0 = cpu.int("xcr0", default=3)
        need = (xcr0 | env.xstate_bv | held(env)) & ~xf.XCOMP_COMPACTED
        ref = next((m for m in models if not need & ~m.layout.user_mask), None)
        if ref is None:
            raise InputError(f"no packaged host holds the vCPU's {xf.describe_mask(need)}: "
                             "give --host")
        lay = ref.layout
        cap = Capture(xsave_all_areas(env, lay, buffer_size(lay, xcr0)),
                      f"QEMU cpu {cpu.instance}", "qemu")
        cap.extra.update(xcr0=xcr0, xss=env.xss, xfd=env.xfd, xfd_err=env.xfd_err)
        cap.notes.append(f"guest XCR0 {xf.describe_mask(xcr0)}"
                         + (f", IA32_XFD {cap.extra['xfd']:#x}" if cap.extra["xfd"] else ""))
        cap.notes += _x87_order_note(cpu, under_kvm)
        cap.rebuild = _rebuilder(env, xcr0)
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


def _rebuilder(env: QemuEnv, xcr0: int) -> Callable[[XsaveLayout], bytes]:
    def build(layout: XsaveLayout) -> bytes:
        return xsave_all_areas(env, layout, buffer_size(layout, xcr0))
    return build
