"""The whole guest CPU across a migration: which CPUID features the guest had on the source
and does not have on the destination, why the destination lacks each one, and which layer
of the real stack stops the migration (or what the guest risks where nothing does).

What the stack does (the rules here follow it):

- QEMU (target/i386/cpu.c x86_cpu_filter_features / mark_unavailable_features): a requested
  bit KVM does not report is cleared with "host doesn't support requested feature"; with
  ``enforce`` realize fails ("Host doesn't support requested features"). CPUID is not in the
  migration stream, so a destination QEMU with the default ``check`` starts the incoming
  guest with the feature gone, and the guest, which read CPUID at boot, may #UD when it uses
  it. QEMU's docs/devel/migration/compatibility.rst leave the check to the management layer.
- libvirt: after a start it records the live CPU with check=full
  (qemuProcessUpdateLiveGuestCPU) and sends it in the migration cookie; the destination's
  virCPUx86UpdateLive fails the migration with "guest CPU doesn't match specification:
  missing features: ..." for custom and host-model CPUs. host-passthrough (check=none) is
  not refused; libvirt's docs call migrating it between different hosts dangerous.
- Snapshot VMMs (Firecracker, Cloud Hypervisor, crosvm) restore the saved CPUID verbatim;
  KVM_SET_CPUID2 takes bits KVM cannot provide, so the guest keeps seeing them. Firecracker
  supports a snapshot only on the same CPU model (docs/snapshotting/snapshot-support.md: an
  Ice Lake snapshot does not restore on Cascade Lake).
"""

from __future__ import annotations

from collections.abc import Iterable

from kvmfpu.kvm.profiles import BY_NAME
from kvmfpu.kvm.system import Kvm
from kvmfpu.migrate.report import Finding, Scope
from kvmfpu.migrate.vmm import Vmm
from kvmfpu.qemu.models import FEATURES, GuestModel, describe_feature

#: The libvirt and QEMU messages the findings quote.
LIBVIRT_MISSING = "guest CPU doesn't match specification: missing features: "
QEMU_ENFORCE = "Host doesn't support requested features"


def why_missing(feature: str, kvm: Kvm) -> str:
    """Why the destination's KVM does not offer ``feature``: the CPU lacks it, the kernel
    cleared it (an erratum), or this KVM does not virtualise it."""
    host = kvm.host
    bit = FEATURES.get(feature)
    if bit is not None and not host.cpuid(bit.leaf, bit.subleaf)[bit.reg] >> bit.bit & 1:
        if host.cpuid_view != "host":
            return (
                f"the destination's guest CPUID ({host.name}, a Firecracker fingerprint) does "
                "not have it: that kernel's KVM or Firecracker hid it, or the CPU lacks it"
            )
        return f"the destination CPU ({host.name}) does not have it (its CPUID, as dumped)"
    if feature == "xsaves" and kvm.hk.cfg.zen_erratum_applied:
        sw = BY_NAME["zen_xsaves_erratum"]
        return (
            f"the destination kernel {kvm.kernel.name} stops using XSAVES on AMD family 17h "
            f'(Zen 1/2 erratum 1386) and KVM follows it: {sw.commit} "{sw.title}" '
            "(seed 001; `kvmfpu replay zen-xsaves`)"
        )
    return (
        f"the destination CPU has it, but KVM on {kvm.kernel.name} ({kvm.flavor}) does not "
        "offer it (KVM_GET_SUPPORTED_CPUID)"
    )


def _listed(features: Iterable[str], kvm: Kvm) -> str:
    return "; ".join(f"{describe_feature(f)}: {why_missing(f, kvm)}" for f in features)


