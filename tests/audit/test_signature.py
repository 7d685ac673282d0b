"""A state signature keeps everything a verdict reads: images that share one get the same
verdict, findings and lost registers from the real migration check (kvmfpu.migrate.check),
whatever their data registers hold — on raw-buffer and by-field (QEMU) paths, on both
vendors' layouts."""

from __future__ import annotations

import random
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kvmfpu import cpus
from kvmfpu.arch import legacy
from kvmfpu.arch import xfeatures as xf
from kvmfpu.audit.signature import DATA_FIELD, signature
from kvmfpu.blob.decode import decode, encode
from kvmfpu.blob.errors import InputError
from kvmfpu.migrate.check import check
from kvmfpu.testing.strategies import xsave_blobs

#: (source, destination, guest, vmm): one pair per path the state can take.
PATHS = (
    ("zen4@6.8", "zen4@6.8", "host", "raw"),  # same host, raw KVM_SET_XSAVE
    ("zen4@6.8", "haswell@6.8", "host", "raw"),  # AVX-512 state onto an AVX2 host
    ("zen4@6.8", "zen4@5.15", "host", "qemu"),  # QEMU field copy, older kernel
    ("zen4@6.8", "skylake-sp@6.1", "EPYC-Genoa", "qemu"),  # AMD layout to Intel's
    ("zen4@6.8", "zen4@6.8", "Haswell", "qemu"),  # a model without AVX-512: zmm lost
)


def revalue(blob: bytes, host: str, seed: int) -> bytes:
    """``blob`` with every non-zero data register given another non-zero value (zero ones
    stay zero): the same signature by construction, different contents."""
    d = decode(blob, cpus.load(host).layout)
    rng = random.Random(seed)
    for f in (*d.st, *d.xmm, *d.legacy, *(f for c in d.components for f in c.fields)):
        if DATA_FIELD.match(f.name) and f.value:
            f.value = rng.randrange(1, 1 << (8 * f.size))
    return encode(d)


def shape(src: str, dst: str, guest: str, vmm: str, blob: bytes) -> tuple[object, ...]:
    """What a verdict says, without the register values it quotes."""
    r = check(src, dst, guest, vmm=vmm, blob=blob, advise=False)
    return (
        r.verdict,
        tuple((f.level, f.stage) for f in r.findings),
        r.lost_features,
        tuple(sorted(name for name, _, _ in r.lost)),
    )


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(blob=xsave_blobs("zen4"), seed=st.integers(0, 2**32))
def test_one_signature_one_verdict(blob: bytes, seed: int) -> None:
    try:
        sig = signature(blob, cpus.load("zen4").layout)
    except InputError:
        return  # decode refuses it: no signature, no verdict
    other = revalue(blob, "zen4", seed)
    assert signature(other, cpus.load("zen4").layout) == sig
    for path in PATHS:
        assert shape(*path, blob) == shape(*path, other), path


def _zmm_blob(lane_value: int) -> bytes:
    """A Zen 4 image with AVX-512 state in XSTATE_BV and one ZMM_Hi256 lane set."""
    layout = cpus.load("zen4").layout
    buf = bytearray(4096)
    struct.pack_into("<HI", buf, 0, legacy.FCW_INIT, 0)
    struct.pack_into("<I", buf, 24, 0x1F80)
    bv = (
        xf.FP
        | xf.SSE
        | xf.YMM
        | xf.XFeature.OPMASK.mask
        | xf.XFeature.ZMM_HI256.mask
        | xf.XFeature.HI16_ZMM.mask
    )
    struct.pack_into("<Q", buf, legacy.XSTATE_BV, bv)
    off = layout.components[xf.XFeature.ZMM_HI256].offset
    struct.pack_into("<Q", buf, off, lane_value)
    return bytes(buf)


def test_nonzero_is_what_separates_signatures() -> None:
    # SDM vol. 1 13.8.1 (XRSTOR: a component is restored from memory or initialised): a
    # ZMM_Hi256 that holds zeros arrives whole on a host without AVX-512 (it reads as its
    # initial state there), one non-zero lane does not: so "zero or not" must stay in the
    # signature, and it does.
    # Here the guest's CPU model (QEMU's Haswell) has no AVX-512 on a Zen 4 host.
    zero, one = _zmm_blob(0), _zmm_blob(0xDEAD)
    layout = cpus.load("zen4").layout
    assert signature(zero, layout) != signature(one, layout)
    path = ("zen4@6.8", "zen4@6.8", "Haswell", "qemu")
    assert shape(*path, zero)[0] == "compatible"
    got = shape(*path, one)
    assert got[0] == "incompatible" and "zmm0" in got[3]


def test_control_values_are_exact() -> None:
    # KVM_SET_XSAVE refuses MXCSR bits outside MXCSR_MASK (fpu_copy_uabi_to_guest_fpstate ->
    # copy_uabi_to_xstate, mxcsr_feature_mask): the value, not its zero-ness, decides.
    layout = cpus.load("zen4").layout
    good = bytearray(_zmm_blob(0))
    bad = bytearray(good)
    struct.pack_into("<I", bad, 24, 0xFFFF_FFFF)
    assert signature(bytes(good), layout) != signature(bytes(bad), layout)
    assert shape("zen4@6.8", "zen4@6.8", "host", "raw", bytes(bad))[0] == "incompatible"


@pytest.mark.parametrize("name", ["fcw", "mxcsr", "pkru", "tilecfg", "header_reserved"])
def test_control_fields_are_not_data(name: str) -> None:
    assert not DATA_FIELD.match(name)


def test_tcg_stream_registers_are_in_the_signature() -> None:
    # The same image read from a QEMU stream written under TCG arrives with those
    # components in their initial state (blob.validate.tcg_restore_warning, what
    # `kvmfpu migrate --blob` says of such a stream), from a KVM capture it arrives whole:
    # two verdicts, so two signatures (and two digests, the audit's dedupe key).
    layout = cpus.load("zen4").layout
    blob = _zmm_blob(0xDEAD)
    kvm, tcg = signature(blob, layout), signature(blob, layout, restores_init=xf.AVX512)
    assert kvm != tcg and kvm.digest != tcg.digest
    assert tcg.to_json()["restores_init"] == hex(xf.AVX512)
