"""Leakage-free splits of traces: by time (the future is never trained on) or by customer (no customer on two sides).

A random split of traces or, worse, of steps would put the steps of one case, or the cases of one customer, on both
sides, and the test score would measure memory instead of generalisation.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from schemas.trace import Trace

_HASH_SCALE = float(2**64)


@dataclass(frozen=True)
class Split:
    """Three disjoint lists of traces (``val`` may be empty)."""

    train: list[Trace]
    val: list[Trace]
    test: list[Trace]


def _check_fractions(test_fraction: float, val_fraction: float) -> None:
    if not 0.0 <= test_fraction < 1.0 or not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"fractions must lie in [0, 1): test {test_fraction}, val {val_fraction}")
    if test_fraction + val_fraction >= 1.0:
        raise ValueError(f"test + val fractions must be below 1, got {test_fraction} + {val_fraction}")


def _start_time(trace: Trace) -> datetime:
    moment = datetime.fromisoformat(str(trace.attributes["case_start"]))
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def time_order(traces: Sequence[Trace]) -> list[Trace]:
    """Traces oldest first: by the ``case_start`` attribute (event-log imports) when every trace has one, else by
    ``case_index`` (sandbox generation order) when every trace has one, else in the given order. Stable, so
    equal times keep their input order."""
    if traces and all("case_start" in t.attributes for t in traces):
        return sorted(traces, key=_start_time)
    if traces and all("case_index" in t.attributes for t in traces):
        return sorted(traces, key=lambda t: int(t.attributes["case_index"]))
    return list(traces)


def split_by_time(traces: Sequence[Trace], test_fraction: float, val_fraction: float = 0.0) -> Split:
    """The oldest traces train, the next ``val_fraction`` validate, the newest ``test_fraction`` test (the split
    sizes are rounded to whole traces). See ``time_order`` for the order."""
    _check_fractions(test_fraction, val_fraction)
    ordered = time_order(traces)
    n_test = round(len(ordered) * test_fraction)
    n_val = round(len(ordered) * val_fraction)
    n_train = len(ordered) - n_test - n_val
    return Split(train=ordered[:n_train], val=ordered[n_train : n_train + n_val], test=ordered[n_train + n_val :])


def customer_unit(customer_id: str, seed: int) -> float:
    """A deterministic uniform number in [0, 1) for a customer (blake2b of seed and id; stable across Python
    processes and versions, unlike ``hash()``)."""
    digest = hashlib.blake2b(f"{seed}\x00{customer_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / _HASH_SCALE


def split_by_customer(traces: Sequence[Trace], test_fraction: float, seed: int, val_fraction: float = 0.0) -> Split:
    """All traces of one ``customer_id`` (a trace attribute) on one side.

    A customer goes to test when ``customer_unit(id, seed) < test_fraction``, else to val when it is below
    ``test_fraction + val_fraction``, else to train. The side of a customer depends only on its id and the seed,
    never on the other traces, so a customer stays on its side when more traces are added; the fractions hold
    for customers in expectation, not exactly for traces. Input order is kept within each side. Raises
    ValueError when a trace has no customer id.
    """
    _check_fractions(test_fraction, val_fraction)
    train: list[Trace] = []
    val: list[Trace] = []
    test: list[Trace] = []
    for trace in traces:
        customer = trace.attributes.get("customer_id")
        if customer is None or customer == "":
            raise ValueError(f"trace {trace.trace_id!r} has no customer_id attribute")
        unit = customer_unit(str(customer), seed)
        if unit < test_fraction:
            test.append(trace)
        elif unit < test_fraction + val_fraction:
            val.append(trace)
        else:
            train.append(trace)
    return Split(train=train, val=val, test=test)
