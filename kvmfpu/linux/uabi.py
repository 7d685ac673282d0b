"""Guest fpstate <-> the uABI (KVM_GET/SET_XSAVE) buffer, per kernel version.

5.16+ (struct fpu_guest, 69f6ed1d14c6): fpu_copy_guest_fpstate_to_uabi ->
__copy_xstate_to_uabi_buf(XSTATE_COPY_XSAVE) and fpu_copy_uabi_to_guest_fpstate ->
copy_uabi_to_xstate/validate_user_xstate_header (arch/x86/kernel/fpu/{core,xstate}.c,
read in 6.12.117). 5.15: KVM's own fill_xsave/load_xsave (arch/x86/kvm/x86.c), as quoted
by the 5.16 patch that removed them. 5.4 and 5.10 take the same paths: their
kvm_vcpu_ioctl_x86_set_xsave checks XSTATE_BV against the supported XCR0 (kvm_supported_xcr0(),
a global supported_xcr0 from 5.7) and MXCSR against mxcsr_feature_mask, and their fill_xsave
masks XSTATE_BV with guest_supported_xcr0 | FP | SSE and copies PKRU from vcpu->arch.pkru
inside the same per-feature loop (the 5.14 rework 20210611163111.931697147@linutronix.de
quotes the older loop). Copies follow precomputed plans (hot path).
"""

from __future__ import annotations

import struct
from typing import Any

from kvmfpu.arch import legacy
from kvmfpu.arch import xfeatures as xf
from kvmfpu.arch.xfeatures import XCOMP_COMPACTED, describe_mask
from kvmfpu.core.faults import PageFault
from kvmfpu.kvm.errors import HostOops, KvmError, einval
from kvmfpu.kvm.origins import cite
from kvmfpu.linux.fpstate import FpState, FpuGuest
from kvmfpu.linux.kernel import HostKernel
from kvmfpu.linux.uabi_plans import Buffer, OutPlan, Switches, in_plan, out_plan, switches
from kvmfpu.linux.uabi_plans import ext_plan as _ext_plan

__all__ = ["Buffer", "check_uabi_to_guest_fpstate", "check_xsave_5_15", "copy_guest_fpstate_to_uabi",
           "copy_guest_fpstate_to_uabi_into",
           "copy_uabi_to_guest_fpstate", "fill_xsave_5_15", "load_xsave_5_15", "short_buffer"]

_Q = struct.Struct("<Q")
_QQ = struct.Struct("<QQ")
_I = struct.Struct("<I")
_II = struct.Struct("<II")
_RESERVED = struct.Struct("<6Q")      # the header's 48 reserved bytes
_Z6 = (0,) * 6
#: What KVM_SET_XSAVE's checks read, in one unpack: MXCSR, XSTATE_BV, XCOMP_BV and the
#: header's 48 reserved bytes (the first 576 bytes of the buffer).
_SET_HEAD = struct.Struct("<24xI484xQQ48s")
_Z48 = bytes(48)
FPSSE = xf.FPSSE
LEGACY_MXCSR = xf.FP | xf.SSE | xf.YMM
PKRU_BIT = 9
#: sizeof(struct kvm_xsave).
KVM_XSAVE_SIZE = 4096


def _pkru_offset(k: HostKernel) -> int:
    return k.layout.components[PKRU_BIT].offset


# -- KVM_GET_XSAVE{2} -------------------------------------------------------------------------

def copy_guest_fpstate_to_uabi(k: HostKernel, gfpu: FpuGuest, size: int, xfeatures: int,
                               pkru: int) -> bytes:
    """fpu_copy_guest_fpstate_to_uabi (5.16+)."""
    if not k.cfg.has_xsave:
        return _copy_legacy_to_uabi(k, gfpu, size)
    plan, args = _out_args(k, gfpu, size, xfeatures, pkru)
    packed: bytes = plan.pack(*args)
    return packed if plan.whole else packed[:size]     # membuf_write stops at the buffer's end


def copy_guest_fpstate_to_uabi_into(k: HostKernel, gfpu: FpuGuest, xfeatures: int, pkru: int,
                                    out: bytearray) -> None:
    """fpu_copy_guest_fpstate_to_uabi (5.16+) of a struct kvm_xsave (4096 bytes) into the
    caller's buffer, packed in place (KVM_GET_XSAVE's raw ioctl: no intermediate bytes)."""
    if not k.cfg.has_xsave:
        out[:KVM_XSAVE_SIZE] = _copy_legacy_to_uabi(k, gfpu, KVM_XSAVE_SIZE)
        return
    plan, args = _out_args(k, gfpu, KVM_XSAVE_SIZE, xfeatures, pkru)
    if plan.whole:
        plan.pack_into(out, 0, *args)  # struct zero-fills the padding it spans
    else:
        out[:KVM_XSAVE_SIZE] = plan.pack(*args)[:KVM_XSAVE_SIZE]


