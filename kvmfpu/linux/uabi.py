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

from kvmfpu.arch import legacy
from kvmfpu.arch import xfeatures as xf
from kvmfpu.arch.xfeatures import XCOMP_COMPACTED, bits, describe_mask
from kvmfpu.core.faults import PageFault
from kvmfpu.kvm.errors import HostOops, KvmError, einval
from kvmfpu.kvm.origins import cite
from kvmfpu.linux.fpstate import FpuGuest
from kvmfpu.linux.kernel import HostKernel

_Q = struct.Struct("<Q")
_QQ = struct.Struct("<QQ")
_I = struct.Struct("<I")
_II = struct.Struct("<II")
_Z48 = bytes(48)
FPSSE = xf.FPSSE
LEGACY_MXCSR = xf.FP | xf.SSE | xf.YMM
PKRU_BIT = 9


def _ext_plan(k: HostKernel, bv: int, xcomp_bv: int) -> tuple[tuple[int, int, int], ...]:
    """(offset in the kernel buffer, offset in the uABI buffer, size) for each extended
    component of ``bv`` except PKRU, coalesced."""
    key = (bv, xcomp_bv)
    cache: dict[tuple[int, int], tuple[tuple[int, int, int], ...]] = k.__dict__.setdefault(
        "_uabi_plans", {})
    plan = cache.get(key)
    if plan is not None:
        return plan
    comps = k.layout.components
    if k.compacted:
        offsets = k.layout.compacted(xcomp_bv)[0]
    out: list[tuple[int, int, int]] = []
    for b in bits(bv & ~FPSSE & ~xf.PKRU):
        c = comps[b]
        src = offsets[b] if k.compacted else c.offset
        if out and out[-1][0] + out[-1][2] == src and out[-1][1] + out[-1][2] == c.offset:
            s, d, n = out[-1]
            out[-1] = (s, d, n + c.size)
        else:
            out.append((src, c.offset, c.size))
    plan = cache[key] = tuple(out)
    return plan


def _pkru_offset(k: HostKernel) -> int:
    return k.layout.components[PKRU_BIT].offset


# -- KVM_GET_XSAVE{2} -------------------------------------------------------------------------

def copy_guest_fpstate_to_uabi(k: HostKernel, gfpu: FpuGuest, size: int, xfeatures: int,
                               pkru: int) -> bytearray:
    """fpu_copy_guest_fpstate_to_uabi (5.16+)."""
    fps = gfpu.fpstate
    mem, base = k.mem, fps.off
    out = bytearray(max(size, legacy.EXTENDED))
    if not k.cfg.has_xsave:
        out[:legacy.LEGACY_SIZE] = mem[base:base + legacy.LEGACY_SIZE]
        _Q.pack_into(out, legacy.XSTATE_BV, FPSSE)   # "make it restorable on an XSAVE host"
        return out[:size] if size < len(out) else out
    k_bv = int(_Q.unpack_from(mem, base + legacy.XSTATE_BV)[0])
    bv = k_bv & fps.user_xfeatures & xfeatures
    prof = k.kernel
    if (prof.has("get_xsave2_amx_oops_bug") and fps.user_xfeatures & xf.XTILEDATA
            and not bv & xf.XTILEDATA):
        raise HostOops(PageFault("__copy_xstate_to_uabi_buf",
                                 "copy from init_fpstate's XTILEDATA, which does not exist "
                                 "(NULL + offset)"),
                       ["kvm_arch_vcpu_ioctl", "fpu_copy_guest_fpstate_to_uabi",
                        "__copy_xstate_to_uabi_buf"],
                       "471f0aa7fa64 (6.1; 6.0.7)")
    init = k.init_legacy
    if bv & xf.FP:
        out[0:24] = mem[base:base + 24]
        out[32:160] = mem[base + 32:base + 160]
    else:
        out[0:24] = init[0:24]
    out[24:32] = mem[base + 24:base + 32] if bv & (xf.SSE | xf.YMM) else init[24:32]
    if bv & xf.SSE:
        out[160:416] = mem[base + 160:base + 416]
    out[legacy.SW_RESERVED:legacy.HEADER] = k.sw_bytes
    _Q.pack_into(out, legacy.XSTATE_BV, bv)
    xcomp = int(_Q.unpack_from(mem, base + legacy.XCOMP_BV)[0])
    for s, d, n in _ext_plan(k, bv, xcomp):
        out[d:d + n] = mem[base + s:base + s + n]
    write_pkru = bv & xf.PKRU or (prof.has("pkru_always_written_bug")
                                  and fps.user_xfeatures & xfeatures & xf.PKRU)
    if write_pkru:
        _II.pack_into(out, _pkru_offset(k), pkru, 0)  # struct pkru_state {u32 pkru, pad}
    if len(out) > size:       # membuf_write stops at the buffer's end
        del out[size:]
    return out


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

