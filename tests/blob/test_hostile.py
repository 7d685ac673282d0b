"""Hostile captures (issue 16, "Hostile inputs"): each once crashed the reader, ran for
minutes or filled memory. Each must now be refused with InputError (the CLI's one line and
exit 2; tests/cli/test_hostile.py runs them through the command line and measures memory),
quickly, or decode to what it holds.

Expected outcomes rest on the formats' sources: QEMU's migration/vmstate-types.c (the bytes
each integer type reads), migration/ram.c (the page flags), Linux fs/binfmt_elf.c
elf_core_dump (one PT_NOTE segment), Intel SDM Vol. 1 13.3 (XCR0 bit 63 reserved).
"""

from __future__ import annotations

import gzip
import lzma
import random
import struct
from pathlib import Path

import pytest
from work_budget import within

from kvmfpu.arch import xfeatures as xf
from kvmfpu.blob import qemu, sample_data, sources
from kvmfpu.blob.errors import InputError
from kvmfpu.blob.load import load
from kvmfpu.testing import hostile

#: Calls any one of these may make (the bad cases ran for minutes: tens of millions; the
#: most a hostile draw makes today is about 0.7 million, a vmdesc JSON).
BUDGET = 5_000_000
#: ... plus this many per byte of what is decoded: work may grow with the input's size
#: (65,534 ELF program headers cost about 2 calls a byte), not faster.
PER_BYTE = 4
XSTATE = sample_data.path(sample_data.KVM_ZEN5).read_bytes()


def refused(data: bytes, match: str, *, size: int | None = None, **kw: object) -> str:
    """``data`` refused in one line within the work budget (``size``: the bytes it expands
    to, when compressed)."""
    budget = BUDGET + PER_BYTE * (size or len(data))
    with pytest.raises(InputError, match=match) as info:
        within(budget, lambda: load(data, "devhost-zen5", **kw))  # type: ignore[arg-type]
    message = str(info.value)
    assert "\n" not in message and len(message) < 600
    return message


# --- compression and --max-size ------------------------------------------------------


def test_gzip_nested_1000_deep_is_refused_without_recursion() -> None:
    data = XSTATE
    for _ in range(1000):
        data = gzip.compress(data, compresslevel=1)
    refused(data, r"compressed more than 3 times over \(gzip, gzip, gzip, gzip")


@pytest.mark.parametrize("depth", [1, 2, 3])
def test_up_to_three_layers_still_decode(depth: int) -> None:
    """gzip of an xz file is a real mistake: it decodes, and the note says what it was."""
    codecs = ["xz", "gzip", "bzip2"][:depth]
    (item,) = load(hostile.compressed(XSTATE, codecs), "devhost-zen5")
    assert item.capture.data == XSTATE
    outer_first = codecs[::-1]
    assert item.capture.notes[0] == f"{outer_first[0]}-compressed input" + (
        f" ({' of '.join(outer_first)} of the capture)" if depth > 1 else ""
    )


@pytest.mark.parametrize("limit", [2**62, 10**20, 0, -1, True, 1.5])
def test_absurd_max_size_is_an_input_error(limit: object, tmp_path: Path) -> None:
    """2**62 once reached f.read(limit + 1), which allocates the whole limit (MemoryError);
    10**20 overflowed it (OverflowError)."""
    f = tmp_path / "x.bin"
    f.write_bytes(XSTATE)
    for source in (XSTATE, f):
        with pytest.raises(InputError, match=r"--max-size must be 1 to 1099511627776 bytes"):
            sources.read(source, None, limit)  # type: ignore[arg-type]


def test_the_largest_max_size_reads_without_allocating_it(tmp_path: Path) -> None:
    f = tmp_path / "x.bin"
    f.write_bytes(gzip.compress(XSTATE))
    (cap,) = sources.read(f, None, sources.MAX_SIZE_LIMIT)
    assert cap.data == XSTATE


def test_a_gzip_bomb_stops_at_max_size() -> None:
    bomb = gzip.compress(bytes(8 << 20))
    refused(bomb, r"gzip-compressed input expands past the 1048576-byte limit", max_size=1 << 20)


def test_fifo_is_not_read(tmp_path: Path) -> None:
    import os

    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(InputError, match="not a regular file"):
        sources.read(fifo)


# --- ELF cores: note segments ----------------------------------------------------------


def test_many_pt_note_headers_on_one_note_are_refused() -> None:
    """65,534 headers on one 4 KB note: one PT_NOTE is what elf_core_dump writes; the old
    reader decoded 65,534 copies (1.25 GB RSS from 3.6 MB)."""
    core = hostile.shared_note_core(XSTATE, 65_534)
    assert 3 << 20 < len(core) < 4 << 20
    assert "overlap" in refused(core, r"PT_NOTE segments at bytes \d+ and \d+ overlap")


