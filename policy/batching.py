"""Dynamic micro-batching: concurrent callers' items gathered for a few milliseconds and run in one batched call.

Model servers batch this way: the first request of a batch waits at most ``max_wait_ms`` for others to join (or
until ``max_batch`` items are gathered), then one background thread runs the whole batch through ``run_batch``
(here ``LMPolicy.propose_batch``, whose fast path packs the states into one pass) and hands each caller its own
result. The queue is bounded: when ``max_queue`` items are waiting, ``submit`` raises ``BatcherFull`` at once
with a retry-after hint (an HTTP API answers 429 + Retry-After) instead of letting waits grow without bound.

Guarantees (tests/policy/test_batching.py):

* each caller gets the result computed for its own item, whatever the order items are gathered in;
* an exception reaches only the callers it concerns: when a batch fails as a whole, its items are re-run one by
  one, so one bad item fails its own caller and the others still get their results;
* a request has a deadline: one still queued at its deadline is never run, and its caller gets ``TimeoutError``;
  a caller that stops waiting (``future.cancel()``) takes its item out of the next batch;
* ``close()`` runs what is already queued, refuses new items (``BatcherClosed``) and joins the thread.

Waiting is on a condition variable and on futures, never on a timed sleep.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

from schemas.proposal import Proposal
from schemas.state import UIState

T = TypeVar("T")
R = TypeVar("R")


class BatcherFull(RuntimeError):
    """The queue is full: try again after ``retry_after_s`` seconds."""

    def __init__(self, queued: int, retry_after_s: float) -> None:
        super().__init__(f"micro-batcher queue full ({queued} waiting); retry after {retry_after_s:.3f} s")
        self.queued = queued
        self.retry_after_s = retry_after_s


class BatcherClosed(RuntimeError):
    """The batcher was closed: it takes no new items."""


@dataclass
class _Request(Generic[T, R]):
    item: T
    deadline: float  # time.monotonic()
    future: Future[R] = field(default_factory=Future)


@dataclass
class BatcherStats:
    """Counters since start (read without the lock: a snapshot may be a moment old)."""

    batches: int = 0
    items: int = 0
    rejected_full: int = 0
    timed_out: int = 0
    failed: int = 0
    largest_batch: int = 0
    batch_seconds_ewma: float = 0.0  # recent time of one batched call, for the retry-after hint


class MicroBatcher(Generic[T, R]):
    """Gathers items from many threads into batches for ``run_batch``, which must return one result per item
    in the same order."""

    def __init__(
        self,
        run_batch: Callable[[list[T]], Sequence[R]],
        *,
        max_batch: int = 32,
        max_wait_ms: float = 3.0,
        max_queue: int = 256,
        timeout_s: float = 5.0,
        name: str = "micro-batcher",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_batch < 1 or max_queue < 1:
            raise ValueError("max_batch and max_queue must be >= 1")
        if max_wait_ms < 0 or timeout_s <= 0:
            raise ValueError("max_wait_ms must be >= 0 and timeout_s > 0")
        self.run_batch = run_batch
        self.max_batch = max_batch
        self.max_wait_s = max_wait_ms / 1000.0
        self.max_queue = max_queue
        self.timeout_s = timeout_s
        self.stats = BatcherStats()
        self._clock = clock  # for request deadlines (tests pass their own); the gathering window is real time
        self._queue: deque[_Request[T, R]] = deque()
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    # ---- callers -------------------------------------------------------------------------------------------

    def retry_after_s(self) -> float:
        """How long until the queue has room, roughly: the batches ahead of a new item times a batch's time."""
        batches_ahead = len(self._queue) / self.max_batch + 1
        return max(0.05, batches_ahead * max(self.stats.batch_seconds_ewma, self.max_wait_s))

    def submit(self, item: T, timeout_s: float | None = None) -> Future[R]:
        """Queue ``item``; the future resolves to its result, its exception, or ``TimeoutError`` when it was
        still queued ``timeout_s`` (default: the batcher's) after submission. Raises ``BatcherFull`` when the
        queue is full and ``BatcherClosed`` after ``close()``."""
        return self.submit_many([item], timeout_s)[0]

    def submit_many(self, items: Sequence[T], timeout_s: float | None = None) -> list[Future[R]]:
        """Queue several items at once (all or none: ``BatcherFull`` when they do not all fit)."""
        deadline = self._clock() + (self.timeout_s if timeout_s is None else timeout_s)
        requests: list[_Request[T, R]] = [_Request(item, deadline) for item in items]
        with self._cond:
            if self._closed:
                raise BatcherClosed("the micro-batcher is closed")
            if len(self._queue) + len(requests) > self.max_queue:
                self.stats.rejected_full += len(requests)
                raise BatcherFull(len(self._queue), self.retry_after_s())
            self._queue.extend(requests)
            self._cond.notify()
        return [r.future for r in requests]

    def run(self, item: T, timeout_s: float | None = None) -> R:
        """Submit and wait: the item's result, or its exception; ``TimeoutError`` past the deadline."""
        return self.run_many([item], timeout_s)[0]

    def run_many(self, items: Sequence[T], timeout_s: float | None = None) -> list[R]:
        """Submit several items and wait for all of them (results in the order of ``items``)."""
        limit = self.timeout_s if timeout_s is None else timeout_s
        futures = self.submit_many(items, limit)
        deadline = time.monotonic() + limit
        try:
            # A started batch always finishes, so the wait past the queue deadline is bounded by one batch.
            return [f.result(timeout=max(0.0, deadline - time.monotonic()) + self._grace()) for f in futures]
        except FutureTimeout:
            for f in futures:
                f.cancel()  # still queued: it will not run
            raise TimeoutError(f"no result within {limit:.3f} s") from None

    def _grace(self) -> float:
        return 4 * max(self.stats.batch_seconds_ewma, 0.01) + self.max_wait_s

    def close(self, timeout_s: float | None = None) -> None:
        """Refuse new items, run the queued ones, stop the thread (joined up to ``timeout_s``)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout_s)

    @property
    def closed(self) -> bool:
        return self._closed

    def queued(self) -> int:
        return len(self._queue)

    def __enter__(self) -> MicroBatcher[T, R]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- the background thread -----------------------------------------------------------------------------

    def _gather(self) -> list[_Request[T, R]] | None:
        """The next batch: wait for a first item, then for more until the batch is full or ``max_wait_s`` has
        passed since that first item. None when closed and drained."""
        with self._cond:
            while not self._queue:
                if self._closed:
                    return None
                self._cond.wait()
            until = time.monotonic() + self.max_wait_s
            while len(self._queue) < self.max_batch and not self._closed:
                left = until - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            return [self._queue.popleft() for _ in range(min(self.max_batch, len(self._queue)))]

    def _loop(self) -> None:
        try:
            while True:
                batch = self._gather()
                if batch is None:
                    return
                self._serve(batch)
        finally:  # however the thread ends, nobody is left waiting on a future that cannot resolve
            with self._cond:
                self._closed = True
                left = list(self._queue)
                self._queue.clear()
            for request in left:
                if request.future.set_running_or_notify_cancel():
                    request.future.set_exception(BatcherClosed("the micro-batcher stopped"))

    def _serve(self, batch: list[_Request[T, R]]) -> None:
        now = self._clock()
        live: list[_Request[T, R]] = []
        for request in batch:
            if not request.future.set_running_or_notify_cancel():
                continue  # the caller gave up waiting
            if request.deadline < now:
                self.stats.timed_out += 1
                request.future.set_exception(TimeoutError("timed out in the micro-batcher queue"))
                continue
            live.append(request)
        if not live:
            return
        try:
            self._run(live)
        except BaseException as exc:  # the thread is going down (e.g. SystemExit): no caller may hang
            for request in live:
                if not request.future.done():
                    request.future.set_exception(exc)
            raise

    def _run(self, batch: list[_Request[T, R]]) -> None:
        started = time.perf_counter()
        try:
            results = list(self.run_batch([r.item for r in batch]))
            if len(results) != len(batch):
                raise RuntimeError(f"run_batch returned {len(results)} results for {len(batch)} items")
        except Exception as exc:  # isolated below: each item re-run alone
            if len(batch) == 1:
                self.stats.failed += 1
                batch[0].future.set_exception(exc)
            else:
                for request in batch:  # which item failed is unknown: each gets its own outcome
                    self._run([request])
            return
        elapsed = time.perf_counter() - started
        stats = self.stats
        stats.batches += 1
        stats.items += len(batch)
        stats.largest_batch = max(stats.largest_batch, len(batch))
        stats.batch_seconds_ewma = elapsed if stats.batches == 1 else 0.8 * stats.batch_seconds_ewma + 0.2 * elapsed
        for request, result in zip(batch, results, strict=True):
            request.future.set_result(result)


# ---- the policy behind a micro-batcher -------------------------------------------------------------------------


class _Proposer(Protocol):
    def propose_batch(self, states: Sequence[UIState], k: int = 5) -> list[Proposal | None]: ...


@dataclass(frozen=True, slots=True)
class ProposalJob:
    state: UIState
    k: int = 5


def top_k(proposal: Proposal | None, k: int) -> Proposal | None:
    """``proposal`` cut to its top ``k`` actions: what ``propose_batch(..., k)`` returns, given a larger k."""
    if proposal is None or len(proposal.alternatives) <= k - 1:
        return proposal
    return proposal.model_copy(update={"alternatives": proposal.alternatives[: max(0, k - 1)]})


class BatchedProposer:
    """A policy whose calls from many threads are gathered into one ``propose_batch`` (a ``MicroBatcher`` of
    ``ProposalJob``): the session workers' steps and the copilot's suggestions scored together. ``lock``, when
    given, is held around each batched call (other users of the policy take it too)."""

    def __init__(
        self,
        policy: _Proposer,
        *,
        lock: threading.Lock | None = None,
        max_batch: int = 64,
        max_wait_ms: float = 2.0,
        max_queue: int = 512,
        timeout_s: float = 10.0,
        name: str = "policy-batcher",
    ) -> None:
        self.policy = policy
        self._lock = lock
        self.batcher: MicroBatcher[ProposalJob, Proposal | None] = MicroBatcher(
            self._run,
            max_batch=max_batch,
            max_wait_ms=max_wait_ms,
            max_queue=max_queue,
            timeout_s=timeout_s,
            name=name,
        )

    def _run(self, jobs: list[ProposalJob]) -> list[Proposal | None]:
        k = max(job.k for job in jobs)
        states = [job.state for job in jobs]
        if self._lock is None:
            proposals = self.policy.propose_batch(states, k=k)
        else:
            with self._lock:
                proposals = self.policy.propose_batch(states, k=k)
        return [top_k(p, job.k) for p, job in zip(proposals, jobs, strict=True)]

    def propose_batch(self, states: Sequence[UIState], k: int = 5) -> list[Proposal | None]:
        """Blocking, like ``LMPolicy.propose_batch``; raises ``BatcherFull`` when the queue has no room for all
        of ``states`` and ``TimeoutError`` past the batcher's timeout."""
        if not states:
            return []
        return self.batcher.run_many([ProposalJob(s, k) for s in states])

    def submit(self, state: UIState, k: int = 5) -> Future[Proposal | None]:
        return self.batcher.submit(ProposalJob(state, k))

    def close(self) -> None:
        self.batcher.close()
