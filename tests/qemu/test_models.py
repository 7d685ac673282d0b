"""QEMU CPU models: versions apply cumulatively, aliases, options, components."""

from __future__ import annotations

import pytest

from kvmfpu.arch import xfeatures as xf
from kvmfpu.qemu import models
from kvmfpu.qemu.models import UnknownModel, resolve


@pytest.mark.parametrize(("spec", "xcr0", "xss"), [
    ("Nehalem", 0, 0),
    ("Westmere-IBRS", 0, 0),
    ("SandyBridge", 0x7, 0),
    ("Skylake-Server", 0x2E7, 0),
    ("SapphireRapids", 0x602E7, 0),
    ("SapphireRapids-v5", 0x602E7, xf.CET),          # cet-ss/cet-ibt from v5, XSS with xsaves
    ("GraniteRapids-v4", 0x602E7, xf.CET),
    ("SierraForest", 0x207, 0),
    ("ClearwaterForest-v2", 0x207, xf.CET),
    ("DiamondRapids", 0xE02E7, xf.CET),              # APX (bit 19), AMX, AVX-512, CET
    ("Denverton", 0x1B, 0),                          # MPX in v1
    ("Denverton-v2", 0x3, 0),                        # mpx=off
    ("EPYC", 0x7, 0),
    ("EPYC-Milan", 0x207, 0),
    ("EPYC-Genoa", 0x2E7, 0),
    ("Opteron_G5", 0x7, 0),
    ("YongFeng", 0x207, 0),
])
def test_components(spec: str, xcr0: int, xss: int) -> None:
    g = resolve(spec)
    assert (g.xcr0, g.xss) == (xcr0, xss)


def test_versions_are_cumulative() -> None:
    assert not resolve("EPYC-v2").has("xsaves")
    assert resolve("EPYC-v3").has("xsaves") and resolve("EPYC-v5").has("xsaves")
    assert resolve("EPYC-Rome-v3").has("xsaves")
    assert not resolve("EPYC-Rome-v4").has("xsaves")          # erratum 1386
    assert not resolve("EPYC-Rome-v5").has("xsaves")          # stays off
    assert not resolve("Skylake-Server-v4").has("xsaves") and resolve("Skylake-Server-v5").has(
        "xsaves")
    assert resolve("Snowridge-v1").has("mpx") and not resolve("Snowridge-v4").has("mpx")
    assert resolve("GraniteRapids-v2").has("avx10") and resolve("GraniteRapids-v3").has("avx10")


def test_unversioned_is_v1_and_aliases_name_a_version() -> None:
    assert resolve("Cascadelake-Server").label == "Cascadelake-Server-v1"
    assert resolve("Haswell-noTSX-IBRS").label == "Haswell-v4"
    assert resolve("epyc-rome-v4").label == "EPYC-Rome-v4"     # case-insensitive


def test_options_change_features() -> None:
    g = resolve("EPYC-Milan,-pku")
    assert g.xcr0 == 0x7 and g.label == "EPYC-Milan-v1,-pku"
    assert resolve("Skylake-Client,+xsaves,mpx=on").xcr0 == 0x1F
    assert resolve("SapphireRapids-v5,-xsaves").xss == 0     # supervisor state needs XSAVES
    assert resolve("SapphireRapids,shstk=on").xss == xf.CET
    assert resolve("Denverton,+apxf").xcr0 & (xf.MPX | xf.APX) == 0   # MPX and APX exclude


def test_host_passthrough() -> None:
    g = resolve("host")
    assert g.passthrough and g.label == "host"


@pytest.mark.parametrize("bad", ["", "Skylake-Servr", "EPYC-v9", "EPYC,+nosuch", "EPYC,+pku=on",
                                 "EPYC,p k u"])
def test_bad_specs(bad: str) -> None:
    with pytest.raises(UnknownModel):
        resolve(bad)


def test_catalogue_covers_qemu_table() -> None:
    names = models.names()
    assert len(names) == 46
    for n in ("Nehalem", "DiamondRapids", "EPYC-Turin", "YongFeng", "qemu64", "Penryn"):
        assert n in names
    assert models.sources()[0]["commit"] == "5cb89cad7f30be3175dd5abbb79ae5e634476cfa"
    assert resolve("EPYC-Turin-v2").unverified