def test_the_gzip_core_that_took_13_gb() -> None:
    raw = hostile.shared_note_core(XSTATE, 65_534)
    core = gzip.compress(raw)
    assert len(core) < 300_000
    refused(core, "overlap", size=len(raw))


def test_overlapping_segments_are_refused() -> None:
    n = hostile.note(b"LINUX", 0x202, XSTATE)
    refused(hostile.elf_core(n, [(0, len(n)), (100, len(n) - 100)]), "overlap")


def test_a_note_running_past_its_segment_is_refused() -> None:
    """13-byte segments whose note declares a descriptor the size of the file: each would
    read the whole file again."""
    n = hostile.note(b"LINUX", 0x202, XSTATE)
    core = hostile.elf_core(n + bytes(13 * 300), [(0, 13)] + [(len(n) + 13 * i, 13) for i in range(299)])
    refused(core, r"the note at byte \d+ runs past the end of its PT_NOTE segment")


@pytest.mark.parametrize("extra", [1, 4096, 1 << 40])
def test_a_segment_past_the_file_is_refused(extra: int) -> None:
    n = hostile.note(b"LINUX", 0x202, XSTATE)
    refused(hostile.elf_core(n, [(0, len(n) + extra)]), "reaches past the end of the file")


def test_distinct_notes_in_distinct_segments_still_decode() -> None:
    """Two threads' notes in two PT_NOTE segments side by side: nothing is shared."""
    a = hostile.note(b"LINUX", 0x202, XSTATE)
    items = load(hostile.elf_core(a + a, [(0, len(a)), (len(a), len(a))]), "devhost-zen5")
    assert [it.capture.data for it in items] == [XSTATE, XSTATE]


def test_decoded_notes_count_against_max_size() -> None:
    """Distinct notes each once, so they never add up past the file; the count is kept
    anyway (defence in depth), checked here below the file's own size."""
    notes = b"".join(hostile.note(b"LINUX", 0x202, XSTATE) for _ in range(4))
    core = hostile.elf_core(notes, [(0, len(notes))])
    assert len(load(core, "devhost-zen5", max_size=len(core))) == 4
    with pytest.raises(
        InputError,
        match=r"NT_X86_XSTATE notes add up to more than the "
        r"16000-byte limit",
    ):
        sources._core(core, max_size=16_000)


# --- QEMU streams: the JSON description is input too ------------------------------------


def stream(fields: list[dict[str, object]], body: bytes, **kw: object) -> bytes:
    return hostile.qemu_stream(fields, body, **kw)


def test_a_plain_stream_of_the_builder_decodes() -> None:
    """The builder's stream is one QEMU's reader takes: the hostile variants below differ
    from it in one field."""
    caps = qemu.captures(stream([{"name": "xcr0", "type": "uint64", "size": 8}], (7).to_bytes(8, "big")))
    assert caps[0].extra["xcr0"] == 7


@pytest.mark.parametrize("n", [10**8, 10**9, 10**12])
def test_array_len_on_zero_size_fields(n: int) -> None:
    data = stream([{"name": "a", "type": "buffer", "size": 0, "array_len": n}], b"")
    assert len(data) < 600
    refused(data, rf"field 'a' has array_len {n}: not a count this \d+-byte stream holds")


def test_nested_arrays_of_empty_fields_run_out_of_budget() -> None:
    """Each array_len within the stream's length, their product not: the work budget (one
    field value per stream byte, plus 65,536) stops it."""
    inner = {"vmsd_name": "s", "fields": [{"name": "b", "type": "buffer", "size": 0, "array_len": 500}]}
    data = stream([{"name": "a", "type": "struct", "size": 0, "array_len": 500, "struct": inner}], bytes(300))
    refused(data, r"asks for more than \d+ field values from a \d+-byte stream")


@pytest.mark.parametrize("size", [float("inf"), float("nan"), 1e300, 10**30, -1, "8", 8.0, None])
def test_absurd_field_sizes(size: object) -> None:
    refused(
        stream([{"name": "xcr0", "type": "buffer", "size": size}], bytes(8)),
        r"field 'xcr0' has size .*: not a count",
    )


@pytest.mark.parametrize("page_size", [float("inf"), 0, 3, 1 << 40, -4096, "4096", 4096.5, 512, None, True])
def test_absurd_page_sizes(page_size: object) -> None:
    refused(
        stream([{"name": "xcr0", "type": "uint64", "size": 8}], bytes(8), page_size=page_size),
        r"page_size .* is not a power of two from 1024 to 65536",
    )


@pytest.mark.parametrize("width", [9, 16, 100, 1 << 20])
def test_zmm_word_wider_than_its_register(width: int) -> None:
    """QEMU's get_uint64 reads 8 bytes whatever the description's size says."""
    fields = [
        {
            "name": "xmm_regs",
            "type": "struct",
            "size": 16,
            "array_len": 1,
            "struct": {
                "vmsd_name": "xmm_reg",
                "fields": [
                    {"name": "_q_ZMMReg[0]", "type": "uint64", "size": width},
                    {"name": "_q_ZMMReg[1]", "type": "uint64", "size": 8},
                ],
            },
        }
    ]
    refused(stream(fields, bytes(width + 8)), rf"of type uint64 has size {width}; QEMU reads 8")


