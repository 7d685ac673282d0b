"""Seed 004: INIT and RESET xstate handling (kvm_xstate_reset) and the 6.18-rc crash."""

import pytest

from kvmfpu.scenarios import init_xstate

USER = ["fcw", "st0", "xmm2", "ymm1", "k1", "zmm20", "pkru"]
CET = ["ia32_u_cet", "ia32_pl3_ssp", "ia32_pl0_ssp"]


@pytest.mark.parametrize("host", ["sapphirerapids", "zen4"])
def test_618_rc_crashes_on_a_cet_host_without_mpx(host: str) -> None:
    r = init_xstate.run("6.18-rc5", host=host)
    ev = r.event("INIT")
    assert ev.outcome == "host-oops" and ev.vector == 14
    assert "kvm_xstate_reset" in ev.detail and ev.function == "fpu_swap_kvm_fpstate"
    assert r.bug


def test_618_rc_survives_on_an_mpx_host() -> None:
    # KVM_GET_MP_STATE loads the FPU when KVM supports MPX, so the put is balanced.
    r = init_xstate.run("6.18-rc5", host="skylake-sp")
    assert r.event("INIT").ok and not r.bug


@pytest.mark.parametrize("host", ["sapphirerapids", "zen4"])
@pytest.mark.parametrize("version", ["6.18", "7.3"])
def test_init_zeroes_cet_and_keeps_user_state(host: str, version: str) -> None:
    r = init_xstate.run(version, host=host)
    before, after = r.event("KVM_GET_XSAVE before").values, r.event("KVM_GET_XSAVE after").values
    for name in CET:
        assert before[name] != 0 and after[name] == 0, name
    for name in USER:
        assert after[name] == before[name] == init_xstate.USER_REGS[name][1], name
    assert after["xcr0"] == before["xcr0"] and after["ia32_xss"] == before["ia32_xss"] != 0
    assert not r.bug


@pytest.mark.parametrize("version", ["5.15", "6.1", "6.12", "6.18"])
def test_init_zeroes_mpx_on_an_mpx_host(version: str) -> None:
    r = init_xstate.run(version, host="skylake-sp")
    before, after = r.event("KVM_GET_XSAVE before").values, r.event("KVM_GET_XSAVE after").values
    assert before["bnd0"] and after["bnd0"] == 0 and after["bndcfgu"] == 0
    assert after["xstate_bv"] == before["xstate_bv"]     # the BV bit stays, contents zeroed
    assert after["ymm1"] == before["ymm1"] and after["zmm20"] == before["zmm20"]


def test_before_618_cet_is_not_virtualised() -> None:
    r = init_xstate.run("6.12", host="sapphirerapids")
    assert "ia32_u_cet" not in r.event("KVM_GET_XSAVE before").values
    assert not r.has("KVM_SET_MSRS IA32_XSS")


@pytest.mark.parametrize("version", ["5.15", "6.6", "6.18-rc5", "6.18"])
def test_reset_state_is_init(version: str) -> None:
    v = init_xstate.run(version).event("KVM_GET_XSAVE of a new vCPU").values
    assert v == {"xstate_bv": 0, "fcw": 0x37F, "mxcsr": 0x1F80}
