"""The citation table for error reasons."""

import re

from kvmfpu.kvm.origins import ORIGINS, cite


def test_ids_are_short_hashes_or_declared_unknown() -> None:
    for key, o in ORIGINS.items():
        assert o.commit is None or re.fullmatch(r"[0-9a-f]{12}", o.commit), key
        assert re.fullmatch(r"\d+\.\d+(\.\d+)?", o.release), key
        assert o.title


def test_citation_text() -> None:
    assert cite("mp_state") == "22c6a0ef6b26, 6.0"
    assert "not confirmed" in cite("msr_io") and "2.6.20" in cite("msr_io")
