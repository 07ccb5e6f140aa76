"""FeedbackSink: the ``feedback`` topic into the feedback store the nightly critic job reads.

Copilot feedback (the sidebar), deferral answers and audits all arrive on ``feedback``; the sink writes each
record to a ``critic.store.FeedbackStore`` (SQLite or PostgreSQL), idempotent by record id, and commits the
offset after the write (a crash between the two re-writes the same row, which changes nothing). Run
``autopilot critic retrain --feedback <the store's URL>`` on it. Group ``<prefix>feedback-sink``.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from critic.store import FeedbackStore
from schemas.feedback import FeedbackRecord
from service.runtime.bus.consumer import BusConsumer, MessageMeta
from service.runtime.bus.producer import BusProducer
from service.runtime.bus.topics import Topics

log = logging.getLogger(__name__)

FEEDBACK_SINK_GROUP = "feedback-sink"


class FeedbackSink:
    """One consumer-group member writing feedback records to the store. Not thread-safe: run it on one thread."""

    def __init__(
        self,
        bootstrap: str,
        topics: Topics,
        store: FeedbackStore,
        producer: BusProducer,
        *,
        session_timeout_ms: int = 6000,
        heartbeat_interval_ms: int = 1000,
        fetch_max_wait_ms: int = 10,
        idle_fetch_max_wait_ms: int | None = None,
    ) -> None:
        self.store = store
        self.last_lag = 0
        self._consumer = BusConsumer(
            bootstrap,
            topics.prefix + FEEDBACK_SINK_GROUP,
            [topics.feedback],
            {topics.feedback: FeedbackRecord},
            self._on_record,
            producer,  # parks a record that cannot be decoded or stored, so it never blocks the sink
            session_timeout_ms=session_timeout_ms,
            heartbeat_interval_ms=heartbeat_interval_ms,
            fetch_max_wait_ms=fetch_max_wait_ms,
            idle_fetch_max_wait_ms=idle_fetch_max_wait_ms,
            max_poll_records=500,
            client_id="feedback-sink",
        )

    @property
    def group_id(self) -> str:
        return self._consumer.group_id

    def _on_record(self, topic: str, payload: Any, meta: MessageMeta) -> None:
        if not isinstance(payload, FeedbackRecord):
            raise ValueError(f"payload: expected a FeedbackRecord on {topic!r}, got {type(payload).__name__}")
        self.store.add([payload])  # idempotent by record id: a redelivery writes nothing

    def run(self, stop_event: threading.Event, lag_every_s: float = 5.0) -> None:
        """Poll until ``stop_event`` is set; errors are logged and backed off (``BusConsumer.run``). The lag is
        read on this thread (the consumer is not thread-safe) and published as ``last_lag``."""
        next_lag = 0.0
        errors = 0
        while not stop_event.is_set():
            try:
                self._consumer.poll_once(timeout_ms=500)  # a record ends the poll at once
                if time.monotonic() >= next_lag:
                    self.last_lag = sum(self._consumer.lag().values())
                    next_lag = time.monotonic() + lag_every_s
                errors = 0
            except Exception:
                errors += 1
                log.exception("feedback sink: poll failed (%d in a row)", errors)
                stop_event.wait(min(5.0, 0.1 * 2**errors))

    def close(self) -> None:
        self._consumer.close()