def _copy_legacy_to_uabi(k: HostKernel, gfpu: FpuGuest, size: int) -> bytes:
    """A host without XSAVE: the legacy area, XSTATE_BV = FP|SSE."""
    base = gfpu.fpstate.off
    out = bytearray(max(size, legacy.EXTENDED))
    out[:legacy.LEGACY_SIZE] = k.mem[base:base + legacy.LEGACY_SIZE]
    _Q.pack_into(out, legacy.XSTATE_BV, FPSSE)   # "make it restorable on an XSAVE host"
    return bytes(out[:size] if size < len(out) else out)


def _out_args(k: HostKernel, gfpu: FpuGuest, size: int, xfeatures: int,
              pkru: int) -> tuple[OutPlan, list[Any]]:
    """__copy_xstate_to_uabi_buf's plan for the fpstate's header and its pack arguments."""
    fps = gfpu.fpstate
    mem, base = k.mem, fps.off
    sw = k.__dict__.get("_uabi_switches") or switches(k)
    k_bv, xcomp = _QQ.unpack_from(mem, base + legacy.XSTATE_BV)
    user = fps.user_xfeatures
    bv = k_bv & user & xfeatures
    if sw.amx_oops and user & xf.XTILEDATA and not bv & xf.XTILEDATA:
        raise HostOops(PageFault("__copy_xstate_to_uabi_buf",
                                 "copy from init_fpstate's XTILEDATA, which does not exist "
                                 "(NULL + offset)"),
                       ["kvm_arch_vcpu_ioctl", "fpu_copy_guest_fpstate_to_uabi",
                        "__copy_xstate_to_uabi_buf"],
                       "471f0aa7fa64 (6.1; 6.0.7)")
    write_pkru = bool(bv & xf.PKRU or (sw.pkru_always and user & xfeatures & xf.PKRU))
    # The legacy area (x87 or init_fpstate's, MXCSR, XMM), the software bytes, the header,
    # each extended component and PKRU (struct pkru_state {u32 pkru, pad}, from
    # vcpu->arch.pkru): one planned pack.
    plan = (sw.out_plans.get((bv, xcomp, write_pkru, size))
            or out_plan(k, sw, bv, xcomp, write_pkru, size))
    args = plan.args[:]
    fpstate = mem[base:]          # the plans' slices are relative to the fpstate
    for i, run in plan.runs:
        args[i] = fpstate[run].tobytes()
    args[plan.bv_at] = bv
    if write_pkru:
        args[plan.pkru_at] = pkru
    return plan, args


def fill_xsave_5_15(k: HostKernel, gfpu: FpuGuest, guest_supported_xcr0: int,
                    pkru: int) -> bytearray:
    """KVM's fill_xsave (5.15): the legacy region copied raw, XSTATE_BV = kernel BV &
    (guest-supported XCR0 | FP | SSE), components at their standard offsets, PKRU from
    vcpu->arch.pkru."""
    fps = gfpu.fpstate
    mem, base = k.mem, fps.off
    out = bytearray(4096)
    out[:legacy.LEGACY_SIZE] = mem[base:base + legacy.LEGACY_SIZE]
    if not k.cfg.has_xsave:
        _Q.pack_into(out, legacy.XSTATE_BV, FPSSE)
        return out
    bv = int(_Q.unpack_from(mem, base + legacy.XSTATE_BV)[0]) & (guest_supported_xcr0 | FPSSE)
    _Q.pack_into(out, legacy.XSTATE_BV, bv)
    xcomp = int(_Q.unpack_from(mem, base + legacy.XCOMP_BV)[0])
    for s, d, n in _ext_plan(k, bv, xcomp):
        out[d:d + n] = mem[base + s:base + s + n]
    if bv & xf.PKRU:
        _QQ.pack_into(out, _pkru_offset(k), pkru, 0)
    return out


# -- KVM_SET_XSAVE ----------------------------------------------------------------------------

def _mxcsr_check(k: HostKernel, ubuf: Buffer, function: str, why: str,
                 origin: str) -> None:
    mxcsr = int(_I.unpack_from(ubuf, legacy.MXCSR)[0])
    bad = mxcsr & ~k.cfg.mxcsr_feature_mask
    if bad:
        raise einval(function, f"MXCSR {mxcsr:#x} sets reserved bits {bad:#x} "
                               f"(mxcsr_feature_mask {k.cfg.mxcsr_feature_mask:#x}){why}",
                     cite(origin))


