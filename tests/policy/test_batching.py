"""MicroBatcher: gathering, each caller its own result, deadlines, backpressure, error isolation, shutdown.

A gate (an Event the batch function waits on) holds the background thread inside a batch while the test queues
items, so what gathers into the next batch is decided by the test, not by timing."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field

import pytest

from policy.batching import BatcherClosed, BatcherFull, MicroBatcher

WAIT = 10.0  # generous upper bound for anything that should happen at once


@dataclass
class Gated:
    """A batch function that doubles its items, records each batch, and can be held inside a call."""

    gate: threading.Event = field(default_factory=threading.Event)
    entered: threading.Event = field(default_factory=threading.Event)
    batches: list[list[int]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.gate.set()

    def __call__(self, items: list[int]) -> list[int]:
        self.batches.append(list(items))
        self.entered.set()
        assert self.gate.wait(WAIT), "the test never opened the gate"
        if any(x < 0 for x in items):
            raise ValueError(f"negative item in {items}")
        return [2 * x for x in items]

    def hold(self, batcher: MicroBatcher[int, int]) -> Future[int]:
        """Occupy the background thread with a batch of one item (0) until ``release``."""
        self.gate.clear()
        self.entered.clear()
        future = batcher.submit(0)
        assert self.entered.wait(WAIT)
        return future

    def release(self) -> None:
        self.gate.set()


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_concurrent_callers_get_their_own_results_from_shared_batches() -> None:
    run = Gated()
    with MicroBatcher(run, max_batch=8, max_wait_ms=50, max_queue=100) as batcher:
        held = run.hold(batcher)
        results: dict[int, int] = {}
        submitted = threading.Barrier(21)

        def caller(x: int) -> None:
            future = batcher.submit(x)
            submitted.wait(WAIT)
            results[x] = future.result(WAIT)

        threads = [threading.Thread(target=caller, args=(x,)) for x in range(1, 21)]
        for t in threads:
            t.start()
        submitted.wait(WAIT)  # all 20 are queued behind the held batch
        run.release()
        for t in threads:
            t.join(WAIT)
        assert held.result(WAIT) == 0
    assert results == {x: 2 * x for x in range(1, 21)}
    gathered = run.batches[1:]
    assert sorted(x for b in gathered for x in b) == list(range(1, 21))
    assert all(len(b) <= 8 for b in gathered) and len(gathered) == 3  # 8 + 8 + 4
    assert batcher.stats.largest_batch == 8


def test_run_many_keeps_the_callers_order() -> None:
    run = Gated()
    with MicroBatcher(run, max_batch=4, max_wait_ms=1) as batcher:
        assert batcher.run_many([5, 3, 9, 1, 7, 2]) == [10, 6, 18, 2, 14, 4]
        assert batcher.run(21) == 42


def test_a_lone_item_waits_at_most_max_wait() -> None:
    """With nobody else submitting, a request runs after the gathering window, not at the batch-full point."""
    with MicroBatcher(Gated(), max_batch=64, max_wait_ms=2, timeout_s=WAIT) as batcher:
        assert batcher.submit(4).result(WAIT) == 8  # would hang if it waited for 64 items


def test_full_queue_raises_with_a_retry_hint_and_recovers() -> None:
    run = Gated()
    batcher = MicroBatcher(run, max_batch=2, max_wait_ms=0, max_queue=3)
    held = run.hold(batcher)
    queued = [batcher.submit(x) for x in (1, 2, 3)]
    with pytest.raises(BatcherFull) as info:
        batcher.submit(4)
    assert info.value.retry_after_s > 0 and info.value.queued == 3
    with pytest.raises(BatcherFull):
        batcher.submit_many([5, 6])  # all or none
    assert batcher.stats.rejected_full == 3
    run.release()
    assert [f.result(WAIT) for f in queued] == [2, 4, 6] and held.result(WAIT) == 0
    assert batcher.submit(4).result(WAIT) == 8  # room again
    batcher.close()


def test_a_request_past_its_deadline_in_the_queue_is_never_run() -> None:
    run, clock = Gated(), FakeClock()
    batcher = MicroBatcher(run, max_batch=4, max_wait_ms=0, timeout_s=1.0, clock=clock)
    held = run.hold(batcher)
    late = batcher.submit(7, timeout_s=0.5)
    on_time = batcher.submit(8, timeout_s=5.0)
    clock.now += 1.0  # 7's deadline has passed while it queued; 8's has not
    run.release()
    with pytest.raises(TimeoutError):
        late.result(WAIT)
    assert on_time.result(WAIT) == 16 and held.result(WAIT) == 0
    assert all(7 not in b for b in run.batches)
    assert batcher.stats.timed_out == 1
    batcher.close()


def test_a_caller_that_stops_waiting_gets_timeout_and_its_item_is_dropped() -> None:
    run = Gated()
    batcher = MicroBatcher(run, max_batch=4, max_wait_ms=0)
    held = run.hold(batcher)
    with pytest.raises(TimeoutError):
        batcher.run(9, timeout_s=0.01)  # the thread is held: no result can come in time
    run.release()
    assert held.result(WAIT) == 0
    assert batcher.run(10) == 20
    assert all(9 not in b for b in run.batches)  # cancelled while queued
    batcher.close()


def test_an_exception_reaches_only_its_own_caller() -> None:
    run = Gated()
    batcher = MicroBatcher(run, max_batch=8, max_wait_ms=0)
    held = run.hold(batcher)
    futures = batcher.submit_many([1, -1, 2, 3])
    run.release()
    assert held.result(WAIT) == 0
    assert futures[0].result(WAIT) == 2 and futures[2].result(WAIT) == 4 and futures[3].result(WAIT) == 6
    with pytest.raises(ValueError, match="negative"):
        futures[1].result(WAIT)
    assert [1, -1, 2, 3] in run.batches  # they were gathered together, then isolated
    assert batcher.stats.failed == 1
    batcher.close()


def test_wrong_result_count_fails_the_callers_not_the_thread() -> None:
    def short(items: Sequence[int]) -> list[int]:
        return []

    with MicroBatcher(short, max_wait_ms=0) as batcher:
        with pytest.raises(RuntimeError, match="0 results for 1 items"):
            batcher.run(1)
        with pytest.raises(RuntimeError):
            batcher.run(2)  # the thread still serves


def test_close_runs_what_is_queued_then_refuses() -> None:
    run = Gated()
    batcher = MicroBatcher(run, max_batch=2, max_wait_ms=0)
    held = run.hold(batcher)
    queued = batcher.submit_many([1, 2, 3])
    closer = threading.Thread(target=batcher.close)
    closer.start()
    run.release()
    closer.join(WAIT)
    assert not closer.is_alive() and batcher.closed
    assert [f.result(0) for f in queued] == [2, 4, 6] and held.result(0) == 0
    with pytest.raises(BatcherClosed):
        batcher.submit(4)


def test_invalid_settings() -> None:
    with pytest.raises(ValueError):
        MicroBatcher(Gated(), max_batch=0)
    with pytest.raises(ValueError):
        MicroBatcher(Gated(), timeout_s=0)
