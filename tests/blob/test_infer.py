"""Layout inference: a layout note, the user-feature mask and the length decide; more than
one fitting layout is an error that asks for --host."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from kvmfpu import cpus
from kvmfpu.blob import decode as dec
from kvmfpu.blob import infer, sources
from kvmfpu.blob.errors import AmbiguousLayout, InputError


def test_gdb_core_on_amd_is_ambiguous_without_a_host(data_dir: Path) -> None:
    (cap,) = sources.read(data_dir / "gdb-gcore-zen5-nt_x86_xstate.bin")
    with pytest.raises(AmbiguousLayout, match="2 layouts fit") as info:
        infer.choose(cap)
    assert "opmask@0x340" in str(info.value) and "opmask@0x440" in str(info.value)
    ch = infer.choose(cap, "devhost-zen5")
    d = dec.decode(cap.data, ch.layout, host=ch.host)
    assert not any("holds data" in a for a in d.anomalies)
    # gdb sized the note for Intel's layout: the length gives it away.
    assert any(a.startswith("2688 bytes is none of the lengths devhost-zen5's") for a in d.anomalies)


def test_inference_when_one_layout_fits(guest_blob: Any) -> None:
    blob = bytearray(guest_blob("haswell"))          # XCR0 0x7: YMM sits at 576 everywhere
    (cap,) = sources.read(bytes(blob))
    ch = infer.choose(cap)
    assert "the only layout" in ch.how
    with pytest.raises(AmbiguousLayout):
        infer.choose(sources.read(guest_blob("zen4"))[0])




def test_compacted_images_use_xcomp_bv(guest_blob: Any) -> None:
    from kvmfpu.testing import booted
    cpu = booted("skylake-sp")
    cpu.set_reg("k2", 0x77)
    cpu.xsavec(0, (1 << 64) - 1)
    size = cpus.load("skylake-sp").layout.compacted(cpu.xcr0)[1]
    (cap,) = sources.read(bytes(cpu.memory[:size]))
    ch = infer.choose(cap)                 # every AVX-512 host compacts alike
    assert dec.decode(cap.data, ch.layout).field("k2").value == 0x77


def test_no_packaged_host_fits() -> None:
    blob = bytearray(4096)
    blob[512:520] = (1 << 40 | 3).to_bytes(8, "little")      # a feature bit no host has
    with pytest.raises(InputError, match="give --host"):
        infer.choose(sources.read(bytes(blob))[0])


def test_host_without_xsave_is_refused(guest_blob: Any) -> None:
    with pytest.raises(InputError, match="no XSAVE"):
        infer.choose(sources.read(guest_blob("haswell"))[0], "nehalem")
