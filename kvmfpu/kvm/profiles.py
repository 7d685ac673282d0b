"""Kernel-version profiles: which xstate-related KVM/FPU behaviours a kernel has.

A profile is a Linux version. Each behaviour switch names the commit that introduced it,
its first mainline release and the stable releases it was backported to; a version has
the switch when it is at or past the first release, or on a stable branch at or past the
backport. Named profiles are mainline releases ("6.1" is v6.1 as released); "6.1.60"
selects that stable release, "6.1.y" the newest 6.1 stable kvmfpu knows of.

Sources: the commits themselves (arch/x86/kvm/{x86,cpuid}.c, arch/x86/kernel/fpu/*),
read in Debian linux-source 6.1.192, 6.12.117 and 7.3.4, and the kernel mailing-list
and stable-review mails for ids, release and backport numbers. Where a stable number could
not be confirmed the switch says so.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import cache
from typing import Final

from kvmfpu.kvm import distro as _distro
from kvmfpu.kvm.distro import DistroKernel, RefusedKernel

Version = tuple[int, int, int]


class UnknownKernel(ValueError):
    """Not a version kvmfpu can model."""


def distro_kernel(text: str) -> DistroKernel | None:
    """The distribution kernel ``text`` names (``uname -r`` of Ubuntu, Debian, Proxmox,
    openEuler, Amazon Linux or any ``X.Y.Z-suffix``), None for an upstream version."""
    try:
        return _distro.parse(text)
    except RefusedKernel as exc:
        raise UnknownKernel(str(exc)) from None


def parse_version(text: str) -> Version:
    """``"6.1"`` -> (6, 1, 0); ``"6.1.60"`` -> (6, 1, 60); ``"6.1.y"`` -> (6, 1, 9999);
    ``"6.18-rc5"`` -> (6, 18, -95) (release candidates sort before the release); a
    distribution string gives its upstream base (``"6.1.0-18-amd64"`` -> (6, 1, 76))."""
    if len(text) > 200:
        raise UnknownKernel(f"{text[:40]!r}...: a kernel release is not {len(text)} characters")
    m = re.fullmatch(r"v?(\d+)\.(\d+)(?:\.(\d+|y)|-rc(\d+))?", text.strip())
    if not m:
        dk = distro_kernel(text)
        if dk is not None:
            return dk.base
        raise UnknownKernel(f"{text!r} is not a kernel version (want e.g. 6.1, 6.1.60, 6.1.y, "
                            "6.18-rc5, or a distribution's uname -r such as 5.15.0-91-generic, "
                            "6.1.0-18-amd64, 6.8.12-4-pve)")
    sub, rc = m.group(3), m.group(4)
    if rc is not None:
        if not 1 <= int(rc) <= 10:
            raise UnknownKernel(f"{text!r}: release candidates run from -rc1 to -rc10")
        return int(m.group(1)), int(m.group(2)), -100 + int(rc)
    return int(m.group(1)), int(m.group(2)), (9999 if sub == "y" else int(sub or 0))


def format_version(v: Version) -> str:
    if v[2] == 9999:
        return f"{v[0]}.{v[1]}.y"
    if v[2] < 0:
        return f"{v[0]}.{v[1]}-rc{v[2] + 100}"
    return f"{v[0]}.{v[1]}" + (f".{v[2]}" if v[2] else "")


@dataclass(frozen=True)
class Switch:
    """One behaviour change, with where it comes from."""

    name: str
    commit: str
    title: str
    since: tuple[int, int]                       # first mainline release
    backports: tuple[Version, ...] = ()          # stable releases that carry it
    description: str = ""
    until: tuple[int, int] | None = None         # first mainline release without it (bugs)
    fixed_in: tuple[Version, ...] = ()           # stable releases where a bug was fixed
    note: str = ""
    rc_window: tuple[int, int] | None = None     # a bug only in release candidates [a, b)

    def active(self, v: Version) -> bool:
        if self.rc_window is not None:
            first, fixed = self.rc_window
            return v[:2] == self.since and v[2] < 0 and first <= v[2] + 100 < fixed
        started = v[:2] >= self.since or any(v[:2] == b[:2] and v[2] >= b[2]
                                             for b in self.backports)
        if self.until is not None:
            # A bug: present from ``since`` (or a backport) until ``until`` or a stable fix.
            if not started or v[:2] >= self.until:
                return False
            return not any(v[:2] == f[:2] and v[2] >= f[2] for f in self.fixed_in)
        return started

    def describe(self) -> str:
        bp = ", ".join(format_version(b) for b in self.backports)
        span = f"{self.since[0]}.{self.since[1]}"
        if self.until:
            span += f" until {self.until[0]}.{self.until[1]}"
            if self.fixed_in:
                span += " (fixed in " + ", ".join(format_version(f) for f in self.fixed_in) + ")"
        return f"{self.commit} {self.title} [{span}{'; backports ' + bp if bp else ''}]"


S = Switch
SWITCHES: Final[tuple[Switch, ...]] = (
    S("fpu_guest", "69f6ed1d14c6", "x86/fpu: Provide infrastructure for KVM FPU cleanup", (5, 16),
      description="guest FPU as a struct fpu_guest/fpstate; KVM_GET/SET_XSAVE go through "
                  "fpu_copy_guest_fpstate_to_uabi/fpu_copy_uabi_to_guest_fpstate (before: KVM's "
                  "fill_xsave/load_xsave: raw legacy area, no header checks, MXCSR always checked)"),
    S("kernel_xsavec", "8ad7e8f69695", "x86/fpu/xsave: Support XSAVEC in the kernel", (5, 19),
      description="without XSAVES the kernel saves with XSAVEC into compacted buffers (before: "
                  "XSAVEOPT/XSAVE, standard format)",
      note="5.19, not 6.1: tip x86/fpu April 2022 (20220404104820.598704095@linutronix.de); a "
           "5.19-rc1 regression bisected between 5.18 and 5.19-rc1 to it"),
    S("xsave2", "be50b2065dfa",
      "kvm: x86: Add support for getting/setting expanded xstate buffer", (5, 17),
      description="KVM_CAP_XSAVE2 and KVM_GET_XSAVE2; KVM_GET_XSAVE -EINVAL when uabi_size > 4096"),
    S("amx", "86aff7a47992", "kvm: x86: Add XCR0 support for Intel AMX", (5, 17),
      description="XTILE in KVM_SUPPORTED_XCR0 and the XTILE pair check in __kvm_set_xcr; AMX "
                  "CPUID (690a757d610e), IA32_XFD/XFD_ERR emulation (820a6ee944e7, 548e83650a51), "
                  "guest permissions ARCH_REQ_XCOMP_GUEST_PERM (980fe2fddcff), dynamic fpstate "
                  "at KVM_SET_CPUID2 (5ab2f45bba48), XFD in CPUID.(0DH,1).EAX"),
    S("uabi_size_default_bug", "d187ba531230",
      "x86/fpu: KVM: Set the base guest FPU uABI size to sizeof(struct kvm_xsave)", (5, 17),
      until=(5, 19), fixed_in=((5, 17, 13), (5, 18, 2)),
      description="bug: guest uabi_size starts at fpu_user_cfg.default_size instead of 4096 "
                  "(CVE-2022-49557)"),
    S("perm_overwrite_bug", "063452fd94d1",
      "x86/fpu/xstate: Fix the ARCH_REQ_XCOMP_PERM implementation", (5, 17), until=(5, 18),
      fixed_in=((5, 16, 20), (5, 17, 2)),
      description="bug: a granted guest permission replaces the permitted set instead of adding "
                  "to it (the host-side ARCH_REQ_XCOMP_PERM has it from 5.16; the model has "
                  "guest permissions, 5.17)",
      note="mainline in the 5.18-rc1 merge; 5.16.20 confirmed (its release mail lists Yang "
           "Zhong's fix); 5.17.2 from the spec, UNVERIFIED"),
    S("user_xfeatures_from_cpuid", "ad856280ddea",
      "x86/kvm/fpu: Limit guest user_xfeatures to supported bits of XCR0", (5, 17),
      until=(6, 6), fixed_in=((6, 5, 9), (6, 1, 60)),
      description="KVM_SET_CPUID2 sets fpstate->user_xfeatures to the guest-supported XCR0, so "
                  "KVM_SET_XSAVE rejects features outside guest CPUID (validate_user_xstate_header); "
                  "ended by 8647c52e9504",
      note="no 5.16.y backport: only the AUTOSEL posting (20220301201344.18191-7-sashal@kernel.org) "
           "was found, and as posted it needs c270ce393dfd (5.17); ended in 6.5.9 and 6.1.60 by "
           "8647c52e9504 (both confirmed, see get_masks_guest_xcr0)"),
    S("xcr0_valid_from_user_xfeatures", "988896bb6182",
      "x86/kvm/fpu: Remove kvm_vcpu_arch.guest_supported_xcr0", (5, 17), until=(6, 0),
      fixed_in=((5, 19, 12),),
      description="__kvm_set_xcr checks against user_xfeatures (host defaults before "
                  "KVM_SET_CPUID2); reverted by ee519b3a2ae3"),
    S("fpsse_always", "a1020a25e697",
      "KVM: x86: Always enable legacy FP/SSE in allowed user XFEATURES", (6, 0),
      backports=((5, 19, 12),),
      description="user_xfeatures = guest_supported_xcr0 | FP | SSE (fixes the bz 2079311 "
                  "Nehalem migration, seed 002)"),
    S("get_masks_guest_xcr0", "8647c52e9504",
      "KVM: x86: Constrain guest-supported xfeatures only at KVM_GET_XSAVE{2}", (6, 6),
      backports=((6, 5, 9), (6, 1, 60)),
      description="user_xfeatures stays the host's; KVM_GET_XSAVE{2} masks XSTATE_BV with "
                  "guest_supported_xcr0 | FP | SSE (with 18164f66e6c5)",
      note="6.5.9 confirmed (its 6.5.9-rc1 review, 20231023104833.832874523@linuxfoundation.org); "
           "6.1.60 confirmed (Debian bookworm's linux changelog: ChangeLog-6.1.60)"),
    S("pkru_always_written_bug", "b15888840207",
      "x86/fpu/xstate: Prevent false-positive warning in __copy_xstate_uabi_buf()", (5, 16),
      until=(6, 3), fixed_in=((6, 1, 22),),
      description="KVM_GET_XSAVE writes vcpu->arch.pkru into the PKRU component even when "
                  "XSTATE_BV[9]=0"),
    S("get_xsave2_amx_oops_bug", "471f0aa7fa64",
      "x86/fpu: Fix copy_xstate_to_uabi() to copy init states correctly", (6, 0), until=(6, 1),
      fixed_in=((6, 0, 7),),
      description="bug: KVM_GET_XSAVE2 of an AMX guest whose XSTATE_BV[18]=0 dereferences a NULL "
                  "init address (host oops)",
      note="UNVERIFIED window: the NULL init address (__raw_xsave_addr of a feature outside "
           "init_fpstate's xcomp_bv) exists only after a401f45e3875 (Exclude dynamic states "
           "from init_fpstate, tip x86/urgent 2022-10-17, 20220824191223.1248-4), which went "
           "in with the fix and reached 6.0.7 in the same stable batch; before it (5.17-6.0.6) "
           "init_fpstate claimed the 8 KiB XTILEDATA inside a one-page static buffer, so the "
           "copy read past its end (an info leak, or a fault where unmapped) rather than "
           "dereferencing NULL; still modelled as the oops until read in a 6.0 tree"),
    S("xfd_clears_xstate_bv", "b45f72177594",
      "x86/fpu: Clear XSTATE_BV[i] in guest XSAVE state whenever XFD[i]=1", (6, 19),
      backports=((6, 18, 7), (6, 12, 67), (6, 6, 122), (6, 1, 162)),
      description="KVM_SET_XSAVE clears XSTATE_BV bits armed in the guest XFD; "
                  "fpu_update_guest_xfd clears them in a saved guest state (seed 003)",
      note="6.1.162 confirmed (Debian bookworm's linux changelog: ChangeLog-6.1.162); 6.18.7, "
           "6.12.67 and 6.6.122 UNVERIFIED"),
    S("xss_keep_on_init", "be4f3b3f8227", "KVM: x86: Keep MSR_IA32_XSS unchanged for INIT",
      (5, 17), backports=((5, 16, 5), (5, 15, 19)),
      description="INIT leaves IA32_XSS alone (before: zeroed on INIT and RESET)",
      note="5.16.5 and 5.15.19 confirmed (spec, Corrections)"),
    S("xstate_reset_on_init_only", "c26675447faf",
      "KVM: x86: Zero XSTATE components on INIT by iterating over supported features", (6, 18),
      description="kvm_xstate_reset: INIT zeroes MPX and CET components supported by KVM "
                  "(41f6710f99f4, 69cc3e886582); RESET clears nothing (zero-allocated); "
                  "KVM_GET_MP_STATE no longer loads the FPU (8819a49f9ff8). Before: MPX cleared "
                  "on INIT and RESET when KVM supported MPX (seed 004)"),
    S("init_fpu_put_imbalance_bug", "8819a49f9ff8",
      "KVM: x86: Unload \"FPU\" state on INIT if and only if its currently in-use", (6, 18),
      rc_window=(1, 6),
      description="bug in 6.18-rc1..rc5: kvm_xstate_reset puts and reloads the guest FPU "
                  "unconditionally while KVM_GET_MP_STATE loads it only when MPX is supported, "
                  "so an INIT via KVM_GET_MP_STATE on a CET host without MPX puts an FPU that "
                  "was never loaded (syzkaller/KASAN crash); fixed in 6.18-rc6"),
    S("cet", "69cc3e886582", "KVM: x86: Add XSS support for CET_KERNEL and CET_USER", (6, 18),
      description="kvm_caps.supported_xss = host XSS & CET when XSAVES and SHSTK|IBT and both "
                  "CET bits; CET MSRs; IA32_XSS checked against guest CPUID (338543cbe033) and "
                  "listed for save/restore (c0a5f2989122)"),
    S("zen_xsaves_erratum", "b0563468eeac",
      "x86/CPU/AMD: Disable XSAVES on AMD family 0x17", (6, 3),
      backports=((6, 2, 7), (6, 1, 20), (5, 15, 103)),
      description="the kernel stops using XSAVES on Zen 1/2 (erratum 1386): KVM no longer "
                  "offers XSAVES (XSAVEC stays); seed 001; from 29ba89f18952 (6.10) only without "
                  "the microcode fix (zen_erratum_microcode)",
      note="6.1.20 confirmed (Debian bookworm's linux changelog: ChangeLog-6.1.20); "
           "stable: the 2023-03-15 review batch (4.14.310 ... 6.2.7); the 5.15 stable "
           "revlist has it after \"Linux 5.15.102\" (released 2023-03-13), so 5.15.103, not "
           "the 5.15.102 the spec gives; 5.10.y/5.4.y revlists carry it too but their release "
           "numbers are not confirmed, so the 5.4/5.10 profiles lack it (UNVERIFIED)"),
    S("set_cpuid_after_run_identical", "c6617c61e8fe",
      "KVM: x86: Partially allow KVM_SET_CPUID{,2} after KVM_RUN", (5, 17),
      backports=((5, 16, 3),),
      description="after KVM_RUN, KVM_SET_CPUID2 succeeds only with identical entries (-EINVAL "
                  "otherwise); 5.15 allows any change",
      note="5.16.3: in the 1039-patch 5.16.3 stable review ([PATCH 5.16 1033/1039], "
           "20220124184200.012351266@linuxfoundation.org, 2022-01-24)"),
    S("set_cpuid_after_run_forbidden", "feb627e8d6f6",
      "KVM: x86: Forbid KVM_SET_CPUID{,2} after KVM_RUN", (5, 16), until=(5, 17),
      fixed_in=((5, 16, 3),),
      description="bug-like window: 5.16 refused any KVM_SET_CPUID2 after KVM_RUN (QEMU CPU "
                  "hotplug broke); c6617c61e8fe relaxed it to identical entries",
      note="the window ends at 5.16.3, where c6617c61e8fe arrived (its 5.16.3 stable review, "
           "20220124184200.012351266@linuxfoundation.org)"),
    S("filter_xtilecfg_without_perm", "55cd57b596e8",
      "KVM: x86: Filter out XTILE_CFG if XTILE_DATA isn't permitted", (6, 4),
      description="KVM_GET_SUPPORTED_CPUID and KVM_CAP_XSAVE2 drop XTILE_CFG without permission"),
    S("mp_state_validation", "22c6a0ef6b26",
      "KVM: x86: check validity of argument to KVM_SET_MP_STATE", (6, 0),
      description="KVM_SET_MP_STATE accepts only defined x86 states (-EINVAL otherwise)"),
    S("msr_host_zero_write_advertised", "64a5d7a1091f",
      "KVM: x86: Suppress failures on userspace access to advertised, unsupported MSRs", (6, 12),
      description="a host-initiated read, or write of 0, to an MSR KVM lists but the guest "
                  "lacks succeeds (kvm_do_msr_access; with 44dd0f5732b4; matters for IA32_XSS "
                  "from 6.18)",
      note="id from the spec (Corrections); present in 6.12.117"),
    S("zen_erratum_microcode", "29ba89f18952", "x86/CPU/AMD: Improve the erratum 1386 workaround",
      (6, 10),
      description="XSAVES stays on family 17h when the microcode has the erratum fix "
                  "(erratum_1386_microcode[]: 17h model 0x01 stepping 2 >= 0x0800126e, model 0x31 "
                  "stepping 0 >= 0x08301052)",
      note="B. Petkov 2024-03-24, in the x86/cpu pull for v6.10 (ZkHBjIwLlEkVD2Vu@gmail.com); "
           "not in 6.1.y up to 6.1.187 (absent from Debian's bookworm changelog); other stable "
           "backports not confirmed (Proxmox cherry-picked it into 6.5, pve-kernel "
           "f2f95ef); kvmfpu.linux.config does not yet read the host's microcode revision "
           "(ERRATUM_1386_MICROCODE)"),
    S("pve_set_xsave_mask_pkru", "pve-kernel 1559d22",
      "kvm: xsave set: mask-out PKRU bit in xfeatures if vCPU has no support", (99, 0),
      description="Proxmox only (6.2.16-5 and later series): KVM_SET_XSAVE clears XSTATE_BV[9] "
                  "when the vCPU's CPUID has no PKRU (what leaky 5.15 sources send)",
      note="T. Lamprecht 2023-07-14; not upstream, so active only in Proxmox profiles"),
    # -- KVM_GET_SUPPORTED_CPUID: features and leaves KVM learned (kvmfpu.kvm.cpuid_leaves).
    # Read in Debian 6.1.192 and 6.12.117 and the linux-next snapshot 1c60d04aac53
    # (ColinIanKing/linux-next); "absent/present in" says where a first release is unconfirmed.
    S("cpuid_leaf_80000021", "f144c49e8c39", "KVM: x86: synthesize CPUID leaf 0x80000021h if useful",
      (5, 18), description="0x8000_0000.EAX may be raised to 0x8000_0021 and the leaf synthesised "
                           "(LFENCE_RDTSC, NULL_SEL_CLR_BASE, NO_SMM_CTL_MSR); before: max 0x8000_001F",
      note="commit id from memory, not confirmed in a source read here"),
    S("cpuid_deprecated_x87", "unconfirmed", "KVM: x86: Report deprecated x87 features in supported CPUID",
      (5, 17), description="7.0 EBX FDP_EXCPTN_ONLY (bit 6) and ZERO_FCS_FDS (bit 13) passed through; "
                           "before: dropped (libvirt's Ice-Lake-Server-disabled.xml lists both)",
      note="Jim Mattson; in the stable queues of 2022-02-16 for 5.15/5.16 (stable ids such as "
           "5d35bb268253, release numbers not confirmed); mainline id not confirmed"),
    S("cpuid_no_host_topology", "45e966fcca03",
      "KVM: x86: Do not return host topology information from KVM_GET_SUPPORTED_CPUID", (6, 1),
      description="0xB/0x1F subleaf 0 keeps only EDX (no subleaves); 0x8000_001E all zero; "
                  "before: the host's topology subleaves were copied",
      note="present in 6.1.192; commit id and first release not confirmed"),
    S("cpuid_reserved_bits_dropped", "unconfirmed",
      "KVM: x86: drop reserved bits of 0x8000_0001.EBX, 0x8000_0006.EDX, 0x8000_0008.ECX", (6, 1),
      description="0x8000_0001 EBX[27:16], 0x8000_0006 EDX[17:16], 0x8000_0008 ECX[31:16,11:8] "
                  "cleared", note="present in 6.1.192; first release UNVERIFIED"),
    S("cpuid_leaf7_subleaf2", "unconfirmed",
      "KVM: x86: Advertise CPUID.7.2.EDX and RRSBA_CTRL support", (6, 4),
      description="leaf 7 reports up to subleaf 2 (7.2 EDX: PSFD, IPRED/RRSBA/BHI_CTRL, DDPD_U, "
                  "MCDT_NO); before: up to subleaf 1",
      note="present in 6.1.192 (BHI_CTRL there is a 2024 stable backport); first release UNVERIFIED"),
    S("cpuid_6_3_7_1", "unconfirmed",
      "KVM: x86: Advertise CPUID of new Intel platform instructions to user space", (6, 3),
      description="7.1 EAX CMPCCXADD, FZRM, FSRS, FSRC, AMX_FP16, AVX_IFMA",
      note="absent in 6.1.192, present in 6.12.117; commit ids not confirmed"),
    S("cpuid_7_1_edx", "unconfirmed", "KVM: x86: Advertise AVX-VNNI-INT8, AVX-NE-CONVERT, PREFETCHITI",
      (6, 3), description="the KVM-defined 7.1 EDX word",
      note="absent in 6.1.192, present in 6.12.117; commit ids not confirmed"),
    S("cpuid_autoibrs", "unconfirmed", "KVM: x86: Propagate the AMD Automatic IBRS feature to the guest",
      (6, 3), description="0x8000_0021 EAX AUTOIBRS (bit 8)",
      note="absent in 6.1.192, present in 6.12.117; commit id not confirmed"),
    S("cpuid_flush_l1d", "unconfirmed", "KVM: x86: Advertise FLUSH_L1D to user space", (6, 4),
      description="7.0 EDX FLUSH_L1D (bit 28)",
      note="absent in 6.1.192, present in 6.12.117; first release UNVERIFIED"),
    S("cpuid_leaf_80000022", "unconfirmed", "KVM: x86/cpuid: Add AMD CPUID ExtPerfMonAndDbg leaf 0x80000022",
      (6, 4), description="0x8000_0000.EAX capped at 0x8000_0022 (was 0x8000_0021); PERFMON_V2",
      note="absent in 6.1.192, present in 6.12.117; first release UNVERIFIED"),
    S("cpuid_amx_complex", "unconfirmed", "KVM: x86: Advertise AMX-COMPLEX CPUID to userspace", (6, 6),
      description="7.1 EDX AMX_COMPLEX (bit 8)",
      note="absent in 6.1.192, present in 6.12.117; first release UNVERIFIED"),
    S("cpuid_srso", "unconfirmed", "KVM: x86: Add SBPB, IBPB_BRTYPE and SRSO_NO support", (6, 6),
      description="0x8000_0021 EAX SBPB, IBPB_BRTYPE, SRSO_NO (kernel-synthesised)",
      note="6.1.192 has SRSO_NO only (stable backport); first release UNVERIFIED"),
    S("cpuid_wrmsr_xx_base_ns", "unconfirmed", "KVM: x86: Advertise WRMSR_XX_BASE_NS", (6, 7),
      description="0x8000_0021 EAX bit 1",
      note="absent in 6.1.192, present in 6.12.117; first release UNVERIFIED"),
    S("cpuid_sgx_edeccssa", "unconfirmed", "KVM: x86: Add SGX EDECCSSA support", (6, 3),
      description="0x12.0 EAX SGX_EDECCSSA (bit 11)",
      note="absent in 6.1.192, present in 6.12.117; first release UNVERIFIED"),
    S("cpuid_lam", "unconfirmed", "KVM: x86: Advertise and enable LAM (user and supervisor)", (6, 8),
      description="7.1 EAX LAM (bit 26)",
      note="absent in 6.1.192, present in 6.12.117; commit id not confirmed"),
    S("cpuid_leaf_80000005", "unconfirmed", "KVM: x86: pass host L1 cache and TLB info (0x8000_0005)",
      (6, 8), description="0x8000_0005 copied from the host; before: all zero",
      note="absent in 6.1.192, present in 6.12.117; first release UNVERIFIED"),
    S("cpuid_guest_phys_bits", "b628cb523c65",
      "KVM: x86: Advertise max mappable GPA in CPUID.0x80000008.GuestPhysBits", (6, 10),
      description="0x8000_0008 EAX[23:16] = PhysAddrSize (capped at 48 without 5-level TDP; 0 "
                  "with shadow paging) and EAX[7:0] the host's; before: EAX[7:0] = the host's "
                  "GuestPhysAddrSize or PhysAddrSize, EAX[23:16] = 0",
      note="absent in 6.1.192, present in 6.12.117; commit id not confirmed"),
    S("cpuid_avx10", "unconfirmed", "KVM: x86: Advertise AVX10.1 CPUID to userspace", (6, 10),
      description="7.1 EDX AVX10, leaf 0x24 (version capped at 1, AVX10_128/256/512); max basic "
                  "leaf 0x24 (was 0x1F)",
      note="absent in 6.1.192, present in 6.12.117; first release UNVERIFIED"),
    S("cpuid_srso_user_kernel_no", "unconfirmed", "KVM: x86: Advertise SRSO_USER_KERNEL_NO", (6, 13),
      description="0x8000_0021 EAX bit 30",
      note="present in 6.12.117 (a stable backport?); first release UNVERIFIED"),
    S("cpuid_amd_ibpb_ret", "unconfirmed", "KVM: x86: AMD's IBPB is not equivalent to Intel's IBPB",
      (6, 13), description="0x8000_0008 EBX AMD_IBPB_RET (bit 30); 7.0 EDX SPEC_CTRL then needs it",
      note="absent in 6.12.117; present on the 6.18 machine; first release UNVERIFIED"),
    S("cpuid_sha512_sm3_sm4", "unconfirmed", "KVM: x86: Advertise SHA512, SM3, SM4 CPUID", (6, 13),
      description="7.1 EAX bits 0-2",
      note="absent in 6.12.117, present in linux-next 1c60d04aac53; first release UNVERIFIED"),
    S("cpuid_avx_vnni_int16", "unconfirmed", "KVM: x86: Advertise AVX-VNNI-INT16 CPUID", (6, 13),
      description="7.1 EDX bit 10",
      note="absent in 6.12.117, present in linux-next 1c60d04aac53; first release UNVERIFIED"),
    S("cpuid_emul_tsc_deadline", "unconfirmed",
      "KVM: x86: Advertise TSC_DEADLINE_TIMER in KVM_GET_SUPPORTED_CPUID", (6, 14),
      description="leaf 1 ECX[24] set whatever the host (EMULATED_F); before: only via "
                  "KVM_CAP_TSC_DEADLINE_TIMER (Documentation/virt/kvm/api.rst)",
      note="absent in 6.12.117, present in linux-next 1c60d04aac53 (the CPUID overhaul "
           "series); first release UNVERIFIED"),
    S("cpuid_emul_hypervisor", "unconfirmed", "KVM: x86: Advertise HYPERVISOR in KVM_GET_SUPPORTED_CPUID",
      (6, 14), description="leaf 1 ECX[31] set whatever the host (EMULATED_F)",
      note="absent in 6.12.117, present in linux-next 1c60d04aac53; first release UNVERIFIED"),
    S("cpuid_wrmsrns", "unconfirmed", "KVM: x86: Advertise WRMSRNS to user space", (6, 14),
      description="7.1 EAX bit 19",
      note="absent in 6.12.117, present in linux-next 1c60d04aac53; first release UNVERIFIED"),
    S("cpuid_lkgs", "unconfirmed", "KVM: x86: Advertise LKGS to user space", (6, 14),
      description="7.1 EAX bit 18",
      note="absent in 6.12.117, present in linux-next 1c60d04aac53; first release UNVERIFIED"),
    S("cpuid_tsa", "unconfirmed", "KVM: SVM: Advertise TSA CPUID bits to guests", (6, 16),
      description="0x8000_0021 EAX VERW_CLEAR, ECX TSA_SQ_NO/TSA_L1_NO (July 2025 TSA disclosure)",
      note="stable backports exist (6.1.192 and 6.12.117 have them; numbers not confirmed); "
           "present on the 6.18 machine (ECX bits 1-2 pass, bit 7 does not)"),
    S("cpuid_prefetchi", "unconfirmed", "KVM: x86: Advertise AMD PREFETCHI", (6, 16),
      description="0x8000_0021 EAX bit 20",
      note="absent in 6.12.117, present in linux-next 1c60d04aac53; first release UNVERIFIED"),
    S("cpuid_amd_ibrs_same_mode", "65ca2872015c", "KVM: x86: Propagate AMD's IbrsSameMode to the guest",
      (6, 16), description="0x8000_0008 EBX bit 19 (F(AMD_IBRS_SAME_MODE): passes with the host's bit)",
      note="in the 6.16 merge-window push after v6.15-rc6 (kernel.org post-receive mail of "
           "3 June 2025); present on the 6.18 Zen 3 machine"),
    S("cpuid_msr_imm", "unconfirmed", "KVM: x86: Advertise MSR_IMM", (6, 17),
      description="7.1 ECX bit 5 (a new KVM word)",
      note="absent in 6.12.117, present in linux-next 1c60d04aac53; first release UNVERIFIED"),
)

BY_NAME: Final = {s.name: s for s in SWITCHES}

#: The named profiles (mainline releases) and the newest release kvmfpu confirmed.
NAMED: Final = ("5.15", "5.17", "6.0", "6.1", "6.6", "6.12", "6.18", "7.3")
#: The older LTS releases still in service (Firecracker's 5.10 -> 6.1 table, Debian 11,
#: Ubuntu 20.04, Amazon Linux 2): profiles like NAMED, kept out of the matrix's default
#: kernel list so that its run time stays as measured.
LTS_EXTRA: Final = ("5.4", "5.10")
NEWEST: Final = "7.3"
OLDEST: Final = (5, 4)

#: erratum_1386_microcode[] (arch/x86/kernel/cpu/amd.c, 29ba89f18952; read in proxmox/pve-kernel
#: f2f95ef's copy): (family, model, stepping) -> the first microcode revision with the fix.
ERRATUM_1386_MICROCODE: Final = {(0x17, 0x01, 0x2): 0x0800126E, (0x17, 0x31, 0x0): 0x08301052}


def erratum_1386_fixed_by_microcode(family: int, model: int, stepping: int,
                                    microcode: int | str | None) -> bool:
    """x86_cpu_has_min_microcode_rev(erratum_1386_microcode): an exact family/model/stepping
    match with a revision at or past the fix (an unknown revision is not fixed). The
    revision may be given as /proc/cpuinfo prints it ("0x8301055")."""
    need = ERRATUM_1386_MICROCODE.get((family, model, stepping))
    if need is None or microcode is None:
        return False
    if isinstance(microcode, str):
        try:
            microcode = int(microcode, 16)
        except ValueError:
            return False
    return microcode >= need

#: What every pre-5.16 profile models as 5.15 does (said in its notes).
PRE_5_15_NOTE: Final = (
    "before 5.15: KVM_GET/SET_XSAVE as 5.15's fill_xsave/load_xsave (the same masks and checks "
    "since 5.2's PKRU handling: XSTATE_BV & (guest_supported_xcr0 | FP | SSE), MXCSR always "
    "checked); KVM_GET_SUPPORTED_CPUID and MSR lists are modelled as 5.15's (features KVM "
    "gained between this release and 5.15 are not removed), and KVM_SET_CPUID2 applies "
    "kvm_check_cpuid's virtual-address-width check, which Linux has only from ~5.9")


@dataclass(frozen=True)
class KernelProfile:
    version: Version                         # the upstream release (a distro kernel's base)
    switches: frozenset[str] = field(default_factory=frozenset)
    distro: str | None = None                # "ubuntu", "debian", "proxmox", ... or None
    release: str | None = None               # the distribution's string (uname -r)
    notes: tuple[str, ...] = ()              # what the profile assumes or could not establish

    @property
    def name(self) -> str:
        return self.release or format_version(self.version)

    @property
    def upstream(self) -> str:
        return format_version(self.version)

    def has(self, switch: str) -> bool:
        if switch not in BY_NAME:
            raise KeyError(f"unknown switch {switch!r}")
        return switch in self.switches

    def at_least(self, major: int, minor: int) -> bool:
        return self.version[:2] >= (major, minor)

    def source(self, switch: str) -> str:
        s = BY_NAME[switch]
        return f"{s.commit}, {s.since[0]}.{s.since[1]}"

    def describe(self) -> dict[str, object]:
        return {
            "name": self.name,
            "upstream": self.upstream,
            "distro": self.distro,
            "notes": list(self.notes),
            "switches": {s.name: s.name in self.switches for s in SWITCHES},
        }


def _check_range(v: Version, text: str) -> None:
    if v[:2] < OLDEST:
        raise UnknownKernel(f"{text}: kvmfpu models Linux {OLDEST[0]}.{OLDEST[1]} and later")
    newest = parse_version(NEWEST)
    if v[:2] > newest[:2]:
        raise UnknownKernel(f"{text} is newer than the newest release kvmfpu knows ({NEWEST})")


@cache
def profile(name: str | Version) -> KernelProfile:
    """The profile of a kernel version ("6.6", "6.1.60", "6.1.y", a tuple) or of a
    distribution kernel ("5.15.0-91-generic", "6.1.0-18-amd64", "6.8.12-4-pve", any
    "X.Y.Z-suffix"): the upstream base's switches plus the distribution's backports."""
    dk = None
    if isinstance(name, tuple):
        v = name
    else:
        if len(name) > 200:
            raise UnknownKernel(f"{name[:40]!r}...: a kernel release is not {len(name)} characters")
        if re.fullmatch(r"v?(\d+)\.(\d+)(?:\.(\d+|y)|-rc(\d+))?", name.strip()):
            v = parse_version(name)
        else:
            dk = distro_kernel(name)
            v = dk.base if dk is not None else parse_version(name)
    label = dk.release if dk is not None else format_version(v)
    if dk is not None and dk.base[:2] < OLDEST:
        raise UnknownKernel(f"{label}: built on {format_version(dk.base)}; kvmfpu models Linux "
                            f"{OLDEST[0]}.{OLDEST[1]} and later")
    _check_range(v, label)
    active = {s.name for s in SWITCHES if s.active(v)}
    notes: list[str] = []
    if dk is not None:
        unknown = [n for n in (*dk.adds, *dk.removes) if n not in BY_NAME]
        if unknown:                       # distro data names a switch this table lacks
            raise KeyError(f"distro data for {label} names unknown switches {unknown}")
        active = (active | set(dk.adds)) - set(dk.removes)
        notes += dk.notes
    if v[:2] < (5, 15):
        notes.append(PRE_5_15_NOTE)
    return KernelProfile(v, frozenset(active), dk.distro if dk else None,
                         dk.release if dk else None, tuple(notes))


def named_profiles() -> list[KernelProfile]:
    return [profile(n) for n in NAMED]
