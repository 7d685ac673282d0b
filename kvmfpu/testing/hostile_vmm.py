"""Hostile VMM and CRIU state files (kvmfpu.blob.cloud_hypervisor, crosvm, criu,
firecracker_state): each class is a way such a file can be absurd — truncated, with counts
or lengths far past its size, nested deep, with versions or magics kvmfpu has not read, or
with fields of the wrong shape. The fuzzer (tests/blob/test_fuzz.py) draws from
:func:`draw`; the reader tests use :func:`assert_refused`.

Every input must decode or be refused with InputError, bounded by its size: ``kvmfpu
decode`` then prints one line and exits 2. Firecracker files get a valid CRC64 after
their damage, so the damage reaches the layout reader instead of stopping at the checksum.
"""

from __future__ import annotations

import json
import random
import struct
import time
from pathlib import Path
from typing import Any, Final

from kvmfpu.testing import vmm_samples as vs

#: A hostile input is refused well inside this (issue 16's bound for hostile inputs).
SECONDS: Final = 5.0

CLASSES: Final = ("vmm-cloud-hypervisor", "vmm-crosvm", "vmm-criu", "vmm-firecracker")


def assert_refused(data: bytes, match: str, tmp_path: Path, capsys: Any, fmt: str | None = None) -> str:
    """``data`` is an InputError matching ``match`` for kvmfpu.blob.load, and for ``kvmfpu
    decode`` one line on stderr and exit 2, each within SECONDS; returns that line."""
    import pytest

    from kvmfpu.blob.errors import InputError
    from kvmfpu.blob.load import load
    from kvmfpu.cli import main

    t0 = time.perf_counter()
    with pytest.raises(InputError, match=match):
        load(data, "zen4", fmt)
    assert time.perf_counter() - t0 < SECONDS
    path = tmp_path / "hostile.bin"
    path.write_bytes(data)
    capsys.readouterr()
    t0 = time.perf_counter()
    assert main(["decode", str(path), "--host", "zen4", *(["--format", fmt] if fmt else [])]) == 2
    assert time.perf_counter() - t0 < SECONDS
    err: str = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


def _sample(xstate: bytes) -> vs.VcpuSample:
    """A vCPU around ``xstate`` with zen4's CPUID leaf 0xD (fixed, so drawing is cheap)."""
    cpuid = [(0xD, 0, 0, 0x2E7, 0x988, 0x988, 0), (0xD, 1, 0, 0xF, 0x988, 0x1800, 0)]
    cpuid += [
        (0xD, b, 0, s, o, 0, 0)
        for b, s, o in ((2, 256, 576), (5, 64, 832), (6, 512, 896), (7, 1024, 1408), (9, 8, 2432))
    ]
    return vs.VcpuSample(xstate[:4096].ljust(4096, b"\0"), cpuid, 0x2E7, {0xDA0: 0, 0x1C4: 0})


def _cut(rng: random.Random, data: bytes) -> bytes:
    return data[: rng.randrange(len(data))]


def _cloud_hypervisor(rng: random.Random, s: vs.VcpuSample) -> bytes:
    choice = rng.randrange(6)
    if choice == 0:
        return _cut(rng, vs.ch_state_json([s]))
    state: Any = vs.ch_vcpu_state(s)
    kvm = state["Kvm"]
    if choice == 1:  # a region that is not 1024 u32 words
        kvm["xsave"]["region"] = rng.choice(([0] * 1023, [1 << 40] * 1024, ["x"] * 1024, None, {}))
    elif choice == 2:  # xcrs claiming more XCRs than it holds, or not bytes
        kvm["xcrs"] = rng.choice(([255] * 8, [1, 0, 0, 0], list(range(300)), "xcr0"))
    elif choice == 3:  # another hypervisor's state, or no state
        state = rng.choice(({"Mshv": {}}, {}, [], "Kvm"))
    elif choice == 4:  # deep nesting inside the nested JSON string
        text = "[" * rng.choice((1000, 100_000)) + "]" * 10
        return json.dumps(
            {
                "snapshots": {
                    "cpu-manager": {"snapshots": {"0": {"snapshots": {}, "snapshot_data": {"state": text}}}}
                },
                "snapshot_data": None,
            }
        ).encode()
    else:  # cpuid entries of the wrong shape
        kvm["cpuid"] = rng.choice(([{"function": -1}], [{"function": 13, "eax": 1 << 33}], "cpuid"))
    body = {
        "snapshots": {
            "cpu-manager": {
                "snapshots": {"0": {"snapshots": {}, "snapshot_data": {"state": json.dumps(state)}}},
                "snapshot_data": None,
            }
        },
        "snapshot_data": None,
    }
    return json.dumps(body).encode()


