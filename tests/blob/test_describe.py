"""Human text of decoded fields: 80-bit floats, flags by name, PKRU, TILECFG."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvmfpu.blob import describe


@pytest.mark.parametrize("raw, text, kind", [
    ((0x4000 << 64) | 1 << 63, "2", "valid"),
    ((0xBFFF << 64) | 3 << 62, "-1.5", "valid"),
    ((0x7FFF << 64) | 1 << 63, "inf", "special"),
    ((0x7FFF << 64) | 3 << 62, "qNaN", "special"),
    (0, "0", "zero"),
    ((0x4000 << 64) | 1, "unnormal", "special"),
])
def test_float80(raw: int, text: str, kind: str) -> None:
    assert describe.float80(raw) == (text, kind)


def test_flag_texts() -> None:
    assert describe.fcw_text(0x037F) == "IM DM ZM OM UM PM PC=extended RC=nearest"
    assert describe.fsw_text(0x7881) == "IE ES C3 TOP=7"
    assert describe.mxcsr_text(0x9FC0) == "DAZ IM DM ZM OM UM PM FZ RC=nearest"
    assert describe.pkru_text(0x5555_5554) .startswith("key1:AD key2:AD")
    assert describe.pkru_text(0) == "all keys read/write"
    from kvmfpu.testing.areas import component_data
    cfg = int.from_bytes(component_data(17, 64), "little")
    assert describe.tilecfg_text(cfg).startswith("palette 1, start_row 0: tmm0=16x64B")


@settings(max_examples=500, deadline=None)
@given(st.integers(1, (1 << 64) - 1),
       st.one_of(st.integers(-200, 200), st.integers(-16445, 16320)))
def test_x87_values_are_correctly_rounded(significand: int, exp2: int) -> None:
    """The shown value is the exact value rounded once to 21 digits (half even)."""
    import decimal
    wide = decimal.Context(prec=999_999, Emax=999_999, Emin=-999_999)
    exact = (decimal.Decimal(significand << exp2) if exp2 >= 0 else
             decimal.Decimal(significand * 5 ** -exp2).scaleb(exp2, wide))
    d21 = decimal.Context(prec=21, Emax=999_999, Emin=-999_999)
    assert describe._exact(significand, exp2) == f"{d21.plus(exact).normalize(d21):g}"
