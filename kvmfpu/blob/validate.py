"""Would a host and kernel accept this xsave buffer? The model's KVM_SET_XSAVE checks, on a
vCPU set up the way a VMM sets one up for the guest CPU model.

``Validator`` builds the vCPU once (guest permission for AMX when the guest has it,
KVM_SET_CPUID2) and then checks buffers without copying them (Vcpu.check_xsave), so a
4 KiB buffer costs about a microsecond.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from kvmfpu import cpus
from kvmfpu.arch import xfeatures as xf
from kvmfpu.cpus.model import HostModel
from kvmfpu.kvm.cpuid import CpuidEntry
from kvmfpu.kvm.errors import KvmError
from kvmfpu.kvm.system import ARCH_REQ_XCOMP_GUEST_PERM, Kvm
from kvmfpu.kvm.vcpu import Vcpu
from kvmfpu.qemu.guest_cpuid import build
from kvmfpu.qemu.models import GuestModel

if TYPE_CHECKING:
    from kvmfpu.blob.sources import Capture


@dataclass(frozen=True)
class Verdict:
    accepted: bool
    errno: str | None = None
    function: str | None = None
    reason: str | None = None
    commit: str | None = None
    note: str = ""
    #: What happens to the guest's state although KVM accepts the buffer (a TCG-written
    #: QEMU stream: registers restored to their initial state).
    warnings: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        # The warnings join the note: the kvmfpu-validate/1 result keeps its fields.
        note = "; ".join(n for n in (self.note, *self.warnings) if n)
        return {"accepted": self.accepted, "errno": self.errno, "function": self.function,
                "reason": self.reason, "commit": self.commit, "note": note}


#: The verdict on every accepted buffer without a note (frozen, so one object serves all).
ACCEPTED = Verdict(True)


def first_capture(path: str | os.PathLike[str], snapshot: str | None = None,
                  fmt: str | None = None) -> Capture:
    """The first vCPU's capture in a file (what ``migrate --blob`` moves; read_blob in
    kvmfpu.migrate.check gives its bytes), with what its container says; ``snapshot``
    picks a qcow2 image's snapshot, ``fmt`` the format (--format; default: detected)."""
    from kvmfpu.blob import sources
    from kvmfpu.blob.errors import InputError
    caps = sources.read(path, fmt, sources.MAX_SIZE, snapshot=snapshot)
    if not caps:
        raise InputError(f"{os.fspath(path)}: no xsave image found")
    return caps[0]


def restore_warning(cap: Capture) -> str | None:
    """For a QEMU stream written under TCG (kvmfpu.blob.qemu sets Capture.restores_init):
    the components whose registers the destination loads in their initial state, because
    QEMU copies TCG's XSTATE_BV (never updated, 0 from reset) into KVM_SET_XSAVE's buffer
    (target/i386/xsave_helper.c x86_cpu_xsave_all_areas) and XRSTOR initialises every
    component whose bit is clear."""
    return tcg_restore_warning(cap.restores_init)


def tcg_restore_warning(restores_init: int) -> str | None:
    """restore_warning for the components a TCG stream leaves out of XSTATE_BV."""
    if not restores_init:
        return None
    return (f"written under TCG: XSTATE_BV leaves out {xf.describe_mask(restores_init)}, "
            "whose registers hold data, so the destination will restore their initial state "
            "(the guest's values are lost)")


def guest_cpuid(kvm: Kvm, guest: str | HostModel | GuestModel | None) -> list[CpuidEntry]:
    """The guest CPUID a VMM gives the vCPU: KVM_GET_SUPPORTED_CPUID (``host``/None), QEMU's
    table for a guest CPU (a GuestModel: kvmfpu.qemu.guest_cpuid.build, the permission
    already asked by Validator), or KVM's table trimmed to another processor model's XSAVE
    features (leaf 1 XSAVE and leaf 0xD's XCR0), the way a named CPU model limits them."""
    if isinstance(guest, GuestModel):
        return build(kvm, guest, ask_perm=False).entries
    supported = kvm.get_supported_cpuid()
    if guest is None or guest == "host":
        return supported
    model = cpus.load(guest)
    if not model.has("xsave"):
        return [e._replace(ecx=e.ecx & ~(1 << 26 | 1 << 27)) if e.function == 1 else e
                for e in supported if e.function != 0xD]
    d0 = next((e for e in supported if (e.function, e.index) == (0xD, 0)), None)
    offered = 0 if d0 is None else d0.eax | d0.edx << 32
    xcr0 = offered & (model.supported_xcr0 | xf.FPSSE)
    out = []
    for e in supported:
        if e.function == 0xD and e.index >= 2 and not xcr0 >> e.index & 1:
            continue
        if (e.function, e.index) == (0xD, 0):
            size = kvm.host.layout.standard_size(xcr0)
            e = e._replace(eax=xcr0 & 0xFFFF_FFFF, edx=xcr0 >> 32, ebx=size, ecx=size)
        out.append(e)
    return out


class Validator:
    """KVM_SET_XSAVE's verdict on buffers for ``host`` running ``kernel``, for a guest
    CPU model ``guest`` (None: the host's supported CPUID)."""

    def __init__(self, host: str | HostModel, kernel: str,
                 guest: str | HostModel | GuestModel | None = None, flavor: str | None = None):
        kvm = self.kvm = Kvm(host, kernel, flavor)
        self.notes: list[str] = []
        if isinstance(guest, GuestModel):
            wants = guest.components
        else:
            wants = xf.XTILEDATA if guest in (None, "host") else cpus.load(guest).supported_xcr0
        if kvm.kernel.has("amx") and kvm.caps.supported_xcr0 & wants & xf.XTILEDATA:
            # A VMM asks for AMX before creating vCPUs (QEMU: kvm_request_xsave_components).
            kvm.arch_prctl(ARCH_REQ_XCOMP_GUEST_PERM, int(xf.XFeature.XTILEDATA))
        self.vcpu: Vcpu = kvm.create_vm().create_vcpu()
        self.vcpu.set_cpuid2(guest_cpuid(kvm, guest))

    @property
    def size(self) -> int:
        """How many bytes KVM_SET_XSAVE reads (guest_fpu.uabi_size)."""
        return self.vcpu.gfpu.uabi_size

    def check(self, buf: bytes | bytearray | memoryview) -> Verdict:
        cls = buf.__class__
        if (cls is bytes or cls is bytearray) and len(buf) >= self.vcpu.gfpu.uabi_size:
            # The common case: nothing to pad or cast; every check still runs on the vCPU.
            try:
                self.vcpu.check_xsave(buf)
            except KvmError as exc:
                return Verdict(False, exc.errno_name, exc.function, exc.reason, exc.commit)
            return ACCEPTED
        note = ""
        view = memoryview(buf).cast("B")
        if len(view) < self.size:
            note = f"{len(view)}-byte buffer padded with zeros to the {self.size} bytes KVM reads"
            view = memoryview(bytes(view) + bytes(self.size - len(view)))
        try:
            self.vcpu.check_xsave(view)
        except KvmError as exc:
            return Verdict(False, exc.errno_name, exc.function, exc.reason, exc.commit, note)
        return Verdict(True, note=note)

    def check_capture(self, cap: Capture) -> Verdict:
        """``check`` of the capture's buffer, with what the container says happens to the
        state although KVM accepts it (restore_warning)."""
        verdict = self.check(cap.data)
        warning = restore_warning(cap)
        return dataclasses.replace(verdict, warnings=(warning,)) if warning else verdict

