#!/usr/bin/env python3
"""Coverage-guided fuzzing of the capture decoder with atheris (libFuzzer for Python).

    pip install '.[fuzz]'
    tools/fuzz_decode.py --make-corpus corpus/      # seed files from the shipped samples
    tools/fuzz_decode.py corpus/ -runs=200000       # libFuzzer options pass through

The target is what ``kvmfpu decode`` runs: kvmfpu.blob.load (read the container, choose the
layout, decode) and both renderings (the table and the JSON document), with a host and a
--format picked by the first input bytes. The only exception allowed is InputError (one
line, exit 2 in the CLI); a decoded image must encode back to its bytes. Crashes are
written by libFuzzer as crash-* files; replay one with ``tools/fuzz_decode.py crash-FILE``.
"""

from __future__ import annotations

import gzip
import json
import lzma
import os
import pathlib
import sys

# This checkout's kvmfpu, not an installed copy (tools run from the source tree).
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import atheris

with atheris.instrument_imports(include=["kvmfpu"]):
    from kvmfpu import cpus
    from kvmfpu.blob import qemu, render, sample_data  # noqa: F401  (qemu: imported late)
    from kvmfpu.blob.decode import encode
    from kvmfpu.blob.errors import InputError
    from kvmfpu.blob.load import load
    from kvmfpu.blob.sources import FORMATS

with atheris.instrument_imports(include=["elftools"]):
    import elftools.elf.elffile  # noqa: F401

HOSTS = [None, *cpus.names()]
CHOICES = [None, *FORMATS]


def test_one_input(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    host = HOSTS[fdp.ConsumeIntInRange(0, 2 * len(HOSTS) - 1) % len(HOSTS)] \
        if fdp.ConsumeBool() else None
    fmt = CHOICES[fdp.ConsumeIntInRange(0, len(CHOICES) - 1)] if fdp.ConsumeIntInRange(0, 15) == 0 \
        else None
    payload = fdp.ConsumeBytes(fdp.remaining_bytes())
    try:
        items = load(payload, host, fmt, max_size=1 << 20)
    except InputError:
        return
    for it in items:
        if encode(it.decoded) != it.capture.data:
            raise AssertionError(f"{it.capture.origin}: encode(decode(x)) != x")
        render.text(it.decoded, origin=it.capture.origin, host=it.choice.host,
                    how=it.choice.how, all_registers=True, notes=it.capture.notes)
        json.dumps(render.to_json(it.decoded, origin=it.capture.origin, fmt=it.capture.fmt,
                                  host=it.choice.host, how=it.choice.how))


def make_corpus(out: pathlib.Path) -> None:
    """Seed inputs: the shipped samples (the QEMU stream uncompressed too), as a hex dump,
    and compressed; each behind the 3 bytes the target reads for host and format."""
    out.mkdir(parents=True, exist_ok=True)
    kvm = sample_data.path(sample_data.KVM_ZEN5).read_bytes()
    from kvmfpu.testing import hostile, hostile_qcow2

    small_stream = hostile.ram_stream([bytes(range(256)) * 16])
    seeds = {
        "kvm": kvm, "kvm-head": kvm[:1024],
        "hex": "\n".join(kvm[i:i + 32].hex() for i in range(0, 1024, 32)).encode(),
        "gzip": gzip.compress(kvm),
        "qemu": lzma.decompress(sample_data.path(sample_data.QEMU_TCG).read_bytes()),
        "libvirt-save": hostile.libvirt_image(small_stream),
        # A qcow2 snapshot whose vm state sits in normal, zero, unallocated and compressed
        # clusters (tests/blob/test_fuzz.py's corpus has every other kind).
        "qcow2": hostile_qcow2.build(hostile_qcow2.Spec(small_stream, cluster_bits=12,
                                                        kinds=hostile_qcow2.KINDS[:4])),
    }
    for name, data in seeds.items():
        (out / name).write_bytes(b"\x00\x00\x00" + data)


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--make-corpus":
        make_corpus(pathlib.Path(sys.argv[2]))
        return
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
