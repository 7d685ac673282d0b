"""gdb's own NT_X86_XSTATE size is a known producer, not an anomaly; what gdb 13 does not
save on AMD layouts is said. Sources: gdbsupport/x86-xstate.h X86_XSTATE_SIZE and the
i387-tdep.c offset tables of gdb 13 (bminor/binutils-gdb 223f25a3b6ee), and real gcores
made here (gdb 13.1 on AMD EPYC: a 2688-byte note for XCR0 0xe7)."""

from __future__ import annotations

import shutil
import struct
import subprocess
import time
from pathlib import Path

import pytest

from kvmfpu import cpus
from kvmfpu.arch import legacy
from kvmfpu.blob import decode as dec
from kvmfpu.blob import infer, producers, sources
from kvmfpu.blob.errors import AmbiguousLayout
from kvmfpu.cli import main
from kvmfpu.cpus.model import HostModel

SAMPLE = Path(__file__).parent / "data" / "gdb-gcore-zen5-nt_x86_xstate.bin"

# A process that loads known values into k1 and zmm0/5/7/20, saves them with its own
# XSAVE (the truth, read back from its memory), then spins with the registers live.
PROGRAM = r"""
#include <stdint.h>
#include <stdio.h>
unsigned char truth[4096] __attribute__((aligned(64)));
int main(void) {
    static uint32_t pat[16];
    for (int i = 0; i < 16; i++) pat[i] = 0x3f800000u + i;
    printf("ready\n");
    fflush(stdout);
    __asm__ volatile("kmovq %0, %%k1\n\tvmovdqu32 (%1), %%zmm0\n\tvmovdqu32 (%1), %%zmm5\n\t"
                     "vmovdqu32 (%1), %%zmm7\n\tvmovdqu32 (%1), %%zmm20\n\t"
                     "xsave64 (%2)\n1:\tpause\n\tjmp 1b"
                     :: "r"((uint64_t)0x1234), "r"(pat), "r"(truth), "a"(-1), "d"(-1) : "memory");
    return 0;
}
"""


def test_packaged_gdb_core_is_a_known_producer_not_an_anomaly() -> None:
    # The sample: gdb 13.1 gcore of `sleep` on the Zen 5 development machine (data/README.md).
    (cap,) = sources.read(SAMPLE)
    assert len(cap.data) == 2688 == producers.gdb13_note_size(cap.xcr0_hint or 0)
    model = cpus.load("devhost-zen5")
    d = dec.decode(cap.data, model.layout, host=model.name, xcr0=cap.xcr0_hint)
    assert d.anomalies == []
    assert d.notes[0].startswith("2688 bytes is the NT_X86_XSTATE size gdb 13 and earlier write")
    assert "does not save k0-k7, zmm0-5_hi256 (bytes 0x340-0x43f)" in d.notes[1]
    # On an Intel layout the same size is the kernel's own: nothing to say.
    intel = cpus.load("icelake-sp")
    assert dec.decode(cap.data, intel.layout, host=intel.name, xcr0=cap.xcr0_hint).notes == []


def test_decode_cli_shows_the_note_and_strict_passes(capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["decode", str(SAMPLE), "--host", "devhost-zen5", "--strict"])
    out = capsys.readouterr().out
    assert rc == 0 and "ANOMALY" not in out and "note: 2688 bytes is the NT_X86_XSTATE size gdb" in out


def test_the_ambiguity_message_names_gdb() -> None:
    (cap,) = sources.read(SAMPLE)
    with pytest.raises(AmbiguousLayout, match="gdb 13 and earlier write 2688 bytes for XCR0 0xe7"):
        infer.choose(cap)


def test_sizes_follow_x86_xstate_size() -> None:
    # X86_XSTATE_SIZE: PKRU 2696, AVX-512 2688, MPX 1088, AVX 832, SSE 576.
    assert [producers.gdb13_note_size(m) for m in (0x2E7, 0xE7, 0x1F, 0x7, 0x3)] == [
        2696,
        2688,
        1088,
        832,
        576,
    ]
    # Zen 3 (PKRU at 0x980, no AVX-512): gdb 13 copies PKRU from Intel's 0xa80: lost.
    zen3 = cpus.load("zen3").layout
    assert producers.gdb13_unsaved(zen3, 0x207, 2696) == [(0x980, 0x988)]
    assert producers.gdb13_unsaved(cpus.load("skylake-sp").layout, 0x2FF, 2696) == []


