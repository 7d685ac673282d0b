"""kvmfpu.linux.uabi's fast paths against its one-at-a-time paths: the conjunction of
KVM_SET_XSAVE's checks must give exactly the verdict of the ordered checks (the kernel's
order, fpu_copy_uabi_to_guest_fpstate / validate_user_xstate_header), and KVM_GET_XSAVE
packed into the caller's buffer exactly the bytes of the returned copy."""

from __future__ import annotations

import random
import struct

import pytest

from kvmfpu import uapi
from kvmfpu.kvm.errors import KvmError
from kvmfpu.kvm.vcpu_xsave import XsavePath
from kvmfpu.linux import uabi
from kvmfpu.linux.uabi_plans import switches
from kvmfpu.testing.vcpus import ready_vcpu

CASES = [
    ("skylake-sp", "6.18"),
    ("sapphirerapids", "6.6"),
    ("zen4", "6.1"),
    ("zen2", "5.16"),
    ("skylake-sp", "6.2"),
]


def _outcome(fn: object, *args: object) -> object:
    try:
        return ("ok", fn(*args))  # type: ignore[operator]
    except KvmError as exc:
        return ("err", exc.errno, exc.function, exc.reason, exc.commit)


def _mutants(buf: bytes, seed: int) -> list[bytes]:
    """The buffer with header words, MXCSR and reserved bytes changed (every check's input
    field), one or two at a time."""
    rnd = random.Random(seed)
    fields = [(512, "<Q"), (520, "<Q"), (24, "<I")] + [(528 + 8 * i, "<Q") for i in range(6)]
    out = []
    for _ in range(300):
        b = bytearray(buf)
        for at, fmt in rnd.sample(fields, rnd.choice((1, 2))):
            width = struct.calcsize(fmt) * 8
            old = struct.unpack_from(fmt, b, at)[0]
            new = rnd.choice(
                (old ^ (1 << rnd.randrange(width)), rnd.getrandbits(width), 0, old | 0x200, old & ~0x7)
            )
            struct.pack_into(fmt, b, at, new)
        out.append(bytes(b))
    return out


@pytest.mark.parametrize(("host", "kernel"), CASES)
def test_fast_checks_give_the_ordered_checks_verdict(host: str, kernel: str) -> None:
    # The ordered checks are the kernel's (their own tests: tests/kvm/test_errno_paths.py);
    # the fast path must accept exactly what they accept and refuse with their reason.
    v = ready_vcpu(host, kernel)
    if not v._xsave_path.guest_fpu:
        pytest.skip("5.15's path has no fast case")
    hk = v.kvm.hk
    xp: XsavePath = v._xsave_path
    base = v.get_xsave()
    accepted = 0
    for buf in [base, *_mutants(base, hash((host, kernel)) & 0xFFFF)]:
        fast = _outcome(
            uabi.check_uabi_to_guest_fpstate, hk, v.gfpu, buf, xp.supported_xcr0, *xp.origin_after_cpuid
        )
        ordered = _outcome(
            uabi._ordered_checks,
            hk,
            switches(hk),
            v.gfpu.fpstate,
            buf,
            xp.supported_xcr0,
            *xp.origin_after_cpuid,
        )
        assert fast == ordered
        accepted += fast[0] == "ok"
    assert 0 < accepted < 301  # both sides of the predicate were exercised


@pytest.mark.parametrize(("host", "kernel"), CASES)
def test_get_xsave_into_writes_what_get_xsave_returns(host: str, kernel: str) -> None:
    v = ready_vcpu(host, kernel)
    with v.guest() as g:
        g.set_reg("xmm1", 0x1234)
    out = bytearray(b"\xff" * 4200)  # every byte struct padding must zero is set
    v.ioctl(uapi.KVM_GET_XSAVE, out)
    assert bytes(out[:4096]) == v.get_xsave()
    assert out[4096:] == b"\xff" * 104  # KVM_GET_XSAVE writes sizeof(struct kvm_xsave)