def lost_features(lost: Iterable[str], guest: GuestModel, vmm: Vmm, kvm: Kvm, dst_label: str) -> Finding:
    """The error for guest features that do not survive the migration, saying which layer
    stops it or what the guest risks."""
    names = sorted(lost)
    head = (
        f"the guest loses {len(names)} CPU feature(s) it had on the source, which "
        f"{dst_label} cannot offer: {_listed(names, kvm)}. "
    )
    if not vmm.by_field:
        tail = (
            f"{vmm.label} restores the saved CPUID verbatim (KVM_SET_CPUID2 accepts bits KVM "
            "cannot provide), so the guest still sees them and faults (#UD) when it uses "
            "them; Firecracker supports snapshots only on the same CPU model "
            "(docs/snapshotting/snapshot-support.md)"
        )
    elif guest.passthrough:
        tail = (
            "libvirt does not stop a host-passthrough guest (check=none; only invtsc is "
            "checked) and QEMU starts it: the guest may #UD or crash when it uses them "
            "(libvirt's docs: migrating host-passthrough between different hosts is "
            "dangerous)"
        )
    else:
        tail = (
            f'libvirt refuses the migration for custom and host-model CPUs ("{LIBVIRT_MISSING}'
            f'{",".join(names)}", virCPUx86UpdateLive on the destination); bare QEMU '
            "with check (the default) starts the guest without them (CPUID is not in the "
            "migration stream) and the guest may #UD when it uses them"
        )
        if getattr(guest, "enforce", False):
            tail = (
                f'QEMU with enforce refuses to start on the destination ("{QEMU_ENFORCE}", '
                "x86_cpu_realizefn); without enforce: " + tail
            )
    return Finding("error", "cpu", head + tail, features=tuple(names))


def vendor_change(src: Kvm, dst: Kvm) -> Finding | None:
    """host passthrough takes each host's vendor: a guest whose vendor changes under it runs
    vendor-specific code for the wrong CPU."""
    a, b = src.host.vendor, dst.host.vendor
    if a == b:
        return None
    return Finding(
        "error",
        "cpu",
        f"the guest's CPU vendor changes from {a} to {b} (host "
        "passthrough gives the guest each host's vendor and family); a running "
        "guest keeps the vendor-specific code paths it chose at boot",
    )


def scope(
    vmm: Vmm, compared: int, msr_names: list[str], restore: str | None, by_field: bool, other_msrs: int = 0
) -> Scope:
    """What a check covers and what it leaves out."""
    checked = [
        (
            f"guest CPUID: {compared} CPU features the guest had on the source, against what the "
            "destination's QEMU and KVM offer"
            if by_field
            else f"guest CPUID: the {compared} CPU features of the saved CPUID, against what the "
            "destination's KVM offers"
        ),
        "xstate: XCR0, XSTATE_BV and every register of the enabled components, after the "
        f"destination's KVM_SET_XSAVE ({'re-laid by QEMU' if by_field else 'buffer verbatim'})",
        f"xstate MSRs {vmm.label} carries: {', '.join(msr_names) or 'none'}",
    ]
    if other_msrs:
        checked.append(
            f"the other {other_msrs} MSRs {vmm.label} saves from KVM_GET_MSR_INDEX_LIST, "
            "against the destination's list (their values are not modelled)"
        )
    if restore:
        checked.append(f"the guest's own {restore} of a task context it saved on the source")
    not_checked = [
        "TSC frequency and invtsc (QEMU and libvirt check them at start)",
        "CPUID leaves other than feature bits (cache, topology, brand, PMU leaf 0xA): they come "
        "from the destination",
        (
            "MSRs outside the xstate set (IA32_ARCH_CAPABILITIES, PMU, nested VMX capabilities)"
            if by_field
            else "the values of MSRs outside the xstate set"
        ),
        "Hyper-V enlightenments, device state, memory and the machine type",
        "microcode and errata other than the modelled ones",
    ]
    if not by_field:
        not_checked.append(
            f"{vmm.label}'s own CPUID normalisation and CPU templates: the guest "
            "CPUID here is what QEMU builds for the model on the source host"
        )
    return Scope(checked, not_checked)
