"""tests/work_budget.py, the counted bound the hostile-input tests use instead of timing."""

import pytest
from work_budget import WorkExceeded, counted, within


def test_counts_calls_and_returns_the_result() -> None:
    result, n = counted(lambda: sum(abs(i) for i in range(100)), 10_000)
    assert result == 4950 and 100 <= n < 1_000   # abs() 100 times, plus the generator's


def test_a_loop_past_its_budget_is_stopped_there() -> None:
    seen = []

    def forever() -> None:
        while True:
            seen.append(abs(len(seen)))

    with pytest.raises(AssertionError, match="unbounded work: more than 1,000 calls"):
        within(1_000, forever)
    assert len(seen) <= 1_000           # stopped at the budget, not after


def test_except_exception_in_the_code_cannot_swallow_it() -> None:
    def guarded() -> None:
        try:
            while True:
                abs(1)
        except Exception:
            pass

    with pytest.raises(WorkExceeded):
        counted(guarded, 100)
