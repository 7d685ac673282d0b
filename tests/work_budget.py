"""Work bounds for tests, counted rather than timed: the function and C calls a piece of
code makes (sys.setprofile), which a busy machine does not change. A test that used to run
for minutes on a hostile input makes millions of calls; the budgets here are a few times
what the code makes today, so they fail on a new quadratic loop and not on a slow day."""

from __future__ import annotations

import sys
from collections.abc import Callable
from types import FrameType
from typing import Any, TypeVar

T = TypeVar("T")


class WorkExceeded(BaseException):
    """Raised inside the code under test when it passes its budget (a BaseException, so no
    ``except Exception`` in the code under test can swallow it)."""


def counted(fn: Callable[[], T], budget: int) -> tuple[T, int]:
    """``fn()`` and the calls it made; WorkExceeded as soon as they pass ``budget``."""
    n = 0

    def count(frame: FrameType, event: str, arg: Any) -> None:
        nonlocal n
        if event == "call" or event == "c_call":
            n += 1
            if n > budget:
                sys.setprofile(None)
                raise WorkExceeded(f"more than {budget:,} calls")

    old = sys.getprofile()
    sys.setprofile(count)
    try:
        result = fn()
    finally:
        sys.setprofile(old)
    return result, n


def within(budget: int, fn: Callable[[], T]) -> T:
    """``fn()``, failing the test when it makes more than ``budget`` calls."""
    try:
        return counted(fn, budget)[0]
    except WorkExceeded as exc:
        raise AssertionError(f"unbounded work: {exc}") from None