def _crosvm(rng: random.Random, s: vs.VcpuSample) -> bytes:
    choice = rng.randrange(6)
    if choice == 0:
        return _cut(rng, vs.crosvm_fragment(s))
    if choice == 1:  # an array or map head counting far past the file
        head = rng.choice((b"\x9b", b"\xbb", b"\x5b", b"\x7b")) + rng.randbytes(8)
        return b"\xa9\x67vcpu_id\x00\x65xsave" + head + bytes(16)
    if choice == 2:  # indefinite lengths, reserved infos
        return b"\xa9\x67vcpu_id\x00\x65xsave" + rng.choice((b"\x9f\x00\xff", b"\xbf\xff", b"\x1c", b"\x5f"))
    if choice == 3:  # deep nesting
        return b"\xa1\x67vcpu_id" + b"\x81" * rng.choice((65, 1000, 50_000)) + b"\x00"
    snap = vs.crosvm_snapshot(s)
    if choice == 4:  # len and data disagree
        snap["xsave"]["len"] = rng.choice((0, 4097, 1 << 62, -1, "4096"))
    else:
        snap["xcrs"] = rng.choice(({0: -1}, {-1: 0}, {"x": 0}, [0], {0: "7"}))
    return vs.cbor_dumps(snap)


def _criu(rng: random.Random, s: vs.VcpuSample) -> bytes:
    fp = vs.criu_fields(s.xsave, _zen4_layout(), 0x2E7)
    choice = rng.randrange(5)
    if choice == 0:
        return _cut(rng, vs.criu_core_image(fp))
    if choice == 1:  # entry sizes and field lengths past the file
        n = rng.choice((0x7FFF_FFFF, -1, 1 << 20))
        return struct.pack("<IIi", 0x54564319, 0x55053847, n) + b"\x12" + b"\xff" * 9 + b"\x01"
    if choice == 2:  # component word counts criu refuses
        fp["xsave"][rng.choice(("ymmh_space", "opmask_reg", "pkru"))] = [1] * rng.choice((1, 3, 1000))
    elif choice == 3:
        fp["st_space"] = fp["st_space"][: rng.randrange(32)]
    else:  # groups and unknown wire types
        return struct.pack("<IIi", 0x54564319, 0x55053847, 3) + bytes(
            [8, 1, rng.choice((0x0B, 0x0C, 0x0E, 0x0F))]
        )
    return vs.criu_core_image(fp)


def _zen4_layout() -> Any:
    from kvmfpu import cpus

    return cpus.load("zen4").layout


def _refresh_crc(body: bytes) -> bytes:
    return body + struct.pack("<Q", vs.crc64_jones(body))


def _firecracker(rng: random.Random, s: vs.VcpuSample) -> bytes:
    version = rng.choice(("1.0.0", "5.0.0", "6.0.0", "8.0.0"))
    good = vs.firecracker_vmstate([s], version)[:-8]
    choice = rng.randrange(6)
    if choice == 0:
        return _refresh_crc(_cut(rng, good))
    if choice == 1:  # versions kvmfpu has not read, versionize magics
        if rng.random() < 0.5:
            return _refresh_crc(
                good[:8] + struct.pack("<Q", 5) + rng.choice((b"9.0.0", b"7.0.0", b"1.0.1")) + good[21:]
            )
        return _refresh_crc(struct.pack("<Q", 0x0710_1984_8664_0000 | rng.randrange(1, 9)) + good[8:])
    if choice == 2:  # a count far past the file somewhere in the first kilobytes
        b = bytearray(good)
        at = rng.randrange(16, min(len(b) - 8, 2000))
        b[at : at + 8] = struct.pack("<Q", rng.choice((1 << 62, (1 << 64) - 1, 1 << 32)))
        return _refresh_crc(bytes(b))
    if choice == 3:  # 33 or 0 vCPUs, or many copies of one
        return vs.firecracker_vmstate([s] * rng.choice((0, 33)), version)
    if choice == 4:  # a stale CRC
        return good + struct.pack("<Q", rng.getrandbits(64))
    return _refresh_crc(good[:-4096] + rng.randbytes(4096))  # the tail of the last vCPU


def draw(rng: random.Random, xstate: bytes) -> tuple[str, bytes]:
    """One hostile VMM or CRIU file around the capture ``xstate``: (class, bytes)."""
    kind = rng.choice(CLASSES)
    s = _sample(xstate)
    make = {
        "vmm-cloud-hypervisor": _cloud_hypervisor,
        "vmm-crosvm": _crosvm,
        "vmm-criu": _criu,
        "vmm-firecracker": _firecracker,
    }[kind]
    return kind, make(rng, s)
