"""Cloud Hypervisor snapshot state.json (kvmfpu.blob.cloud_hypervisor).

No Cloud Hypervisor binary runs here and its repository publishes no snapshot, so the files
are written as its serialisation code writes them (kvmfpu.testing.vmm_samples; the code
read is named in the reader's docstring and data/cloud_hypervisor/PROVENANCE.md)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kvmfpu import cpus
from kvmfpu.blob import sources, vmm_formats
from kvmfpu.blob.load import load
from kvmfpu.testing import vmm_samples as vs
from kvmfpu.testing.hostile_vmm import assert_refused

DATA = Path(__file__).parent / "data" / "cloud_hypervisor"


def test_committed_sample_each_vcpu_an_item() -> None:
    """state-v39-zen4.json: two vCPUs, the second with XMM1 0x1235 (vs.model_vcpu salt 1)."""
    items = load(DATA / "state-v39-zen4.json")
    assert [i.capture.origin for i in items] == ["Cloud Hypervisor vCPU 0", "Cloud Hypervisor vCPU 1"]
    assert [i.decoded.field("xmm1").value for i in items] == [0x1234, 0x1235]
    for it in items:
        d = it.decoded
        assert d.field("fcw").value == 0x027F and d.field("k1").value == 0xFF
        assert d.field("zmm3_hi256").value == 7 << (500 - 256) and d.field("pkru").value == 0xC
        # The layout is the saved CPUID's leaf 0xD: zen4's offsets (PKRU at 0x980 on AMD).
        assert it.choice.how == "CPUID leaf 0xD in the Cloud Hypervisor state.json"
        assert it.choice.layout.standard_offset(9) == cpus.load("zen4").layout.standard_offset(9) == 0x980
        assert it.capture.extra["xcr0"] == 0x2E7 and it.capture.extra["xss"] == 0


def test_regenerated_sample_is_byte_identical() -> None:
    s0, s1 = vs.model_vcpu("zen4"), vs.model_vcpu("zen4", salt=1)
    assert vs.ch_state_json([s0, s1]) == (DATA / "state-v39-zen4.json").read_bytes()


@pytest.mark.parametrize("era", ["v38", "v39", "v50"])
def test_every_serialisation_era(era: str) -> None:
    """v29.0-v38.0 kept SnapshotData as a list of bytes and kvm_xcrs field by field; v39.0 a
    JSON string; v50.0 adds XSAVE2 ``extra`` words past 4096 bytes (4b4954ff8)."""
    s = vs.model_vcpu("skylake-sp")
    (item,) = load(vs.ch_state_json([s], era=era))
    assert item.capture.extra["xcr0"] == s.xcr0
    assert item.decoded.field("xmm1").value == 0x1234
    assert item.capture.data[:4096] == s.xsave[:4096]
    if era == "v50":
        assert len(item.capture.data) == 4096 + 128 and item.capture.data[4096:] == bytes(range(64)) * 2
        assert any("XSAVE2" in n for n in item.capture.notes)


def test_common_cpuid_when_the_vcpu_has_none() -> None:
    s = vs.model_vcpu("zen4")
    doc = json.loads(vs.ch_state_json([s]))
    vcpu = doc["snapshots"]["cpu-manager"]["snapshots"]["0"]["snapshot_data"]
    state = json.loads(vcpu["state"])
    state["Kvm"]["cpuid"] = []
    vcpu["state"] = json.dumps(state)
    (item,) = load(json.dumps(doc).encode())
    assert any("VM's common saved CPUID" in n for n in item.capture.notes)
    assert item.choice.layout.standard_offset(9) == 0x980


def test_detected_from_its_first_key() -> None:
    data = (DATA / "state-v39-zen4.json").read_bytes()
    assert sources.detect(data) == "cloud-hypervisor" and "cloud-hypervisor" in sources.FORMATS
    assert vmm_formats.detect(b'{"memory": {}}') is None


def test_config_json_points_at_state_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The snapshot directory's config.json (VmConfig, first field cpus) is not the state."""
    line = assert_refused(
        b'{"cpus": {"boot_vcpus": 2, "max_vcpus": 2}, "memory": {}}', "config.json", tmp_path, capsys
    )
    assert "state.json" in line