def _gcore(tmp_path: Path, argv: list[str], wait_for_ready: bool) -> tuple[Path, Path | None]:
    if not shutil.which("gdb"):
        pytest.skip("no gdb")
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    try:
        if wait_for_ready:
            assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
            time.sleep(0.2)  # past the XSAVE, into the loop
        core, truth = tmp_path / "core", tmp_path / "truth"
        cmds = ["-ex", f"gcore {core}"]
        if wait_for_ready:
            cmds += ["-ex", f"dump binary memory {truth} &truth ((char*)&truth)+4096"]
        out = subprocess.run(
            ["gdb", "-q", "-batch", "-p", str(proc.pid), *cmds], capture_output=True, text=True, timeout=120
        )
    finally:
        proc.kill()
        proc.wait()
    if not core.exists():
        pytest.skip(f"gdb could not write a core here: {out.stderr.strip()[-200:]}")
    return core, (truth if wait_for_ready and truth.exists() else None)


def _this_layout() -> tuple[str, HostModel]:
    from kvmfpu.native.xsave_probe import probe_unavailable

    why = probe_unavailable()  # the native probe needs x86-64 and a compiler
    if why:
        pytest.skip(f"this machine's CPUID is not readable here: {why}")
    from kvmfpu.native.hostcpuid import this_host

    model = this_host()
    return model.name, model


def test_real_gcore_of_sleep(tmp_path: Path) -> None:
    core, _ = _gcore(tmp_path, ["sleep", "60"], wait_for_ready=False)
    name, model = _this_layout()
    for cap in sources.read(core):
        assert cap.xcr0_hint is not None
        d = dec.decode(cap.data, model.layout, host=name, xcr0=cap.xcr0_hint)
        kernel = model.layout.standard_size(cap.xcr0_hint)
        assert not any("is none of the lengths" in a for a in d.anomalies), d.anomalies
        if len(cap.data) != kernel:  # gdb's own size (AMD layouts, gdb <= 13)
            assert len(cap.data) == producers.gdb13_note_size(cap.xcr0_hint)
            assert "gdb 13 and earlier" in d.notes[0]


def test_real_gcore_loses_exactly_the_ranges_said(tmp_path: Path) -> None:
    cc = shutil.which("gcc") or shutil.which("cc")
    if not cc:
        pytest.skip("no C compiler to build the register-holding process")
    name, model = _this_layout()
    if not model.has("avx512f"):
        pytest.skip(f"{name} has no AVX-512: the process sets k1 and zmm registers")
    src, exe = tmp_path / "regs.c", tmp_path / "regs"
    src.write_text(PROGRAM)
    subprocess.run([cc, "-O1", "-mavx512f", "-o", str(exe), str(src)], check=True, timeout=120)
    core, truth_path = _gcore(tmp_path, [str(exe)], wait_for_ready=True)
    if truth_path is None:
        pytest.skip("gdb could not read the process's own XSAVE from its memory")
    truth = truth_path.read_bytes()
    (cap,) = sources.read(core)
    note, xcr0 = cap.data, cap.xcr0_hint or 0
    kernel = model.layout.standard_size(xcr0)
    gdb_sized = len(note) == producers.gdb13_note_size(xcr0) != kernel
    lost = producers.gdb13_unsaved(model.layout, xcr0, len(note)) if gdb_sized else []
    lost_bytes = {i for lo, hi in lost for i in range(lo, hi)}
    for bit in (5, 6, 7):  # opmask, ZMM_Hi256, Hi16_ZMM as this host places them
        c = model.layout.components[bit]
        for i in range(c.offset, c.offset + c.size):
            if i in lost_bytes:
                assert note[i] == 0, f"byte {i:#x} said lost but saved"
            else:
                assert note[i] == truth[i], f"byte {i:#x} differs from the process's XSAVE"
    assert note[legacy.XMM_SPACE : legacy.RESERVED] == truth[legacy.XMM_SPACE : legacy.RESERVED]
    if lost:  # the measurement can fail: the process held data in what gdb dropped
        assert any(truth[i] for i in lost_bytes)
        k1 = model.layout.components[5].offset + 8
        assert struct.unpack_from("<Q", truth, k1)[0] == 0x1234
        d = dec.decode(note, model.layout, host=name, xcr0=xcr0)
        assert d.field("k1").value == 0 and "k0-k7" in d.notes[1]
