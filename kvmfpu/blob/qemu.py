"""QEMU migration streams: the CPU sections (read by kvmfpu.blob.qemu_stream, which streams
the input and skips RAM), and the xsave buffer QEMU would build from them for a chosen
destination host.

The buffer follows x86_cpu_xsave_all_areas (target/i386/xsave_helper.c): zeroed; FCW from
fpuc, FSW with TOP from fpus, the abridged tag word from the tags, FOP/FIP/FDP, ST0-7,
MXCSR, XMM0-15; XSTATE_BV copied verbatim; every other component at the destination's own
CPUID offsets, when the destination has it (XTILEDATA only when the buffer is big enough).
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

from kvmfpu.arch import legacy
from kvmfpu.arch import xfeatures as xf
from kvmfpu.arch.layout import XsaveLayout
from kvmfpu.blob import qemu_stream
from kvmfpu.blob.errors import InputError
from kvmfpu.blob.sources import MAX_SIZE, Capture
from kvmfpu.blob.stream import Source, of_bytes
from kvmfpu.qemu.env import QemuEnv, xsave_all_areas

U64: Final = (1 << 64) - 1

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


def parse(data: bytes | Source, max_size: int = MAX_SIZE) -> list[CpuState]:
    """The ``cpu`` sections of a stream (its bytes, or a Source), by instance."""
    src = of_bytes(data, "QEMU stream") if isinstance(data, bytes) else data
    return [CpuState(i, v) for i, v in qemu_stream.parse(src, max_size).cpus]


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


def with_data(env: QemuEnv) -> int:
    """``held`` with x87 and SSE counted only when they differ from their initial state
    (FCW 37Fh, other x87 words and registers 0; XMM registers 0)."""
    mask = held(env) & ~xf.FPSSE
    if env.fpuc != legacy.FCW_INIT or env.fpus or env.fptag or any(
            m or e for m, e in env.fpregs) or env.fpop or env.fpip or env.fpdp:
        mask |= 1 << xf.XFeature.X87
    if any(z & ((1 << 128) - 1) for z in env.zmm[:16]):
        mask |= 1 << xf.XFeature.SSE
    return int(mask)


def captures(data: bytes | Source, max_size: int = MAX_SIZE) -> list[Capture]:
    """One capture per vCPU. QEMU lays the buffer out at the destination's CPUID offsets,
    so without ``--host`` it is shown for the packaged host with the fewest components
    that holds everything the vCPU has (XCR0, XSTATE_BV and registers with data)."""
    src = of_bytes(data, "QEMU stream") if isinstance(data, bytes) else data
    try:
        return _captures(src, max_size)
    except (KeyError, TypeError, AttributeError, IndexError, ValueError, RecursionError,
            OverflowError, struct.error) as exc:
        if isinstance(exc, InputError):
            raise
        # The JSON description is part of the input: any shape can arrive.
        raise InputError(f"QEMU stream: the VM description does not match the sections "
                         f"({type(exc).__name__}: {str(exc)[:80]})") from None


def _captures(src: Source, max_size: int) -> list[Capture]:
    from kvmfpu import cpus as hosts
    models = [hosts.load(n) for n in hosts.names()]
    models = sorted((m for m in models if m.has("xsave")),
                    key=lambda m: (bin(m.layout.user_mask).count("1"), m.name))
    parsed = qemu_stream.parse(src, max_size)
    devices = parsed.desc.get("devices", [])
    under_kvm = isinstance(devices, list) and any(
        isinstance(d, dict) and d.get("name") == "kvmclock" for d in devices)
    out = []
    for instance, values in parsed.cpus:
        cpu = CpuState(instance, values)
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
        lost = with_data(env) & ~env.xstate_bv & (xcr0 | xf.FPSSE)
        if lost and not under_kvm:
            cap.restores_init = lost
            cap.notes.append(restore_note(lost))
        cap.rebuild = _rebuilder(env, xcr0)
        cap.reference_host = ref.name
        cap.container.setdefault("qemu_stream", _stream_facts(parsed))
        out.append(cap)
    return out


def restore_note(lost: int) -> str:
    """What a KVM destination does with registers whose XSTATE_BV bits a TCG source left
    clear. QEMU under TCG never updates env->xstate_bv (x86_cpu_reset sets it to 0,
    target/i386/cpu.c; only the KVM path's x86_cpu_xrstor_all_areas writes it), and
    x86_cpu_xsave_all_areas copies it verbatim into KVM_SET_XSAVE's buffer, whose XRSTOR
    loads the initial state of every component whose bit is clear."""
    return (f"no kvmclock section, so probably written under TCG, which leaves XSTATE_BV "
            f"without {xf.describe_mask(lost)} although those registers hold data: a KVM "
            "destination will restore their initial state (QEMU copies XSTATE_BV verbatim "
            "into KVM_SET_XSAVE's buffer)")


def _stream_facts(p: qemu_stream.Parsed) -> dict[str, Any]:
    """What the stream says about itself, for decode's container report."""
    return {"capabilities": p.capabilities, "ram_blocks": p.ram_blocks,
            "ram_bytes_skipped": p.ram_bytes_skipped, "read_as": "pipe" if p.piped else "file"}


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