def _mxcsr_check(k: HostKernel, ubuf: memoryview, function: str, why: str,
                 origin: str) -> None:
    mxcsr = int(_I.unpack_from(ubuf, legacy.MXCSR)[0])
    bad = mxcsr & ~k.cfg.mxcsr_feature_mask
    if bad:
        raise einval(function, f"MXCSR {mxcsr:#x} sets reserved bits {bad:#x} "
                               f"(mxcsr_feature_mask {k.cfg.mxcsr_feature_mask:#x}){why}",
                     cite(origin))


def check_uabi_to_guest_fpstate(k: HostKernel, gfpu: FpuGuest, ubuf: memoryview, xcr0: int,
                                user_xfeatures_origin: str,
                                user_xfeatures_commit: str = "uabi_header") -> int:
    """The checks of fpu_copy_uabi_to_guest_fpstate, validate_user_xstate_header and
    copy_uabi_to_xstate's MXCSR test (5.16+), in the kernel's order; returns XSTATE_BV."""
    fps = gfpu.fpstate
    if not k.cfg.has_xsave:
        bv = int(_Q.unpack_from(ubuf, legacy.XSTATE_BV)[0])
        if bv & ~FPSSE:
            raise einval("fpu_copy_uabi_to_guest_fpstate",
                         f"host without XSAVE: XSTATE_BV {describe_mask(bv)} beyond FP|SSE",
                         cite("uabi_copy"))
        _mxcsr_check(k, ubuf, "fpu_copy_uabi_to_guest_fpstate", "", "uabi_copy")
        return bv
    bv, cb = _QQ.unpack_from(ubuf, legacy.XSTATE_BV)
    if (k.kernel.has("pve_set_xsave_mask_pkru") and bv & xf.PKRU
            and not fps.user_xfeatures & xf.PKRU):
        # Proxmox's kvm_vcpu_ioctl_x86_set_xsave (pve-kernel 1559d22) clears the PKRU bit a
        # leaky source sent when the vCPU's CPUID lacks PKRU. The model reads that from
        # user_xfeatures, which is the guest CPUID's XCR0 | FP | SSE wherever the strip
        # matters (ad856280ddea active); with 8647c52e9504 nothing rejects the bit anyway.
        bv &= ~xf.PKRU
    if bv & ~xcr0:
        raise einval("fpu_copy_uabi_to_guest_fpstate",
                     f"XSTATE_BV sets {describe_mask(bv & ~xcr0)} outside KVM's supported XCR0 "
                     f"{xcr0:#x}", cite("uabi_copy"))
    if k.kernel.has("xfd_clears_xstate_bv") and bv & fps.xfd:
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
    if ubuf[legacy.HEADER_RESERVED:legacy.EXTENDED] != _Z48:
        raise einval("validate_user_xstate_header", "reserved header bytes 16-63 are not zero",
                     cite("uabi_header"))
    if bv & LEGACY_MXCSR:
        _mxcsr_check(k, ubuf, "copy_uabi_to_xstate",
                     " (checked because XSTATE_BV has FP, SSE or YMM)", "uabi_mxcsr")
    return int(bv)


def copy_uabi_to_guest_fpstate(k: HostKernel, gfpu: FpuGuest, ubuf: memoryview, xcr0: int,
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
    if bv & LEGACY_MXCSR and not bv & xf.FP:
        mem[base + 24:base + 32] = ubuf[24:32]
    if bv & xf.FP:
        mem[base:base + 160] = ubuf[0:160]
    if bv & xf.SSE:
        mem[base + 160:base + 416] = ubuf[160:416]
    xcomp = int(_Q.unpack_from(mem, base + legacy.XCOMP_BV)[0])
    for s, d, n in _ext_plan(k, bv, xcomp):
        mem[base + s:base + s + n] = ubuf[d:d + n]
    pkru = None
    if bv & xf.PKRU:
        src = _pkru_offset(k)
        pk = ubuf[src:src + 8]
        dst = base + (k.layout.compacted(xcomp)[0][PKRU_BIT] if k.compacted else src)
        mem[dst:dst + 8] = pk
        pkru = int(_I.unpack_from(pk, 0)[0])
    k_bv = int(_Q.unpack_from(mem, base + legacy.XSTATE_BV)[0])
    _Q.pack_into(mem, base + legacy.XSTATE_BV, (k_bv & xf.SUPERVISOR_MASK) | bv)
    return pkru


def check_xsave_5_15(k: HostKernel, ubuf: memoryview, supported_xcr0: int) -> int:
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


def load_xsave_5_15(k: HostKernel, gfpu: FpuGuest, ubuf: memoryview,
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
