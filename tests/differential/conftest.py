"""The two backends for the differential suite: this machine's /dev/kvm and the model of it
(kvmfpu.model_of_running_host). Skips the suite where /dev/kvm is not usable."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest


@pytest.fixture(scope="session")
def backends() -> Iterator[tuple[Any, Any]]:
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        pytest.skip("no usable /dev/kvm")
    from kvmfpu.probe import ProbeUnavailable, model_of_running_host
    from kvmfpu.real import open_kvm

    try:
        model = model_of_running_host()
    except ProbeUnavailable as exc:
        pytest.skip(str(exc))
    real = open_kvm()
    try:
        yield real, model
    finally:
        real.close()
