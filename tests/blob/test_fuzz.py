"""Fuzzing the decoder: mutated captures of every kind go through kvmfpu.blob.load (read the
container, choose the layout, decode) and must either decode or raise InputError, which the
CLI turns into one line and exit 2. Anything else is a bug.

``test_seeded_mutations`` runs 100,000 derandomized inputs (the count the issue asks for):
98,000 mutations of real captures and 2,000 drawn from the hostile classes of
kvmfpu.testing.hostile (nested compression, absurd QEMU descriptions, ELF cores with shared,
overlapping or overrunning note segments, compressed or not; issue 16; RAM sections and
libvirt headers with absurd lengths, offsets and counts, issue 12), each of which must also
end within HOSTILE_SECONDS. The hypothesis test adds shrinking; tools/fuzz_decode.py runs
the same target under atheris (coverage-guided) for longer campaigns.
"""

from __future__ import annotations

import bz2
import gzip
import json
import lzma
import random
import shutil
import struct
import subprocess
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from work_budget import within

from kvmfpu import cpus
from kvmfpu.blob import compression, render, sample_data, sources
from kvmfpu.blob.decode import encode
from kvmfpu.blob.errors import InputError
from kvmfpu.blob.load import load
from kvmfpu.blob.sources import FORMATS
from kvmfpu.testing import hostile, hostile_qcow2, hostile_vmm, vmm_samples

INPUTS = 100_000
#: One input in HOSTILE_EVERY is a hostile one (2,000 of the 100,000).
HOSTILE_EVERY = 50
#: Seconds a hostile input may take (before issue 16's fixes: minutes, or forever).
#: Calls one hostile input may cost (tests/work_budget.py; counted, not timed).
HOSTILE_CALLS = 5_000_000
HOSTS = [None, *cpus.names()]
INTERESTING = (0, 1, 3, 0x7F, 0x80, 0xFF, 0xFFFF, 0x8000_0000, 0xFFFF_FFFF, 1 << 63,
               (1 << 64) - 1, 0x2FF, 0x602E7, 0x8000_0000_0000_00FF)
FIELDS = (0, 2, 4, 24, 28, 464, 472, 480, 512, 520, 528, 0x340, 0x440, 0xA80)


def corpus(guest_blob: Any, containers: Any) -> list[tuple[str, bytes]]:
    """Real and model-made captures of every kind the decoder reads."""
    from kvmfpu.testing import booted
    zen5 = sample_data.path(sample_data.KVM_ZEN5).read_bytes()
    haswell = guest_blob("haswell")
    amx = guest_blob("sapphirerapids")
    cpu = booted("skylake-sp")
    cpu.set_reg("k3", 0x55)
    cpu.xsavec(0, (1 << 64) - 1)
    compacted = bytes(cpu.memory[:cpus.load("skylake-sp").layout.compacted(cpu.xcr0)[1]])
    no_hint = bytearray(zen5)
    no_hint[464:472] = bytes(8)
    small = haswell[:832]
    qemu_sample = lzma.decompress(sample_data.path(sample_data.QEMU_TCG).read_bytes())
    pages = [bytes(range(256)) * 16, bytes(4095) + b"\1"]
    small_stream = hostile.ram_stream(pages[:1])
    programs = [(name, subprocess.run([name, "-c"], input=small, capture_output=True,
                                      check=True).stdout)
                for name in ("zstd", "lzop") if shutil.which(name)]
    return [
        ("raw zen5", zen5), ("raw haswell", haswell), ("raw amx", amx),
        ("raw compacted", compacted), ("raw no hint", bytes(no_hint)),
        ("hex", containers.hex(small).encode()), ("xxd", containers.xxd(small).encode()),
        ("gdb", containers.gdb(small).encode()),
        ("od", "".join(f"{o:06x} " + " ".join(f"{b:02x}" for b in small[o:o + 16]) + "\n"
                       for o in range(0, len(small), 16)).encode()),
        ("core", containers.core_of(haswell)),
        ("core+layout", containers.elf_core(
            containers.note(b"LINUX", 0x202, zen5) + containers.note(b"LINUX", 0x205, b"".join(
                struct.pack("<IIII", b, c.size, c.offset, 0)
                for b, c in cpus.load("devhost-zen5").layout.components.items()
                if not c.supervisor)))),
        ("sigframe", containers.sigframe(small, 0x7)),
        ("gzip", gzip.compress(haswell)), ("xz", lzma.compress(small)),
        ("qemu", qemu_sample),
        # Issue 12's containers: RAM sent as pages, under x-ignore-shared, as mapped-ram
        # (kvmfpu.testing.hostile.ram_stream), a libvirt save image (the real sample after
        # libvirt's header), and the codecs libvirt writes with.
        ("qemu ram", hostile.ram_stream(pages)),
        ("qemu ignore-shared", hostile.ram_stream(pages, ["x-ignore-shared"])),
        ("qemu mapped-ram", hostile.ram_stream(pages, ["mapped-ram"])),
        ("libvirt-save", hostile.libvirt_image(qemu_sample)),
        ("libvirt-save xz", hostile.libvirt_image(lzma.compress(small_stream), 3)),
        *programs,
        ("bzip2", bz2.compress(small)),
        # qcow2 internal snapshots (kvmfpu.testing.hostile_qcow2): the vm state in normal,
        # zero, unallocated and deflate-compressed clusters, and in extended-L2 subclusters.
        ("qcow2", hostile_qcow2.build(hostile_qcow2.Spec(small_stream, cluster_bits=12,
                                                         kinds=hostile_qcow2.KINDS[:4]))),
        ("qcow2 extended-l2", hostile_qcow2.build(hostile_qcow2.Spec(
            small_stream, cluster_bits=14, extended_l2=True, kinds=("subclusters", "compressed")))),
        # Firecracker v1.15+: snapshot-editor info-vmstate text (no file is published).
        ("firecracker-info", vmm_samples.firecracker_info_text([vmm_samples.model_vcpu("zen4")])),
        # VMM and CRIU state files (tests/blob/data/*/PROVENANCE.md).
        *((f"vmm {p.parent.name}", p.read_bytes()) for vmm in ("cloud_hypervisor", "crosvm", "criu",
          "firecracker") for p in sorted((Path(__file__).parent / "data" / vmm).iterdir())
          if p.suffix in (".json", ".cbor", ".img", ".bin")),
    ]


