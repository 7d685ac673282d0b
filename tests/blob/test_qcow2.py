"""qcow2 internal snapshots (issue 12): images made here by qemu-img and QEMU 7.2 (a TCG guest
running tools/samples/tcg_guest.S, ``savevm`` twice with registers changed in between through
QEMU's gdb stub), images built from the format's text (kvmfpu.testing.hostile_qcow2) that
``qemu-img check`` and QEMU's ``loadvm`` accept, and hostile ones.

Oracles: ``qemu-img info --output=json`` / ``qemu-img snapshot -l`` for the listing; QEMU's own
``loadvm`` followed by HMP ``info registers`` for what a snapshot's vm state holds; the guest's
source for the values it leaves (tools/samples/tcg_guest.S: MXCSR 9FC0h, XMM1, YMM3, ST0 = pi,
ST1 = 1.0 with TOP = 6, PKRU 55555554h); the values written through the gdb stub. Refusals follow
QEMU 7.2 block/qcow2.c, block/qcow2-snapshot.c and block/qcow2.h (named in each message).
"""

from __future__ import annotations

import io
import json
import lzma
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from work_budget import within

from kvmfpu.blob import qcow2, sample_data, sources
from kvmfpu.blob.errors import InputError
from kvmfpu.blob.load import load
from kvmfpu.testing import hostile_qcow2 as hq

ROOT = Path(__file__).resolve().parents[2]
DATA = Path(__file__).parent / "data" / "qcow2"
QEMU = shutil.which("qemu-system-x86_64")
QEMU_IMG = shutil.which("qemu-img")
#: Calls a hostile image may cost (tests/work_budget.py; counted, not timed).
BUDGET = 5_000_000

#: tools/samples/tcg_guest.S: what the guest leaves (as test_qemu.test_shipped_tcg_sample).
XMM1_GUEST = 0x3333333344444444_1111111122222222
MXCSR_GUEST = 0x9FC0
#: What the test writes through QEMU's gdb stub before the second savevm.
XMM1_GDB = 0x0123456789ABCDEF_FEDCBA9876543210
MXCSR_GDB = 0x1FA0
#: The QEMU 7.2 TCG stream of that guest (kvmfpu/blob/samples, tools/make_samples.py qemu).
STATE = lzma.decompress(sample_data.path(sample_data.QEMU_TCG).read_bytes())


def registers(path: Any, snapshot: str | None = None) -> tuple[int, int]:
    (item,) = load(path, snapshot=snapshot)
    return item.decoded.field("xmm1").value, item.decoded.field("mxcsr").value


def qemu_img(*args: str) -> str:
    assert QEMU_IMG
    return subprocess.run([QEMU_IMG, *args], capture_output=True, text=True, check=True).stdout


def info_registers(image: Path, snapshot: str) -> tuple[int, int]:
    """QEMU's own reading of a snapshot: loadvm into a stopped TCG VM, then HMP ``info
    registers`` (XMM1 is YMM01's low 128 bits, printed high word first)."""
    from kvmfpu.testing.qemu import Qemu, QemuUnavailable

    drive = f"file={image},if=none,id=d0,format=qcow2"
    try:
        with Qemu(["-accel", "tcg", "-cpu", "max", "-S", "-drive", drive]) as vm:
            said = vm.hmp(f"loadvm {snapshot}")
            regs = vm.hmp("info registers")
    except QemuUnavailable as exc:
        pytest.skip(f"QEMU: {exc}")
    assert "Error" not in said, said
    mxcsr = re.search(r"MXCSR=([0-9a-f]{8})", regs)
    ymm1 = re.search(r"YMM01=(?:[0-9a-f]{16} ){2}([0-9a-f]{16}) ([0-9a-f]{16})", regs)
    assert mxcsr and ymm1, regs
    return int(ymm1[1] + ymm1[2], 16), int(mxcsr[1], 16)


# -- real images: qemu-img create + QEMU 7.2 TCG savevm -------------------------------------


@pytest.fixture(scope="module")
def guest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not (QEMU and QEMU_IMG and shutil.which("as") and shutil.which("ld") and shutil.which("gdb")):
        pytest.skip("needs qemu-system-x86_64, qemu-img, gdb and GNU as/ld")
    t = tmp_path_factory.mktemp("guest")
    subprocess.run(["as", "--32", "-o", t / "g.o", ROOT / "tools/samples/tcg_guest.S"], check=True)
    subprocess.run(
        ["ld", "-m", "elf_i386", "-Ttext=0x100000", "-e", "_start", "-o", t / "g.elf", t / "g.o"], check=True
    )
    return t / "g.elf"