def _with_state(kvm_change: dict[str, object] | None = None, state: object = None) -> bytes:
    s = vs.model_vcpu("zen4")
    st = vs.ch_vcpu_state(s)
    if kvm_change:
        st["Kvm"].update(kvm_change)
    body = {
        "snapshots": {
            "cpu-manager": {
                "snapshots": {
                    "0": {
                        "snapshots": {},
                        "snapshot_data": {"state": json.dumps(st if state is None else state)},
                    }
                },
                "snapshot_data": None,
            }
        },
        "snapshot_data": None,
    }
    return json.dumps(body).encode()


@pytest.mark.parametrize(
    ("name", "data", "match"),
    [
        (
            "truncated",
            (Path(__file__).parent / "data" / "cloud_hypervisor" / "state-v39-zen4.json").read_bytes()[:3000],
            "not JSON",
        ),
        ("region of 1023 words", _with_state({"xsave": {"region": [0] * 1023}}), "1024 u32 words"),
        ("region word past u32", _with_state({"xsave": {"region": [1 << 40] * 1024}}), "not a u32"),
        ("xcrs count past its bytes", _with_state({"xcrs": [255] * 8}), "XCRs in 8 bytes"),
        ("MSHV vCPU", _with_state(state={"Mshv": {}}), "not Kvm"),
        (
            "deep nesting",
            json.dumps(
                {
                    "snapshots": {
                        "cpu-manager": {
                            "snapshots": {"0": {"snapshots": {}, "snapshot_data": {"state": "[" * 100_000}}}
                        }
                    },
                    "snapshot_data": None,
                }
            ).encode(),
            "deeply|not JSON",
        ),
        ("no cpu-manager", b'{"snapshots": {}, "snapshot_data": null}', "no 'cpu-manager'"),
        (
            "state not JSON",
            json.dumps(
                {
                    "snapshots": {
                        "cpu-manager": {
                            "snapshots": {"0": {"snapshots": {}, "snapshot_data": {"state": "{"}}}
                        }
                    },
                    "snapshot_data": None,
                }
            ).encode(),
            "not JSON",
        ),
        ("cpuid of the wrong shape", _with_state({"cpuid": [{"function": 13, "eax": 1 << 33}]}), "not a u32"),
    ],
    ids=lambda v: v if isinstance(v, str) and len(v) < 40 else "",
)
def test_hostile_files(
    name: str, data: bytes, match: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fmt = "cloud-hypervisor" if name == "truncated" else None  # a cut file no longer parses as JSON
    assert_refused(data, match, tmp_path, capsys, fmt)


def test_amx_guest_before_v50_is_cut_short() -> None:
    """cloud-hypervisor issue #5800: an AMX guest's KVM_GET_XSAVE is 4096 bytes, so before
    v50.0 (XSAVE2 ``extra``) XTILEDATA (at 0xac0 + 8192 on Sapphire Rapids) did not travel."""
    lay = cpus.load("sapphirerapids").layout
    s = vs.model_vcpu("sapphirerapids")
    s.xcr0 |= 0x60000
    s.cpuid = (
        [e for e in s.cpuid if e[0] != 0xD]
        + [(0xD, 0, 0, 0x602E7, 11008, 11008, 0)]
        + [
            (0xD, b, 0, c.size, c.offset, 2 * c.align64 | 4 * c.xfd, 0)
            for b, c in lay.components.items()
            if not c.supervisor
        ]
    )
    (item,) = load(vs.ch_state_json([s]))
    (note,) = [n for n in item.capture.notes if "ends before" in n]
    assert "ends before xtiledata," in note and "#5800" in note  # XTILECFG (64 B at 0xac0) fits
    (whole,) = load(vs.ch_state_json([s], era="v50"))  # 128 extra bytes: still short
    assert any("ends before xtiledata" in n for n in whole.capture.notes)