def test_corpus_has_every_kind(guest_blob: Any, containers: Any) -> None:
    """Every format kvmfpu reads (sources.FORMATS: what detection and --format know) and
    every compression it expands (compression.MAGICS) is in the corpus, found by detection:
    a reader added without a seed fails here. Each seed read decodes and re-encodes to its
    bytes."""
    formats: set[str] = set()
    codecs: set[str] = set()
    for name, data in corpus(guest_blob, containers):
        try:
            caps = sources.read(data, max_size=1 << 20)
        except InputError:  # crit's JSON of the CRIU image (its oracle) is no capture
            assert name == "vmm criu" and data.lstrip()[:1] == b"{", name
            continue
        # A libvirt image's vCPUs report the QEMU stream they come from; its header is theirs.
        formats |= {"libvirt-save" if "libvirt_save" in c.container else c.fmt for c in caps}
        kind = compression.sniff(data[:compression.PEEK])
        if kind is not None:
            codecs.add(kind)
        # Decoded (one_input checks encode(decode(x)) == x), with a host where the layout
        # is ambiguous without one.
        assert "decoded" in (one_input(data, None, None), one_input(data, "zen4", None)), name
    assert formats == set(FORMATS), set(FORMATS) - formats
    assert codecs == {n for n, _ in compression.MAGICS}, {n for n, _ in compression.MAGICS} - codecs


def mutate(rng: random.Random, data: bytes, others: list[bytes]) -> bytes:
    b = bytearray(data)
    for _ in range(rng.choice((1, 1, 2, 3, 8))):
        op = rng.randrange(9)
        n = len(b)
        if op == 0 and n:                                   # random bytes
            for _ in range(rng.randint(1, 16)):
                b[rng.randrange(n)] = rng.randrange(256)
        elif op == 1 and n:                                 # bit flip
            i = rng.randrange(n)
            b[i] ^= 1 << rng.randrange(8)
        elif op == 2 and n >= 8:                            # interesting value in a field
            off = rng.choice(FIELDS) if rng.random() < 0.7 else rng.randrange(n - 7)
            if off + 8 <= n:
                struct.pack_into("<Q", b, off, rng.choice(INTERESTING) & ((1 << 64) - 1))
        elif op == 3:                                       # truncate
            del b[rng.randrange(n + 1):]
        elif op == 4:                                       # append
            b += rng.randbytes(rng.choice((1, 7, 64, 512, 4096)))
        elif op == 5 and n:                                 # delete a chunk
            i = rng.randrange(n)
            del b[i:i + rng.randint(1, 256)]
        elif op == 6 and n:                                 # duplicate a chunk
            i = rng.randrange(n)
            b[i:i] = b[i:i + rng.randint(1, 256)]
        elif op == 7:                                       # splice with another seed
            other = rng.choice(others)
            cut = rng.randrange(min(n, len(other)) + 1)
            b = b[:cut] + other[cut:]
        else:                                               # text noise (hex dumps)
            i = rng.randrange(n + 1)
            b[i:i] = rng.choice((b" ", b"\n", b"*\n", b"0x", b"zz", b":", b"\t", b"<x+8>:"))
    return bytes(b)


def one_input(data: bytes, host: str | None, fmt: str | None) -> str:
    """Decode or InputError; a decoded image must re-encode to its bytes and render (the
    table and the JSON document, as ``kvmfpu decode`` prints them)."""
    try:
        items = load(data, host, fmt, max_size=1 << 20)
    except InputError:
        return "refused"
    for it in items:
        assert encode(it.decoded) == it.capture.data
        render.text(it.decoded, origin=it.capture.origin, host=it.choice.host,
                    how=it.choice.how, all_registers=True, notes=it.capture.notes)
        json.dumps(render.to_json(it.decoded, origin=it.capture.origin, fmt=it.capture.fmt,
                                  host=it.choice.host, how=it.choice.how))
    return "decoded"