def savevm_twice(elf: Path, image: Path) -> Path:
    """Run the guest to its HLT on ``image``, savevm snap1, set XMM1 and MXCSR through the gdb
    stub, savevm snap2."""
    from kvmfpu.testing.qemu import Qemu, QemuUnavailable, free_port

    port = free_port()
    drive = f"file={image},if=none,id=d0,format=qcow2"
    try:
        with Qemu(
            [
                "-accel",
                "tcg",
                "-cpu",
                "max",
                "-kernel",
                str(elf),
                "-drive",
                drive,
                "-gdb",
                f"tcp:127.0.0.1:{port}",
            ]
        ) as vm:
            for _ in range(400):
                regs = vm.hmp("info registers")
                if "HLT=1" in regs and "EIP=001" in regs:
                    break
                time.sleep(0.05)
            else:
                pytest.skip("the TCG guest did not reach its HLT")
            vm.cmd("stop")
            assert "Error" not in vm.hmp("savevm snap1")
            lo, hi = XMM1_GDB & (1 << 64) - 1, XMM1_GDB >> 64
            subprocess.run(
                [
                    "gdb",
                    "-q",
                    "-batch",
                    "-ex",
                    "set architecture i386:x86-64",
                    "-ex",
                    f"target remote 127.0.0.1:{port}",
                    "-ex",
                    f"set $xmm1.v2_int64 = {{{lo:#x}, {hi:#x}}}",
                    "-ex",
                    f"set $mxcsr = {MXCSR_GDB:#x}",
                    "-ex",
                    "detach",
                ],
                capture_output=True,
                timeout=120,
                check=True,
            )
            vm.cmd("stop")
            assert "Error" not in vm.hmp("savevm snap2")
    except QemuUnavailable as exc:
        pytest.skip(f"QEMU: {exc}")
    return image


#: qemu-img create options: v3 (the default), v2, extended L2, 512-byte clusters (the vm
#: state then spans many L2 tables).
OPTIONS = {
    "v3": "compat=1.1",
    "v2": "compat=0.10",
    "extended-l2": "extended_l2=on,cluster_size=64k",
    "512-byte-clusters": "cluster_size=512",
}


@pytest.fixture(scope="module", params=list(OPTIONS))
def real_image(request: pytest.FixtureRequest, guest: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    image = tmp_path_factory.mktemp("img") / f"{request.param}.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", "-o", OPTIONS[request.param], str(image), "1M")
    return savevm_twice(guest, image)


def test_listing_matches_qemu_img(real_image: Path) -> None:
    info = json.loads(qemu_img("info", "--output=json", str(real_image)))
    header, snaps = qcow2.snapshot_list(real_image)
    assert header.version == {"0.10": 2, "1.1": 3}[info["format-specific"]["data"]["compat"]]
    assert header.cluster_size == info["cluster-size"] and header.size == info["virtual-size"]
    assert header.extended_l2 == info["format-specific"]["data"].get("extended-l2", False)
    assert [(s.id, s.name, s.vm_state_size, s.date_sec, s.date_nsec, s.vm_clock_nsec) for s in snaps] == [
        (
            q["id"],
            q["name"],
            q["vm-state-size"],
            q["date-sec"],
            q["date-nsec"],
            q["vm-clock-sec"] * 10**9 + q["vm-clock-nsec"],
        )
        for q in info["snapshots"]
    ]
    listed = qemu_img("snapshot", "-l", str(real_image))
    assert all(re.search(rf"^{s.id}\s+{s.name}\s", listed, re.M) for s in snaps)


def test_each_snapshot_by_name_and_id(real_image: Path) -> None:
    # snap1: the guest's own values; snap2: what gdb wrote after it.
    assert registers(real_image, "snap1") == registers(real_image, "1") == (XMM1_GUEST, MXCSR_GUEST)
    assert registers(real_image, "snap2") == registers(real_image, "2") == (XMM1_GDB, MXCSR_GDB)
    (item,) = load(real_image, snapshot="snap2")
    assert item.capture.origin == "QEMU cpu 0 in snapshot 'snap2' (ID 2)"
    assert item.capture.fmt == "qcow2" and item.decoded.field("pkru").value == 0x55555554
    assert item.capture.notes[0].startswith(
        f"qcow2 v{qcow2.snapshot_list(real_image)[0].version} snapshot 'snap2' (ID 2): "
    )


