"""The simulated participants' loop (``sandbox.poll_loop``): a failed step is counted, logged and backed off, the
loop goes on after it, and it ends when the stop event is set, also while it backs off."""

from __future__ import annotations

import logging
import threading
import time

import pytest

from sandbox.poll_loop import run_until_stopped


def test_failed_steps_are_counted_and_the_loop_goes_on_until_stopped(caplog: pytest.LogCaptureFixture) -> None:
    stop = threading.Event()
    outcomes = iter([RuntimeError("broker away"), RuntimeError("again"), None, RuntimeError("once more"), None])
    steps: list[str] = []
    errors: list[int] = []

    def step() -> None:
        outcome = next(outcomes, None)
        steps.append("failed" if outcome else "ok")
        if len(steps) == 5:
            stop.set()
        if outcome is not None:
            raise outcome

    with caplog.at_level(logging.ERROR):
        run_until_stopped(step, stop, name="pool", on_error=lambda: errors.append(1), log=logging.getLogger("t"))
    assert steps == ["failed", "failed", "ok", "failed", "ok"] and len(errors) == 3
    # The count of failures in a row resets after a step that succeeds.
    assert [r.getMessage() for r in caplog.records] == [
        "pool: loop failed (1 in a row)",
        "pool: loop failed (2 in a row)",
        "pool: loop failed (1 in a row)",
    ]


def test_stopping_does_not_wait_for_the_backoff() -> None:
    stop = threading.Event()

    def step() -> None:
        raise RuntimeError("always")

    failures: list[int] = []
    sixth = threading.Event()  # 3.1 s in: the 6th failure backs off 3.2 s

    def failed() -> None:
        failures.append(1)
        if len(failures) == 6:
            sixth.set()

    thread = threading.Thread(
        target=run_until_stopped,
        args=(step, stop),
        kwargs={"name": "pool", "on_error": failed, "log": logging.getLogger("t")},
    )
    thread.start()
    assert sixth.wait(30.0)
    assert len(failures) == 6
    started = time.monotonic()
    stop.set()
    thread.join(10.0)
    assert not thread.is_alive() and time.monotonic() - started < 1.0