def test_a_register_word_held_as_bytes_is_refused() -> None:
    """int(b"12") is 12: a buffer field must not pass for a register word."""
    fields = [
        {
            "name": "xmm_regs",
            "type": "struct",
            "size": 16,
            "array_len": 1,
            "struct": {
                "vmsd_name": "xmm_reg",
                "fields": [
                    {"name": "_q_ZMMReg[0]", "type": "buffer", "size": 2},
                    {"name": "_q_ZMMReg[1]", "type": "uint64", "size": 8},
                ],
            },
        }
    ]
    refused(stream(fields, b"12" + bytes(8)), "a register field holds bytes, not an integer")


def test_int64_minus_one_in_xcr0_and_xstate_bv_ends() -> None:
    """-1 in int64 fields once made xfeatures.bits() loop forever; as unsigned 64-bit words
    they claim every component, which no packaged host has."""
    fields = [{"name": "xcr0", "type": "int64", "size": 8}, {"name": "xstate_bv", "type": "int64", "size": 8}]
    message = refused(stream(fields, b"\xff" * 16), r"no packaged host holds the vCPU's")
    assert "0x7fffffffffffffff" in message  # bit 63 is not a component


def test_negative_words_are_read_as_unsigned() -> None:
    fields = [
        {"name": "xcr0", "type": "int64", "size": 8},
        {
            "name": "hi16_zmm_regs",
            "type": "struct",
            "size": 64,
            "array_len": 1,
            "struct": {
                "vmsd_name": "hi16_zmm_reg",
                "fields": [{"name": f"_q_ZMMReg[{j}]", "type": "int64", "size": 8} for j in range(8)],
            },
        },
    ]
    body = (0xE7).to_bytes(8, "big") + b"\xff" * 64
    (cap,) = qemu.captures(stream(fields, body))
    env = qemu.env_of(qemu.parse(stream(fields, body))[0])
    assert env.zmm[16] == (1 << 512) - 1
    assert cap.extra["xcr0"] == 0xE7


def test_the_real_stream_fits_the_work_budget() -> None:
    """The packaged QEMU 8.2 TCG stream (625 KB) decodes far inside its budget."""
    data = lzma.decompress(sample_data.path(sample_data.QEMU_TCG).read_bytes())
    from kvmfpu.blob import qemu_stream
    from kvmfpu.blob.stream import of_bytes
    parsed = qemu_stream.parse(of_bytes(data), sources.MAX_SIZE)
    assert parsed.budget == len(data) + qemu_stream.WORK_SLACK
    assert parsed.work < parsed.budget // 10
    assert len(qemu.captures(data)) == 1


def test_deep_struct_nesting_in_the_description() -> None:
    depth = 5000
    fields = (
        '[{"name": "x", "type": "struct", "size": 0, "struct": {"vmsd_name": "s", '
        '"fields": ' * depth + "[]" + "}}]" * depth
    )
    refused(
        hostile.qemu_stream([], b"", fields_json=fields),
        r"QEMU stream: the VM description is nested too deeply",
    )


# --- xfeatures.bits ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "mask,expected",
    [(-1, list(range(64))), (-2, list(range(1, 64))), (-(1 << 63), [63]), (0x2E7, [0, 1, 2, 5, 6, 7, 9])],
)
def test_bits_of_negative_masks_are_their_64_bit_twos_complement(mask: int, expected: list[int]) -> None:
    assert within(1_000, lambda: xf.bits(mask)) == expected


def test_describe_mask_of_minus_one_ends() -> None:
    assert xf.describe_mask(-1).endswith("|bit62|compacted)")


# --- what the fuzzers draw --------------------------------------------------------------


def test_every_hostile_class_is_refused_or_decodes_quickly() -> None:
    """2,000 draws from kvmfpu.testing.hostile, each class at least 300 times."""
    rng = random.Random(16)
    seen: dict[str, int] = dict.fromkeys(hostile.CLASSES, 0)
    for _ in range(2000):
        kind, data = hostile.draw(rng, XSTATE)
        seen[kind] += 1
        host = rng.choice([None, "devhost-zen5", "zen4"])
        try:
            within(BUDGET, lambda d=data, h=host: load(d, h, max_size=1 << 20))
        except InputError as exc:
            assert "\n" not in str(exc)
    assert min(seen.values()) >= 300, seen


def test_struct_sizes_of_the_builders() -> None:
    """The ELF builder's headers are the sizes elf.h gives (Elf64_Ehdr 64, Elf64_Phdr 56)."""
    core = hostile.elf_core(b"", [(0, 0)])
    assert len(core) == 64 + 56
    assert struct.unpack_from("<H", core, 56)[0] == 1  # e_phnum