def test_seeded_mutations(guest_blob: Any, containers: Any, tmp_path: Path) -> None:
    seeds = corpus(guest_blob, containers)
    # The 625 KB QEMU stream costs ~7 ms a parse: mutate it (and the libvirt image holding
    # it) for 0.5% of the inputs; the zstd/lzop programs cost a process each.
    weights = [0.075 if name in ("qemu", "libvirt-save") else 0.1 if name in ("zstd", "lzop")
               else 1.0 for name, _ in seeds]
    # A state.json parse or a vmstate CRC costs ~2 ms: mutate those seeds less often.
    weights = [w * (0.2 if name.startswith("vmm ") and len(d) > 4096 else 1) for w, (name, d) in
               zip(weights, seeds, strict=True)]
    rng = random.Random(20261121)
    raw = [d for _, d in seeds]
    outcomes: Counter[str] = Counter()
    hostile_rng = random.Random(16)       # its own stream: the mutations stay as they were
    vmm_rng = random.Random(12)           # and the hostile VMM files theirs
    hostile_outcomes: Counter[tuple[str, str]] = Counter()
    zen5 = dict(seeds)["raw zen5"]
    for i in range(INPUTS):
        (name, seed), = rng.choices(seeds, weights)
        data = mutate(rng, seed, raw) if rng.random() < 0.97 else rng.randbytes(rng.randrange(6000))
        host = rng.choice(HOSTS) if rng.random() < 0.5 else None
        fmt = rng.choice(FORMATS) if rng.random() < 0.05 else None
        if i % HOSTILE_EVERY == 0:
            name, data = hostile.draw(hostile_rng, zen5)
        if i % HOSTILE_EVERY == HOSTILE_EVERY // 2:     # hostile VMM and CRIU files
            name, data = hostile_vmm.draw(vmm_rng, zen5)
        hostile_input = i % HOSTILE_EVERY in (0, HOSTILE_EVERY // 2)
        try:
            if hostile_input:
                outcome = within(HOSTILE_CALLS, lambda d=data, h=host, f=fmt: one_input(d, h, f))
                hostile_outcomes[(name, outcome)] += 1
            else:
                outcome = one_input(data, host, fmt)
            outcomes[outcome] += 1
        except Exception as exc:
            crash = tmp_path / f"crash-{i}.bin"
            crash.write_bytes(data)
            raise AssertionError(f"input {i} (from {name}, host {host}, format {fmt}; saved in "
                                 f"{crash}): {type(exc).__name__}: {exc}") from exc
    assert sum(outcomes.values()) == INPUTS
    assert sum(hostile_outcomes.values()) == 2 * INPUTS // HOSTILE_EVERY
    for classes in (hostile.CLASSES, hostile_vmm.CLASSES):   # every class drawn, mostly refused
        drawn = INPUTS // HOSTILE_EVERY // len(classes)
        for kind in classes:
            assert hostile_outcomes[(kind, "refused")] > drawn * 3 // 4, hostile_outcomes
    # Both paths must be exercised well, or the fuzzer is not testing the decoder.
    assert outcomes["decoded"] > INPUTS // 5 and outcomes["refused"] > INPUTS // 5, outcomes


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.one_of(st.binary(max_size=5000),
                      st.binary(min_size=576, max_size=4200).map(lambda b: b[:512] + struct.pack(
                          "<QQ", 3, 0) + b[528:])),
       host=st.sampled_from(HOSTS), fmt=st.sampled_from([None, *FORMATS]))
def test_hypothesis_inputs(data: bytes, host: str | None, fmt: str | None) -> None:
    one_input(data, host, fmt)


@pytest.mark.parametrize("size", [0, 1, 511, 575, 576, 577, 4095, 4096, 4097, 11008, 1 << 20])
def test_every_length_has_an_answer(size: int) -> None:
    data = bytes(size)
    assert one_input(data, "skylake-sp", None) in ("decoded", "refused")
    with pytest.raises(InputError, match="limit"):
        load(bytes((1 << 20) + 1), "skylake-sp", max_size=1 << 20)


@pytest.mark.parametrize("name", sorted(p.name for p in (Path(__file__).parent / "data" / "fuzz")
                                        .iterdir()))
def test_fuzzer_findings_stay_fixed(name: str) -> None:
    """Inputs the fuzzers found crashing the decoder (tests/blob/data/fuzz/), replayed the
    ways tools/fuzz_decode.py may have cut them (up to 3 bytes at either end pick the host
    and format), with and without a host."""
    data = (Path(__file__).parent / "data" / "fuzz" / name).read_bytes()
    payloads = {data[k:len(data) - j] for k in range(4) for j in range(4)}
    assert any(p[:4] == b"\x7fELF" for p in payloads) or not name.startswith("atheris-elf")
    for payload in payloads:
        for host in (None, "zen4"):
            assert one_input(payload, host, None) in ("decoded", "refused")
