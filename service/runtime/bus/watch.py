"""TopicWatcher: one thread that calls ``on_change()`` whenever records arrive on some topics.

For a process that needs to know *that* something happened, not what (the API's live inbox re-reads the store
then): a consumer without a group (every partition assigned, so every replica sees every record; nothing is
committed), starting at the end of each partition, with the long fetch wait of ``IdleFetch`` while the topics
are quiet. Tansu's end offset may point inside the last batch: a few old records then cause one spurious wake-up,
which costs one store read.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence

from kafka import KafkaConsumer, TopicPartition

from service.runtime.bus.idle import IdleFetch

log = logging.getLogger(__name__)


class TopicWatcher:
    def __init__(
        self,
        bootstrap: str,
        topics: Sequence[str],
        on_change: Callable[[], None],
        *,
        fetch_max_wait_ms: int = 10,
        idle_fetch_max_wait_ms: int | None = 250,
        poll_timeout_ms: int = 1000,
        client_id: str = "topic-watcher",
    ) -> None:
        self.topics = list(topics)
        self.on_change = on_change
        self.poll_timeout_ms = poll_timeout_ms
        self.changes = 0
        self._consumer = KafkaConsumer(
            bootstrap_servers=bootstrap,
            group_id=None,
            client_id=client_id,
            enable_auto_commit=False,
            fetch_max_wait_ms=fetch_max_wait_ms,
        )
        partitions = [
            TopicPartition(topic, partition)
            for topic in self.topics
            for partition in sorted(self._consumer.partitions_for_topic(topic) or ())
        ]
        if not partitions:
            self._consumer.close()
            raise ValueError(f"topics: {self.topics} have no partitions; create them first")
        self._consumer.assign(partitions)
        self._consumer.seek_to_end(*partitions)
        self._idle = IdleFetch(self._consumer, fetch_max_wait_ms, idle_fetch_max_wait_ms)

    def run(self, stop_event: threading.Event) -> None:
        """Poll until ``stop_event`` is set; ``on_change`` once per poll that returned records."""
        while not stop_event.is_set():
            try:
                batch = self._consumer.poll(timeout_ms=self.poll_timeout_ms)
            except Exception:
                log.warning("topic watcher: poll failed", exc_info=True)
                stop_event.wait(1.0)
                continue
            records = sum(len(r) for r in batch.values())
            self._idle.seen(records)
            if records:
                self.changes += 1
                try:
                    self.on_change()
                except Exception:
                    log.exception("topic watcher: on_change failed")

    def close(self) -> None:
        self._consumer.close()
