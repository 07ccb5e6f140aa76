"""Leakage-free splits: by time and by customer."""

from __future__ import annotations

from typing import Any

import pytest

from policy.splits import Split, customer_unit, split_by_customer, split_by_time, time_order
from schemas.trace import Trace, TraceSource


def _trace(case: str, **attributes: Any) -> Trace:
    return Trace(trace_id=case, source=TraceSource.SANDBOX, case_id=case, process_id="p", attributes=attributes)


def _ids(traces: list[Trace]) -> list[str]:
    return [t.trace_id for t in traces]


def test_split_by_time_orders_by_case_start_oldest_first() -> None:
    traces = [
        _trace("c", case_start="2024-01-03T00:00:00+00:00"),
        _trace("a", case_start="2024-01-01T00:00:00"),  # no zone: UTC
        _trace("e", case_start="2024-01-05T10:00:00+02:00"),  # 08:00 UTC, before d
        _trace("b", case_start="2024-01-02T00:00:00+00:00"),
        _trace("d", case_start="2024-01-05T09:00:00+00:00"),
    ]
    split = split_by_time(traces, test_fraction=0.4, val_fraction=0.2)
    assert isinstance(split, Split)
    assert (_ids(split.train), _ids(split.val), _ids(split.test)) == (["a", "b"], ["c"], ["e", "d"])


def test_split_by_time_uses_case_index_then_file_order() -> None:
    indexed = [_trace(str(i), case_index=i) for i in (3, 0, 2, 1)]
    split = split_by_time(indexed, test_fraction=0.25)
    assert (_ids(split.train), split.val, _ids(split.test)) == (["0", "1", "2"], [], ["3"])
    # case_start wins over case_index; a mix of traces with and without it falls back to the next key
    assert _ids(time_order([_trace("x", case_index=1, case_start="2020-01-01"), _trace("y", case_index=0)])) == [
        "y",
        "x",
    ]
    plain = [_trace(name) for name in "qpr"]
    assert _ids(split_by_time(plain, test_fraction=1 / 3).test) == ["r"]


def test_split_by_time_sizes_round_and_fractions_are_checked() -> None:
    traces = [_trace(str(i), case_index=i) for i in range(10)]
    split = split_by_time(traces, test_fraction=0.15, val_fraction=0.14)
    assert (len(split.train), len(split.val), len(split.test)) == (7, 1, 2)  # round(1.5) = 2, round(1.4) = 1
    assert split_by_time([], test_fraction=0.2) == Split([], [], [])
    for test_fraction, val_fraction in ((1.0, 0.0), (-0.1, 0.0), (0.6, 0.4), (0.2, 1.0)):
        with pytest.raises(ValueError, match="fraction"):
            split_by_time(traces, test_fraction, val_fraction)


def test_split_by_customer_keeps_each_customer_on_one_side() -> None:
    traces = [_trace(f"t{i}", customer_id=f"CU-{i % 300}") for i in range(1200)]
    split = split_by_customer(traces, test_fraction=0.2, seed=1, val_fraction=0.1)
    sides = [{t.attributes["customer_id"] for t in side} for side in (split.train, split.val, split.test)]
    assert not (sides[0] & sides[1] or sides[0] & sides[2] or sides[1] & sides[2])
    assert sum(len(side) for side in (split.train, split.val, split.test)) == len(traces)
    assert 0.13 < len(sides[2]) / 300 < 0.27  # the fraction holds for customers in expectation
    assert 0.05 < len(sides[1]) / 300 < 0.15
    # deterministic, and a customer's side does not depend on the other traces
    again = split_by_customer(list(reversed(traces)), test_fraction=0.2, seed=1, val_fraction=0.1)
    assert {t.trace_id for t in again.test} == {t.trace_id for t in split.test}
    alone = split_by_customer(traces[:7], test_fraction=0.2, seed=1, val_fraction=0.1)
    first_seven = set(_ids(traces[:7]))
    assert set(_ids(alone.test)) == {t.trace_id for t in split.test} & first_seven
    # another seed, another split
    other = split_by_customer(traces, test_fraction=0.2, seed=2)
    assert {t.trace_id for t in other.test} != {t.trace_id for t in split.test}


def test_customer_unit_is_a_stable_hash_not_pythons() -> None:
    # pinned: Python's hash() of a str changes from process to process; this must not
    assert customer_unit("CU1-000000", 0) == pytest.approx(0.0726094143007976, abs=1e-12)
    assert 0.0 <= customer_unit("", 5) < 1.0
    assert customer_unit("CU1-000000", 0) != customer_unit("CU1-000000", 1)


def test_split_by_customer_needs_a_customer_id() -> None:
    with pytest.raises(ValueError, match="no customer_id"):
        split_by_customer([_trace("t1", customer_id="a"), _trace("t2")], test_fraction=0.5, seed=0)