def test_qemu_loadvm_reads_what_kvmfpu_reads(real_image: Path) -> None:
    # QEMU 7.2's loadvm takes names only (bdrv_snapshot_find): "loadvm 2" fails here.
    for snap in ("snap1", "snap2"):
        assert info_registers(real_image, snap) == registers(real_image, snap)


def test_vm_state_read_lazily_each_cluster_once(real_image: Path) -> None:
    with qcow2.open_image(real_image) as img:
        snap = img.find("snap1")
        assert snap is not None
        cs = img.header.cluster_size
        before = img.bytes_read
        vm = img.vm_state(snap)
        assert vm.read(4) == b"QEVM"
        # One L1 entry, one L2 table, one cluster: nothing else of the image is read.
        assert img.bytes_read - before == 8 + 2 * cs
        vm.seek(0)
        whole = vm.read()
        assert len(whole) == snap.vm_state_size and vm.tell() == snap.vm_state_size
        clusters = -(-snap.vm_state_size // cs)
        # savevm writes every byte of the state: all clusters normal, each read once (the
        # first one is still cached from the 4-byte read).
        assert vm.stats["normal"] == vm.stats["cluster_reads"] == clusters
        per_l2 = cs // img.header.l2_entry_size * cs
        assert vm.stats["l2_reads"] == -(-snap.vm_state_size // per_l2)
        for at in (0, 1, cs - 3, cs, snap.vm_state_size - 5, snap.vm_state_size):
            vm.seek(at)
            assert vm.read(7) == whole[at : at + 7]
        vm.seek(-10, io.SEEK_END)
        assert vm.read() == whole[-10:]
        # Everything read from the file: L1 entries, L2 tables and the state's clusters (the
        # last may end at EOF), each once, plus the re-reads the seeks above asked for.
        assert img.bytes_read - before <= 8 * (vm.stats["l2_reads"] + 1) + cs * (
            vm.stats["l2_reads"] + vm.stats["cluster_reads"] + 1
        )


def test_the_disk_is_never_read(guest: Path, tmp_path: Path) -> None:
    """A 64 MiB disk full of data (qemu-io writes it) and one snapshot: decoding reads the
    header, the snapshot table and the vm state's tables and clusters, not the disk."""
    if not shutil.which("qemu-io"):
        pytest.skip("qemu-io not installed")
    image = tmp_path / "full.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", str(image), "64M")
    subprocess.run(
        ["qemu-io", "-f", "qcow2", "-c", "write -P 0x5a 0 64M", str(image)], capture_output=True, check=True
    )
    savevm_twice(guest, image)
    with qcow2.open_image(image) as img:
        snap = img.find("snap2")
        assert snap is not None and img.file_size > (64 << 20)
        vm = img.vm_state(snap)
        state = vm.read()
        assert img.bytes_read < len(state) + (1 << 20)
    assert registers(image, "snap2") == (XMM1_GDB, MXCSR_GDB)


def test_default_snapshot_and_disk_only_snapshots(real_image: Path, tmp_path: Path) -> None:
    with pytest.raises(
        InputError,
        match=r"2 snapshots have a vm state; give --snapshot "
        r"NAME_OR_ID \('snap1' \(ID 1\), 'snap2' \(ID 2\)\)",
    ):
        load(real_image)
    copy = tmp_path / "copy.qcow2"
    shutil.copy(real_image, copy)
    qemu_img("snapshot", "-d", "snap2", str(copy))
    qemu_img("snapshot", "-c", "disk-only", str(copy))  # qemu-img: no vm state
    assert [s.vm_state_size > 0 for s in qcow2.snapshot_list(copy)[1]] == [True, False]
    assert registers(copy) == (XMM1_GUEST, MXCSR_GUEST)  # the only one with a vm state
    with pytest.raises(InputError, match=r"'disk-only' .* is disk-only: it has no vm state"):
        load(copy, snapshot="disk-only")
    with pytest.raises(InputError, match="no snapshot with name or ID 'snap2'"):
        load(copy, snapshot="snap2")


def test_cli_list_validate_diff_migrate(real_image: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from kvmfpu.cli import main

    jsonschema = pytest.importorskip("jsonschema")
    assert main(["decode", str(real_image), "--list-snapshots", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    schema = json.loads((ROOT / "kvmfpu/schemas/kvmfpu-qcow2-snapshots-1.json").read_text())
    jsonschema.validate(doc, schema)
    assert [s["name"] for s in doc["snapshots"]] == ["snap1", "snap2"] and doc["default"] is None
    assert main(["decode", str(real_image), "--list-snapshots"]) == 0
    text = capsys.readouterr().out
    assert re.search(r"^2 +snap2 +\d+ ", text, re.M) and "not checked: refcounts" in text
    assert main(["decode", str(real_image)]) == 2
    assert "give --snapshot" in capsys.readouterr().err
    assert (
        main(["validate", str(real_image), "--snapshot", "snap1", "--host", "zen4", "--kernel", "6.6"]) == 0
    )
    assert "in snapshot 'snap1' (ID 1): accepted" in capsys.readouterr().out
    assert main(["diff", str(real_image), str(real_image), "--snapshot", "1", "--snapshot-b", "snap2"]) == 1
    # Under TCG QEMU leaves XSTATE_BV 0, so XMM1 is in its initial state for XRSTOR on both
    # sides (kvmfpu.blob.compare compares what a restore loads); MXCSR is always loaded.
    # kvmfpu diff's text (kvmfpu.blob.regdiff): a header, then one line per register part.
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].endswith(":") and len(lines) == 2
    assert lines[1].strip().startswith(f"mxcsr: {MXCSR_GUEST:#x} [") and f"-> {MXCSR_GDB:#x} [" in lines[1]
    assert main(
        [
            "migrate",
            "--src",
            "zen4",
            "--dst",
            "zen5",
            "--guest",
            "host",
            "--blob",
            str(real_image),
            "--snapshot",
            "snap2",
            "--no-advice",
        ]
    ) in (0, 1)
    assert f"state: {real_image}" in capsys.readouterr().out


def test_backing_file_not_needed_is_read(guest: Path, tmp_path: Path) -> None:
    """savevm writes the whole vm state into the overlay: its backing file is never needed."""
    base = tmp_path / "base.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", str(base), "1M")
    top = tmp_path / "top.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", "-b", str(base), "-F", "qcow2", str(top))
    savevm_twice(guest, top)
    assert qcow2.snapshot_list(top)[0].backing_file == str(base)
    assert registers(top, "snap2") == (XMM1_GDB, MXCSR_GDB)


def test_real_encrypted_image_refused(tmp_path: Path) -> None:
    """qemu-img writes an AES-encrypted image (crypt_method 1) at once; LUKS (2) spends its
    PBKDF iteration time (2 s by default, and it fails here measuring CPU time), so LUKS is
    the header-level hostile case ("encrypted") instead."""
    if not QEMU_IMG:
        pytest.skip("qemu-img not installed")
    image = tmp_path / "aes.qcow2"
    qemu_img(
        "create",
        "-q",
        "-f",
        "qcow2",
        "--object",
        "secret,id=sec0,data=kvmfpu",
        "-o",
        "encrypt.format=aes,encrypt.key-secret=sec0",
        str(image),
        "1M",
    )
    with pytest.raises(
        InputError,
        match=r"AES-encrypted qcow2 image \(crypt_method 1\); kvmfpu "
        r"does not decrypt",
    ):
        load(image)


# -- compressed clusters ----------------------------------------------------------------------


@pytest.fixture(scope="module", params=["zlib", "zstd"])
def compressed_image(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """savevm never compresses and ``qemu-img convert -c`` drops internal snapshots, so: a raw
    file holding the vm state where qcow2_vm_state_offset puts it for a 1 MiB disk, compressed
    by ``qemu-img convert -c`` (QEMU writes every compressed cluster), a disk-only snapshot by
    ``qemu-img snapshot -c`` (QEMU writes the L1 copy and refcounts); then the test sets the
    header's virtual size to 1 MiB and the entry's vm state and disk sizes (three fields).
    QEMU's loadvm accepting the result is the check that it is a real image."""
    if not QEMU_IMG:
        pytest.skip("qemu-img not installed")
    t = tmp_path_factory.mktemp(request.param)
    base = 1 << 29  # 64 KiB clusters: one L2 covers 512 MiB
    raw = t / "raw.img"
    with raw.open("wb") as f:
        f.truncate(base)
        f.seek(base)
        f.write(STATE)
        f.truncate(base + -(-len(STATE) // 65536) * 65536)
    image = t / f"{request.param}.qcow2"
    try:
        qemu_img(
            "convert", "-c", "-O", "qcow2", "-o", f"compression_type={request.param}", str(raw), str(image)
        )
    except subprocess.CalledProcessError as exc:
        pytest.skip(f"qemu-img cannot write {request.param} clusters: {exc.stderr.strip()}")
    raw.unlink()
    qemu_img("snapshot", "-c", "snap1", str(image))
    data = bytearray(image.read_bytes())
    entry = hq.snapshot_entry(bytes(data))
    for off, fmt, value in (
        (24, ">Q", 1 << 20),
        (entry + 32, ">I", len(STATE)),
        (entry + 40, ">Q", len(STATE)),
        (entry + 48, ">Q", 1 << 20),
    ):
        data[off : off + (8 if fmt == ">Q" else 4)] = value.to_bytes(8 if fmt == ">Q" else 4, "big")
    image.write_bytes(data)
    qemu_img("check", "-q", str(image))
    return image


def test_compressed_clusters(compressed_image: Path) -> None:
    if "zstd" in compressed_image.name:
        pytest.importorskip("zstandard")
    with qcow2.open_image(compressed_image) as img:
        vm = img.vm_state(img.snapshots[0])
        assert vm.read() == STATE
        assert vm.stats["compressed"] > 0 and vm.stats["normal"] == 0
    expected = info_registers(compressed_image, "snap1") if QEMU else (XMM1_GUEST, MXCSR_GUEST)
    assert registers(compressed_image) == expected == (XMM1_GUEST, MXCSR_GUEST)


def test_zstd_needs_the_optional_module(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("zstandard")  # to build the image
    image = hq.build(hq.Spec(STATE, compression="zstd", kinds=("compressed",)))
    monkeypatch.setitem(sys.modules, "zstandard", None)
    with pytest.raises(
        InputError,
        match=r"zstd, and reading it needs the optional zstandard "
        r"module \(pip install 'kvmfpu\[zstd\]'\)",
    ):
        load(image)


def _has_zstandard() -> bool:
    try:
        import zstandard  # noqa: F401
    except ImportError:
        return False
    return True


# -- images built from qcow2.txt ------------------------------------------------------------

SPECS = {
    "v3": dict(),
    "v2 no extra data": dict(version=2, extra_data=False),
    "512-byte clusters, every kind": dict(cluster_bits=9, kinds=hq.KINDS[:4]),
    "extended L2, every kind": dict(extended_l2=True, cluster_bits=14, kinds=hq.KINDS),
    "2 MiB clusters": dict(cluster_bits=21, kinds=("compressed",)),
    "zstd": dict(compression="zstd", kinds=("compressed", "normal")),
}


@pytest.mark.parametrize("name", list(SPECS))
def test_built_images(name: str, tmp_path: Path) -> None:
    spec = hq.Spec(STATE, **SPECS[name])  # type: ignore[arg-type]
    if spec.compression == "zstd" and not _has_zstandard():
        pytest.skip("zstandard not installed")
    image = tmp_path / "built.qcow2"
    image.write_bytes(hq.build(spec))
    if QEMU_IMG:  # QEMU's checker: the builder follows the format as QEMU reads it
        qemu_img("check", "-q", str(image))
    with qcow2.open_image(image) as img:
        vm = img.vm_state(img.snapshots[0])
        assert vm.read() == STATE
        kinds = {
            k
            for k in (
                "normal",
                "zero",
                "unallocated",
                "compressed",
                "zero_subclusters",
                "unallocated_subclusters",
            )
            if vm.stats[k]
        }
    wanted = {
        "normal": {"normal"},
        "zero": {"zero", "zero_subclusters"},
        "unallocated": {"unallocated", "unallocated_subclusters"},
        "compressed": {"compressed"},
        "subclusters": {"zero_subclusters", "unallocated_subclusters"},
    }
    assert all(kinds & wanted[k] for k in spec.kinds)
    assert registers(image) == (XMM1_GUEST, MXCSR_GUEST)
    if QEMU and name.startswith(("512", "extended")):
        assert info_registers(image, "snap1") == (XMM1_GUEST, MXCSR_GUEST)


# -- hostile images ---------------------------------------------------------------------------

HOSTILE = hq.hostile(STATE)


@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_images_refused_in_one_line(
    case: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    from kvmfpu.cli import main

    data, pattern = HOSTILE[case]
    with pytest.raises(InputError, match=pattern) as info:
        within(BUDGET, lambda: load(data))
    assert "\n" not in str(info.value) and len(str(info.value)) < 400
    path = tmp_path / "hostile.qcow2"
    path.write_bytes(data)
    assert main(["decode", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("kvmfpu: error: ")


def test_every_truncation_is_refused() -> None:
    """Each prefix of an image (the header, the snapshot table, the tables, the clusters) is
    refused in one line, or decodes when only the refcounts (never read) are cut (found by the fuzzer: a
    4-byte QFI\\xfb file raised struct.error)."""
    image = hq.build(hq.Spec(STATE, cluster_bits=12, kinds=hq.KINDS[:4]))
    with qcow2.open_image(image) as img:  # the builder puts the refcounts last
        needed = img.header.snapshots_offset + img.snapshot_table_size
    for n in [*range(0, 130), *range(130, len(image), 4093)]:
        if n >= needed:  # only refcounts cut: never read
            assert registers(image[:n]) == (XMM1_GUEST, MXCSR_GUEST)
            continue
        with pytest.raises(InputError):
            load(image[:n])


def test_tiny_file_claiming_a_huge_zero_vm_state(tmp_path: Path) -> None:
    """1 TiB of unallocated vm state: within --max-size it is refused at its first 4 bytes
    (no QEVM), not after reading a terabyte of zeros."""
    data, _ = HOSTILE["vm state of 1 TiB of zeros"]
    with pytest.raises(InputError, match="not a QEMU migration stream"):
        within(BUDGET, lambda: load(data, max_size=sources.MAX_SIZE_LIMIT))


def test_snapshot_option_needs_a_qcow2_image() -> None:
    with pytest.raises(
        InputError, match="--snapshot picks a snapshot of a qcow2 image; this input is not one"
    ):
        load(STATE, snapshot="1")
    assert sources.detect(hq.build(hq.Spec(STATE))) == "qcow2"


def test_a_name_wins_over_an_id() -> None:
    """A name first (QEMU 7.2 loadvm: bdrv_snapshot_find compares names), then an ID
    (qemu-img snapshot -a: find_snapshot_by_id_or_name)."""
    image = hq.build(hq.Spec(STATE, snapshots=(("1", "2"), ("2", "other"))))
    with qcow2.open_image(image) as img:
        assert [img.find(k).index for k in ("2", "1", "other")] == [0, 0, 1]  # type: ignore[union-attr]
        assert img.find("3") is None


def test_snapshot_names_cannot_forge_output(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    from kvmfpu.cli import main

    image = tmp_path / "names.qcow2"
    image.write_bytes(hq.build(hq.Spec(STATE, snapshots=(("1", "a\x1b[2J\nb" + "x" * 500), ("2", "ok")))))
    assert main(["decode", str(image)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "\x1b" not in err and len(err) < 600
    assert main(["decode", str(image), "--list-snapshots"]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\\x1b[2J\\nb" in out


# -- a multi-GB vm state ----------------------------------------------------------------------

#: The vm state of the bounded-memory test, in GiB (KVMFPU_BIG_QCOW2_GIB; about 8 s a GiB
#: here, most of it the parser reading page headers).
BIG_GIB = float(os.environ.get("KVMFPU_BIG_QCOW2_GIB", "2"))
#: Issue 12's bound on the decoder's peak resident memory.
RSS_LIMIT = 200 << 20


def test_max_size_limits_what_is_decoded_not_the_vm_state() -> None:
    """Issue 12: "The size limit applies to what is decoded, not to the file": a 4 MiB vm state
    of RAM pages decodes with --max-size 1 MiB (its device state and description are small),
    the pages skipped by seeking; a limit smaller than the description is refused."""
    image = hq.resent_ram_image(4 << 20, cluster_bits=12)
    (cap,) = sources.read(image, max_size=1 << 20)
    facts = cap.container["qemu_stream"]
    assert (
        facts["ram_bytes_skipped"] >= 4 << 20
        and cap.container["qcow2"]["snapshot"]["vm_state_size"] > 4 << 20
    )
    with pytest.raises(InputError, match="without a JSON VM description in its last 64 bytes"):
        sources.read(image, max_size=64)


def test_multi_gb_vm_state_decoded_in_bounded_memory(tmp_path: Path) -> None:
    """Issue 12: "bounded memory regardless of size; the size limit applies to what is decoded,
    not to the file". A snapshot whose vm state holds BIG_GIB GiB of RAM pages (more than
    --max-size's 256 MiB default) is decoded by ``kvmfpu decode --json`` in a child whose peak
    RSS (getrusage RUSAGE_CHILDREN, kvmfpu.testing.big_stream.peak_rss, as
    test_stream_big.py measures) stays under 200 MB; every cluster is read about once (the
    description's search reads the last ones again). Before the vm state went to the
    streaming parser it was refused as larger than the limit."""
    from kvmfpu.testing import big_stream as big

    ram = int(BIG_GIB * 2**30)
    image = tmp_path / "big.qcow2"
    image.write_bytes(hq.resent_ram_image(ram))
    assert image.stat().st_size < ram // 100  # compressed clusters: a small file
    rss, doc = big.peak_rss(image)
    print(f"qcow2 vm state of {BIG_GIB} GiB: peak RSS {rss / 2**20:.1f} MiB")
    assert rss < RSS_LIMIT, f"peak RSS {rss >> 20} MiB"
    (entry,) = doc["files"]
    stream, snap = entry["container"]["qemu_stream"], entry["container"]["qcow2"]
    assert stream["read_as"] == "file" and stream["ram_bytes_skipped"] >= ram
    size = snap["snapshot"]["vm_state_size"]
    assert size > ram > sources.MAX_SIZE
    clusters = -(-size // 65536)
    assert clusters <= snap["reads"]["compressed"] <= clusters + 40
    (cap,) = doc["captures"]
    # hq.resent_ram_image's cpu section: MXCSR 9FC0h.
    assert int(cap["sse"]["mxcsr"]["value"], 16) == hq.RESENT_MXCSR and cap["format"] == "qcow2"


# -- the shipped sample -----------------------------------------------------------------------


def sample() -> Path:
    return DATA / "qemu-7.2-tcg-2snap.qcow2.xz"


def test_shipped_sample() -> None:
    """tests/blob/data/qcow2/PROVENANCE.md: made by this file's savevm_twice and kept
    xz-compressed, as users keep images: read through the xz layer."""
    data = (DATA / "qemu-7.2-tcg-2snap.qcow2.xz").read_bytes()
    with pytest.raises(InputError, match="2 snapshots have a vm state; give --snapshot"):
        load(data)
    assert registers(data, "snap1") == (XMM1_GUEST, MXCSR_GUEST)
    assert registers(data, "2") == (XMM1_GDB, MXCSR_GDB)
    assert load(data, snapshot="snap1")[0].capture.notes[0] == "xz-compressed image"


# -- libvirt 9.0: virsh snapshot-create-as (internal) -------------------------------------------

VIRSH = ("virsh", "-c", "qemu:///system")


def _virsh(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*VIRSH, *args], capture_output=True, text=True, timeout=120, check=check)


@pytest.fixture(scope="module")
def libvirt() -> Iterator[None]:
    """A running libvirtd (and virtlogd): the one already up, else started here as root in
    the foreground (Popen, so this fixture knows their pids) and stopped again."""
    if not (shutil.which("virsh") and shutil.which("libvirtd") and shutil.which("virtlogd")):
        pytest.skip("libvirt (virsh, libvirtd, virtlogd) not installed")
    started: list[subprocess.Popen[bytes]] = []
    try:
        if _virsh("version", check=False).returncode:
            if os.geteuid() != 0:
                pytest.skip("libvirtd is not running and starting it needs root")
            for daemon in ("virtlogd", "libvirtd"):
                if subprocess.run(["pgrep", "-x", daemon], capture_output=True).returncode:
                    started.append(
                        subprocess.Popen([daemon], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                    )
            for _ in range(100):
                if not _virsh("version", check=False).returncode:
                    break
                time.sleep(0.1)
            else:
                pytest.skip("libvirtd did not come up")
        yield
    finally:
        for proc in reversed(started):
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()


def test_virsh_internal_snapshot(libvirt: None, guest: Path) -> None:
    """libvirt's default snapshot of a running qcow2 domain is internal (disk and memory:
    QEMU's savevm through libvirt, src/qemu/qemu_snapshot.c); the image then holds it."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="kvmfpu-virsh-") as tmp:
        os.chmod(tmp, 0o755)  # the qemu user must reach the image and kernel
        image, kernel = Path(tmp) / "disk.qcow2", Path(tmp) / "g.elf"
        shutil.copy(guest, kernel)
        qemu_img("create", "-q", "-f", "qcow2", str(image), "1M")
        name = f"kvmfpu-test-{os.getpid()}"
        xml = Path(tmp) / "dom.xml"
        xml.write_text(f"""<domain type='qemu'>
  <name>{name}</name><memory unit='MiB'>16</memory><vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type><kernel>{kernel}</kernel></os>
  <cpu mode='maximum' migratable='off'/>
  <devices><emulator>{QEMU}</emulator>
    <disk type='file' device='disk'><driver name='qemu' type='qcow2'/>
      <source file='{image}'/><target dev='hda' bus='ide'/></disk></devices>
</domain>""")
        created = _virsh("create", str(xml), check=False)
        if created.returncode:
            pytest.skip(f"libvirt cannot start a TCG domain here: {created.stderr.strip()[:200]}")
        try:
            for _ in range(200):
                regs = _virsh("qemu-monitor-command", name, "--hmp", "info registers").stdout
                if "HLT=1" in regs and "EIP=001" in regs:
                    break
                time.sleep(0.05)
            _virsh("snapshot-create-as", name, "lv-snap")
            assert "lv-snap" in _virsh("snapshot-list", name, "--name").stdout
            _virsh("snapshot-delete", name, "lv-snap", "--metadata")  # libvirt's record only
        finally:
            _virsh("destroy", name, check=False)
        (snap,) = qcow2.snapshot_list(image)[1]
        info = json.loads(qemu_img("info", "--output=json", "-U", str(image)))
        assert (snap.name, snap.vm_state_size) == ("lv-snap", info["snapshots"][0]["vm-state-size"])
        assert registers(image) == registers(image, "lv-snap") == (XMM1_GUEST, MXCSR_GUEST)


def test_fuzzed_images_decode_or_are_refused() -> None:
    """hostile_qcow2.draw: well-formed images with 8 random bytes overwritten; each decodes or
    is refused with InputError, quickly (the reader's work is bounded by the vm state)."""
    import random

    rng = random.Random(12)
    outcomes = {"decoded": 0, "refused": 0}
    for _ in range(60):
        _, image = hq.draw(rng, STATE)
        try:
            within(BUDGET, lambda i=image: load(i, max_size=1 << 22))
            outcomes["decoded"] += 1
        except InputError as exc:
            assert "\n" not in str(exc)
            outcomes["refused"] += 1
    assert outcomes["decoded"] and outcomes["refused"]


def test_vm_state_size_fields() -> None:
    """qcow2_read_snapshots: the 64-bit extra-data size wins over the 32-bit field (QEMU
    writes 0 there past 4 GiB); without extra data the 32-bit field is the size."""
    image = hq.build(hq.Spec(STATE))
    entry = hq.snapshot_entry(image)
    (snap,) = qcow2.snapshot_list(hq.set_u(image, entry + 32, "I", 0))[1]
    assert (snap.vm_state_size, snap.vm_state_size_32, snap.extra_data_size) == (len(STATE), 0, 24)
    (snap,) = qcow2.snapshot_list(hq.build(hq.Spec(STATE, version=2, extra_data=False)))[1]
    assert (snap.vm_state_size, snap.extra_data_size, snap.disk_size) == (len(STATE), 0, 1 << 20)


def test_format_option_and_streaming_handle(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    from kvmfpu.blob.qcow2_vmstate import open_vm_state
    from kvmfpu.cli import main

    image = hq.build(hq.Spec(STATE, cluster_bits=12, kinds=hq.KINDS[:4]))
    (cap,) = sources.read(image, "qcow2")
    assert cap.notes[1].startswith("qcow2: checked the header") and "not checked: refcounts" in cap.notes[1]
    with pytest.raises(InputError, match=r"not a qcow2 image \(no QFI\\xfb magic\)"):
        sources.read(STATE, "qcow2")
    # What a streaming parser will get: a buffered binary file over the lazy reader.
    with open_vm_state(image) as (_, snap, vm):
        stream = io.BufferedReader(vm, buffer_size=4096)
        assert snap.name == "snap1" and stream.read(4) == b"QEVM" and stream.read() == STATE[4:]
    plain = tmp_path / "stream.mig"
    plain.write_bytes(STATE)
    assert main(["decode", str(plain), "--list-snapshots"]) == 2
    assert "not a qcow2 image" in capsys.readouterr().err
