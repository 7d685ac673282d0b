from kvmfpu.arch import xfeatures as xf


def test_table_covers_components_0_to_19() -> None:
    assert [i.bit for i in xf.XFEATURES] == list(range(20))
    assert xf.USER_MASK & xf.SUPERVISOR_MASK == 0
    assert xf.USER_MASK | xf.SUPERVISOR_MASK == (1 << 20) - 1


def test_classes() -> None:
    assert xf.SUPERVISOR_MASK == xf.PT | xf.PASID | xf.CET | (1 << 13) | (1 << 14) | xf.LBR | (1 << 16)
    assert xf.DYNAMIC_MASK == xf.XTILEDATA
    assert xf.info(18).linux_name == "XFEATURE_XTILE_DATA"
    assert xf.BY_NAME["pkru"].mask == 0x200


def test_describe_mask() -> None:
    assert xf.describe_mask(0x2E7) == "0x2e7 (x87|sse|ymm|opmask|zmm_hi256|hi16_zmm|pkru)"
    assert xf.describe_mask(1 << 63 | 3) == "0x8000000000000003 (x87|sse|compacted)"
    assert xf.describe_mask(1 << 40) == "0x10000000000 (bit40)"
    assert xf.bits(0b1010) == [1, 3]