def check_uabi_to_guest_fpstate(k: HostKernel, gfpu: FpuGuest, ubuf: Buffer, xcr0: int,
                                user_xfeatures_origin: str,
                                user_xfeatures_commit: str = "uabi_header") -> int:
    """The checks of fpu_copy_uabi_to_guest_fpstate, validate_user_xstate_header and
    copy_uabi_to_xstate's MXCSR test (5.16+), in the kernel's order; returns XSTATE_BV.

    A buffer that passes all of them at once (their conjunction, in one unpack of what
    they read) returns at once; any other goes through them one by one, so a refusal
    names the first check the kernel fails and the Proxmox PKRU strip applies."""
    fps = gfpu.fpstate
    sw = k.__dict__.get("_uabi_switches") or switches(k)
    if sw.has_xsave:
        mxcsr, bv, cb, reserved = _SET_HEAD.unpack_from(ubuf)
        # Stricter than the kernel where it may be (XFD bits refused even where the kernel
        # does not look): those buffers take the ordered checks below, never a wrong pass.
        if not (bv & ~(xcr0 & fps.user_xfeatures) or bv & fps.xfd or cb
                or reserved != _Z48 or (bv & LEGACY_MXCSR and mxcsr & sw.mxcsr_reserved)):
            return int(bv)
    return _ordered_checks(k, sw, fps, ubuf, xcr0, user_xfeatures_origin,
                           user_xfeatures_commit)


def _ordered_checks(k: HostKernel, sw: Switches, fps: FpState, ubuf: Buffer, xcr0: int,
                    user_xfeatures_origin: str, user_xfeatures_commit: str) -> int:
    """check_uabi_to_guest_fpstate's checks one at a time, in the kernel's order."""
    if not k.cfg.has_xsave:
        bv = int(_Q.unpack_from(ubuf, legacy.XSTATE_BV)[0])
        if bv & ~FPSSE:
            raise einval("fpu_copy_uabi_to_guest_fpstate",
                         f"host without XSAVE: XSTATE_BV {describe_mask(bv)} beyond FP|SSE",
                         cite("uabi_copy"))
        _mxcsr_check(k, ubuf, "fpu_copy_uabi_to_guest_fpstate", "", "uabi_copy")
        return bv
    bv, cb = _QQ.unpack_from(ubuf, legacy.XSTATE_BV)
    if sw.pve_pkru_mask and bv & xf.PKRU and not fps.user_xfeatures & xf.PKRU:
        # Proxmox's kvm_vcpu_ioctl_x86_set_xsave (pve-kernel 1559d22) clears the PKRU bit a
        # leaky source sent when the vCPU's CPUID lacks PKRU. The model reads that from
        # user_xfeatures, which is the guest CPUID's XCR0 | FP | SSE wherever the strip
        # matters (ad856280ddea active); with 8647c52e9504 nothing rejects the bit anyway.
        bv &= ~xf.PKRU
    if bv & ~xcr0:
        raise einval("fpu_copy_uabi_to_guest_fpstate",
                     f"XSTATE_BV sets {describe_mask(bv & ~xcr0)} outside KVM's supported XCR0 "
                     f"{xcr0:#x}", cite("uabi_copy"))
    if sw.xfd_clears and bv & fps.xfd:
        raise einval("fpu_copy_uabi_to_guest_fpstate",
                     f"WARN_ON_ONCE: XSTATE_BV {bv:#x} has XFD-disabled {fps.xfd & bv:#x}",
                     cite("xfd_warn"))
    # validate_user_xstate_header
    if bv & ~fps.user_xfeatures:
        raise einval("validate_user_xstate_header",
                     f"XSTATE_BV sets {describe_mask(bv & ~fps.user_xfeatures)} outside "
                     f"fpstate->user_xfeatures {fps.user_xfeatures:#x} ({user_xfeatures_origin})",
                     cite(user_xfeatures_commit))
    if cb:
        raise einval("validate_user_xstate_header",
                     f"XCOMP_BV is {cb:#x}: userspace must use the uncompacted format",
                     cite("uabi_xcomp_bv"))
    if _RESERVED.unpack_from(ubuf, legacy.HEADER_RESERVED) != _Z6:
        raise einval("validate_user_xstate_header", "reserved header bytes 16-63 are not zero",
                     cite("uabi_header"))
    if bv & LEGACY_MXCSR and _I.unpack_from(ubuf, legacy.MXCSR)[0] & ~k.cfg.mxcsr_feature_mask:
        _mxcsr_check(k, ubuf, "copy_uabi_to_xstate",
                     " (checked because XSTATE_BV has FP, SSE or YMM)", "uabi_mxcsr")
    return int(bv)


