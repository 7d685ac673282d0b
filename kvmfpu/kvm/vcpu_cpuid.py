"""KVM_SET_CPUID2 and KVM_GET_CPUID2 (arch/x86/kvm/cpuid.c kvm_set_cpuid,
kvm_vcpu_after_set_cpuid, kvm_update_cpuid_runtime)."""

from __future__ import annotations

import errno
from collections.abc import Sequence

from kvmfpu.arch import xfeatures as xf
from kvmfpu.arch.xfeatures import describe_mask
from kvmfpu.kvm import pvm
from kvmfpu.kvm.cpuid import (
    KVM_MAX_CPUID_ENTRIES,
    CpuidEntry,
    GuestCpuid,
    intern,
    pack_entries,
    xstate_required_size,
)
from kvmfpu.kvm.errors import KvmError, closed_fd, einval
from kvmfpu.kvm.origins import cite
from kvmfpu.kvm.vcpu_base import VcpuBase, serialised


class CpuidOps(VcpuBase):
    """The CPUID ioctls of a vCPU."""

    __slots__ = ()

    @serialised
    def set_cpuid2(self, entries: Sequence[CpuidEntry] | GuestCpuid) -> None:
        """KVM_SET_CPUID2 (kvm_set_cpuid, kvm_vcpu_after_set_cpuid)."""
        self._usable("KVM_SET_CPUID2")
        kvm = self.kvm
        p = kvm.kernel
        if isinstance(entries, GuestCpuid):
            table = entries
        else:
            if len(entries) > KVM_MAX_CPUID_ENTRIES:
                raise KvmError(errno.E2BIG, "kvm_vcpu_ioctl_set_cpuid2",
                               f"nent {len(entries)} > KVM_MAX_CPUID_ENTRIES (256)",
                               commit=cite("cpuid2"))
            table = intern(pack_entries(entries), len(entries))
        if kvm.ops.rewrites_cpuid:
            fixed = pvm.fixed_cpuid(table.entries, kvm.host, kvm.caps.supported_xcr0)
            table = intern(pack_entries(fixed), len(fixed))
        if self.has_run and p.has("set_cpuid_after_run_identical"):
            # Compared after the runtime update of both (kvm_set_cpuid's
            # __kvm_update_cpuid_runtime), so KVM_GET_CPUID2 output is accepted back.
            if ([self._runtime(e) for e in table.entries]
                    != [self._runtime(e) for e in self.cpuid.entries]):
                raise einval("kvm_set_cpuid", "the vCPU has run and the new CPUID differs "
                                              "(kvm_cpuid_check_equal)",
                             cite("cpuid_after_run_equal"))
            return
        if self.has_run and p.has("set_cpuid_after_run_forbidden"):
            raise einval("kvm_vcpu_ioctl_set_cpuid2", "KVM_SET_CPUID2 after KVM_RUN",
                         cite("cpuid_after_run_forbidden"))
        # kvm_check_cpuid: CPUID.0x80000008 virtual-address width, dynamic xfeatures.
        e = table.find(0x8000_0008, 0)
        if e is not None and (e.eax >> 8 & 0xFF) not in (0, 48, 57):
            raise einval("kvm_check_cpuid", f"CPUID.0x80000008 reports {e.eax >> 8 & 0xFF} "
                                            "virtual-address bits (only 0, 48 or 57)",
                         cite("check_cpuid_vaddr"))
        if p.has("amx"):
            # CPUID.(0xD,0) & XFEATURE_MASK_USER_DYNAMIC, not limited to what KVM supports:
            # asking for XTILEDATA where it cannot be permitted fails with -EPERM too.
            self._enable_guest_xfd_features(table.gsx_raw & xf.DYNAMIC_MASK)
        self.cpuid = table
        self.gsx = table.gsx_raw & kvm.caps.supported_xcr0
        self.gss = table.gss_raw & kvm.caps.supported_xss if p.has("cet") else 0
        fps = self.gfpu.fpstate
        if p.has("user_xfeatures_from_cpuid"):
            fps.user_xfeatures = self.gsx | (xf.FPSSE if p.has("fpsse_always") else 0)

    def _enable_guest_xfd_features(self, xfeatures: int) -> None:
        """fpu_enable_guest_xfd_features -> __xfd_enable_feature -> fpstate_realloc."""
        kvm = self.kvm
        xfeatures &= ~self.gfpu.xfeatures
        if not xfeatures:
            return
        perm = kvm.process.guest_perm
        if perm.state_perm & xfeatures != xfeatures:
            raise KvmError(errno.EPERM, "__xfd_enable_feature",
                           f"guest CPUID enables {describe_mask(xfeatures)} without "
                           "ARCH_REQ_XCOMP_GUEST_PERM", commit=cite("xfd_enable"))
        p = kvm.kernel
        kvm.hk.fpstate_realloc(self.gfpu, xfeatures, perm.state_size, perm.user_state_size,
                               user_xfeatures_too=not p.has("user_xfeatures_from_cpuid"),
                               thread=self.thread if self._running else None)

    @serialised
    def get_cpuid2(self, nent: int = KVM_MAX_CPUID_ENTRIES) -> list[CpuidEntry]:
        """KVM_GET_CPUID2, with KVM's runtime bits (OSXSAVE, XSAVE sizes) applied."""
        if self.closed:
            raise closed_fd("vCPU")
        if nent < len(self.cpuid):
            raise KvmError(errno.E2BIG, "kvm_vcpu_ioctl_get_cpuid2",
                           f"nent {nent} < {len(self.cpuid)} entries", commit=cite("cpuid2"))
        return [self._runtime(e) for e in self.cpuid.entries]

    def _runtime(self, e: CpuidEntry) -> CpuidEntry:
        """kvm_update_cpuid_runtime: OSXSAVE from CR4, CPUID.0xD EBX sizes from XCR0/XSS."""
        layout = self.kvm.host.layout
        align = self.kvm.kernel.has("amx")
        if e.function == 1:
            ecx = e.ecx | 1 << 27 if self.sregs.cr4_osxsave else e.ecx & ~(1 << 27)
            return e._replace(ecx=ecx)
        if e.function == 0xD and e.index == 0:
            return e._replace(ebx=xstate_required_size(layout, self.xcr0, False, align))
        if e.function == 0xD and e.index == 1 and e.eax & 0xA:
            mask = self.xcr0 | (self.ia32_xss if self.kvm.kernel.has("cet") else 0)
            return e._replace(ebx=xstate_required_size(layout, mask, True, align))
        return e

