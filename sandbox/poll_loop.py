"""The loop of the sandbox's simulated participants on the bus (the operator pool, the QA reviewers): one step
(poll, act, publish) after another until stopped, never crash-looping on a failed step."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

MAX_BACKOFF_S = 5.0
FIRST_BACKOFF_S = 0.05


def run_until_stopped(
    step: Callable[[], None],
    stop_event: threading.Event,
    *,
    name: str,
    on_error: Callable[[], None],
    log: logging.Logger,
) -> None:
    """Call ``step`` until ``stop_event`` is set. A failed step is counted (``on_error``), logged on ``log`` and
    backed off (50 ms, doubling with every failure in a row, at most 5 s); a step that succeeds resets the backoff.
    The backoff waits on ``stop_event``, so stopping is never delayed by it."""
    errors = 0
    while not stop_event.is_set():
        try:
            step()
            errors = 0
        except Exception:
            errors += 1
            on_error()
            log.exception("%s: loop failed (%d in a row)", name, errors)
            stop_event.wait(min(MAX_BACKOFF_S, FIRST_BACKOFF_S * 2**errors))