def copy_uabi_to_guest_fpstate(k: HostKernel, gfpu: FpuGuest, ubuf: Buffer, xcr0: int,
                               user_xfeatures_origin: str,
                               user_xfeatures_commit: str = "uabi_header") -> int | None:
    """fpu_copy_uabi_to_guest_fpstate (5.16+). Returns the new PKRU when XSTATE_BV[9] is set
    (KVM then updates vcpu->arch.pkru), None to leave it untouched; raises KvmError."""
    bv = check_uabi_to_guest_fpstate(k, gfpu, ubuf, xcr0, user_xfeatures_origin,
                                     user_xfeatures_commit)
    fps = gfpu.fpstate
    mem, base = k.mem, fps.off
    if not k.cfg.has_xsave:
        mem[base:base + legacy.LEGACY_SIZE] = ubuf[:legacy.LEGACY_SIZE]
        return None
    k_bv, xcomp = _QQ.unpack_from(mem, base + legacy.XSTATE_BV)
    sw = k.__dict__.get("_uabi_switches") or switches(k)
    # MXCSR alone (YMM without FP), the x87 area with MXCSR, the XMM registers, each
    # extended component and PKRU: one planned copy per contiguous run.
    fpstate = mem[base:]          # the plans' slices are relative to the fpstate
    for into, src in sw.in_plans.get((bv, xcomp)) or in_plan(k, sw, bv, xcomp):
        fpstate[into] = ubuf[src]
    pkru = int(_I.unpack_from(ubuf, sw.pkru_offset)[0]) if bv & xf.PKRU else None
    _Q.pack_into(mem, base + legacy.XSTATE_BV, (k_bv & xf.SUPERVISOR_MASK) | bv)
    return pkru


def check_xsave_5_15(k: HostKernel, ubuf: Buffer, supported_xcr0: int) -> int:
    """kvm_vcpu_ioctl_x86_set_xsave's checks (5.15): returns XSTATE_BV."""
    bv = int(_Q.unpack_from(ubuf, legacy.XSTATE_BV)[0])
    if not k.cfg.has_xsave:
        if bv & ~FPSSE:
            raise einval("kvm_vcpu_ioctl_x86_set_xsave",
                         f"host without XSAVE: XSTATE_BV {describe_mask(bv)} beyond FP|SSE",
                         cite("set_xsave_no_xsave"))
        _mxcsr_check(k, ubuf, "kvm_vcpu_ioctl_x86_set_xsave", "", "set_xsave_5_15_mxcsr")
        return bv
    if bv & ~supported_xcr0:
        raise einval("kvm_vcpu_ioctl_x86_set_xsave",
                     f"XSTATE_BV sets {describe_mask(bv & ~supported_xcr0)} outside supported "
                     f"XCR0 {supported_xcr0:#x}", cite("set_xsave_5_15_xcr0"))
    _mxcsr_check(k, ubuf, "kvm_vcpu_ioctl_x86_set_xsave", " (5.15 always checks MXCSR)",
                 "set_xsave_5_15_mxcsr")
    return bv


def load_xsave_5_15(k: HostKernel, gfpu: FpuGuest, ubuf: Buffer,
                    supported_xcr0: int) -> int | None:
    """KVM's kvm_vcpu_ioctl_x86_set_xsave + load_xsave (5.15)."""
    bv = check_xsave_5_15(k, ubuf, supported_xcr0)
    fps = gfpu.fpstate
    mem, base = k.mem, fps.off
    mem[base:base + legacy.LEGACY_SIZE] = ubuf[:legacy.LEGACY_SIZE]
    if not k.cfg.has_xsave:
        return None
    xcomp = (k.cfg.xcr0 | XCOMP_COMPACTED) if k.compacted else 0
    _QQ.pack_into(mem, base + legacy.XSTATE_BV, bv, xcomp)
    for s, d, n in _ext_plan(k, bv, xcomp):
        mem[base + s:base + s + n] = ubuf[d:d + n]
    if bv & xf.PKRU:
        return int(_I.unpack_from(ubuf, _pkru_offset(k))[0])
    return None


def short_buffer(length: int, need: int, function: str) -> KvmError:
    import errno
    return KvmError(errno.EFAULT, function,
                    f"the buffer is {length} bytes but the kernel copies {need} (uabi_size)")
