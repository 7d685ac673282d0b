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
    text = str(info.value)
    assert "opmask@0x340" in text and "opmask@0x440" in text
    # Named by shape, with the hosts that have it (not by the first host found).
    assert "intel-std-avx512: cascadelake, emeraldrapids" in text
    assert "amd-std-avx512: devhost-zen5, zen4, zen5:" in text
    ch = infer.choose(cap, "devhost-zen5")
    assert (ch.host, ch.shape, ch.hosts) == ("devhost-zen5", "amd-std-avx512", ("devhost-zen5",))
    d = dec.decode(cap.data, ch.layout, host=ch.host, xcr0=cap.xcr0_hint)
    assert not any("holds data" in a for a in d.anomalies)
    # gdb sized the note for Intel's layout: a known producer (tests/blob/test_gdb_core.py),
    # not an anomaly.
    assert d.anomalies == [] and "gdb 13 and earlier" in d.notes[0]


def test_inference_when_one_layout_fits(guest_blob: Any) -> None:
    blob = bytearray(guest_blob("haswell"))  # XCR0 0x7: YMM sits at 576 everywhere
    (cap,) = sources.read(bytes(blob))
    ch = infer.choose(cap)
    assert "the only layout" in ch.how
    # Every AVX host places YMM at 576: the layout is named by that shape, not by a host.
    assert ch.host == ch.shape == "std-avx" and {"haswell", "zen1", "zen4"} <= set(ch.hosts)
    assert "that of broadwell, cascadelake" in ch.how
    with pytest.raises(AmbiguousLayout):
        infer.choose(sources.read(guest_blob("zen4"))[0])


def test_one_host_keeps_its_name(guest_blob: Any) -> None:
    (cap,) = sources.read(guest_blob("zen4"))
    ch = infer.choose(cap, "zen4")  # --host takes host names as before
    assert (ch.host, ch.shape, ch.how) == ("zen4", "amd-std-avx512+pkru", "--host")


def test_vendor_offset_tables_match_every_packaged_dump() -> None:
    # Each table is what CPUID leaf 0xD EBX reports on every packaged host of the vendor;
    # Zen 2's PKRU (0x340, size 0x40, without PKU: its quirk) is the one exception.
    for name in cpus.names():
        model = cpus.load(name)
        if not model.has("xsave"):
            continue
        table = {"GenuineIntel": infer.INTEL_OFFSETS, "AuthenticAMD": infer.AMD_OFFSETS}.get(model.vendor)
        if table is None:
            continue
        for bit, c in model.layout.components.items():
            if c.supervisor or (name, bit) == ("zen2", 9):
                continue
            assert table[bit] == c.offset, (name, bit)


def test_shape_names_are_one_per_placement() -> None:
    names: dict[str, set[tuple[tuple[int, int, int], ...]]] = {}
    for name in cpus.names():
        model = cpus.load(name)
        if not model.has("xsave"):
            continue
        for mask in (model.layout.user_mask, model.layout.user_mask & 0x2FF, 0x7):
            sig = infer.signature(model.layout, mask)
            names.setdefault(infer.shape_name(sig), set()).add(sig)
    assert all(len(sigs) == 1 for sigs in names.values()), names
    assert {
        "intel-std-avx512+pkru",
        "amd-std-avx512+pkru",
        "intel-std-mpx+avx512+pkru",
        "intel-std-avx512+pkru+amx",
        "std-avx",
    } <= set(names)
    assert "other-std-avx+pkru (ymm@0x240+0x100 pkru@0x340+0x40)" in names  # Zen 2
    # The last resort: two placements the rule would name alike get their offsets.
    a, b = ((5, 0x440, 64),), ((5, 0x500, 64),)
    assert len(set(infer._names([a, b], False).values())) == 2


def test_compacted_images_use_xcomp_bv(guest_blob: Any) -> None:
    from kvmfpu.testing import booted

    cpu = booted("skylake-sp")
    cpu.set_reg("k2", 0x77)
    cpu.xsavec(0, (1 << 64) - 1)
    size = cpus.load("skylake-sp").layout.compacted(cpu.xcr0)[1]
    (cap,) = sources.read(bytes(cpu.memory[:size]))
    ch = infer.choose(cap)  # every AVX-512 host compacts alike
    assert dec.decode(cap.data, ch.layout).field("k2").value == 0x77


def test_no_packaged_host_fits() -> None:
    blob = bytearray(4096)
    blob[512:520] = (1 << 40 | 3).to_bytes(8, "little")  # a feature bit no host has
    with pytest.raises(InputError, match="give --host"):
        infer.choose(sources.read(bytes(blob))[0])


def test_host_without_xsave_is_refused(guest_blob: Any) -> None:
    with pytest.raises(InputError, match="no XSAVE"):
        infer.choose(sources.read(guest_blob("haswell"))[0], "nehalem")


# How each format's layout is named (Capture.fmt): the program that builds the buffer from
# kept registers (QEMU's x86_cpu_xsave_all_areas; CRIU's restore_fpu, criu/arch/x86/crtools.c),
# or where a layout note came from (an ELF core's NT_X86_XSAVE_LAYOUT; the CPUID leaf 0xD a VMM
# saved, kvmfpu.blob.vmm_state.layout_note).
HOW = {
    "criu/core-zen4.img": "CRIU restore_fpu's buffer for this host",
    "cloud_hypervisor/state-v39-zen4.json": "CPUID leaf 0xD in the Cloud Hypervisor state.json",
    "firecracker/vmstate-1.0.0-zen4.bin": "CPUID leaf 0xD in the Firecracker vmstate",
}


@pytest.mark.parametrize("name", sorted(HOW))
def test_layout_named_by_the_format_it_came_from(data_dir: Path, name: str) -> None:
    for cap in sources.read(data_dir / name):
        how = infer.choose(cap).how
        assert how.startswith(HOW[name]) and "QEMU" not in how, how
        if cap.rebuild is not None:
            assert infer.choose(cap, "zen4").how == "--host; CRIU restore_fpu's buffer for this destination"


def test_qemu_containers_name_qemu() -> None:
    """A QEMU stream, bare or in a qcow2 snapshot, is laid out by QEMU."""
    from kvmfpu.testing import hostile_qcow2 as hq

    for data in (hq.resent_ram_image(1 << 16, cluster_bits=12),):
        (cap,) = sources.read(data)
        assert cap.fmt == "qcow2"
        assert infer.choose(cap).how.startswith("QEMU's buffer for this host")


def test_crosvm_without_cpuid_is_inferred(data_dir: Path) -> None:
    """crosvm saves no CPUID (spec: "no CPUID saved"): its layout is inferred, and an AMD
    AVX-512 buffer is ambiguous without --host, never named as another format's."""
    (cap,) = sources.read(data_dir / "crosvm" / "vcpu0-zen4.cbor")
    with pytest.raises(AmbiguousLayout, match="give --host"):
        infer.choose(cap)
    assert infer.choose(cap, "zen4").how == "--host"


def test_snapshot_editor_text_layout_named() -> None:
    """Firecracker v1.15+ text (snapshot-editor info-vmstate) carries the vCPU's CPUID: its
    leaf 0xD places the components (the core's NT_X86_XSAVE_LAYOUT case: test_sources.py)."""
    from kvmfpu.testing import vmm_samples as vs

    (cap,) = sources.read(vs.firecracker_info_text([vs.model_vcpu("zen4")]))
    assert infer.choose(cap).how == "CPUID leaf 0xD in snapshot-editor info-vmstate text"
