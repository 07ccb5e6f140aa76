"""Consuming payloads from the bus: decode, handle, then commit, with poison messages parked and transient
failures retried in place.

The loop is the one the kafka-python docs show with auto-commit off: poll a batch, process each record, commit
the offsets of what was processed. Per record:

- handled: counted, its offset committed after the batch;
- undecodable (PoisonMessage) or the handler raised ValueError: the message can never succeed, so it is
  published unchanged to the topic's parked topic with the reason in a header, and committed;
- any other exception (a database away, a bug that a deploy will fix): nothing is committed for it, the partition
  is seeked back to it and paused for a bounded exponential backoff, and the other partitions go on. It is
  retried until it succeeds or is parked, so a redelivery happens only for work that was not committed.

Tansu: ``auto_offset_reset`` is "earliest" because its ListOffsets(latest) is wrong, and lag is computed from
the highwater mark the fetches report, not from ``end_offsets()`` (which uses that same wrong answer).
"""

from __future__ import annotations

import logging
import threading
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any, TypeVar

from schemas.base import Payload
from service.runtime.bus.envelope import HEADER_MESSAGE_ID, PoisonMessage, decode, header
from service.runtime.bus.idle import IdleFetch
from service.runtime.bus.producer import BusProducer
from service.runtime.bus.topics import UnknownTopic, missing_topics, parked_topic

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    from kafka import ConsumerRebalanceListener, KafkaConsumer, TopicPartition
    from kafka.errors import KafkaError
    from kafka.structs import OffsetAndMetadata

log = logging.getLogger(__name__)

P = TypeVar("P", bound=Payload)

HEADER_PARKED_ERROR = "parked-error"
HEADER_PARKED_TOPIC = "parked-from-topic"
HEADER_PARKED_PARTITION = "parked-from-partition"
HEADER_PARKED_OFFSET = "parked-from-offset"
HEADER_PARKED_GROUP = "parked-by-group"


@dataclass(frozen=True)
class MessageMeta:
    """Where a payload came from."""

    topic: str
    partition: int
    offset: int
    key: str | None
    headers: tuple[tuple[str, bytes], ...]
    timestamp: int  # milliseconds since the epoch, as the producer (or broker) set it

    @property
    def message_id(self) -> str | None:
        """The producer's stable id: a handler keeps the ids it applied to drop redeliveries."""
        return header(self.headers, HEADER_MESSAGE_ID)


Handler = Callable[[str, Payload, MessageMeta], None]


@dataclass
class ConsumerStats:
    processed: int = 0  # handler returned
    parked: int = 0  # poison messages (parked, or dropped when there is no producer)
    retries: int = 0  # transient failures: the record was seeked back and will be redelivered
    commit_failures: int = 0  # commits refused (a rebalance): that work may be redelivered
    poll_errors: int = 0  # errors outside record handling (the broker away)


class _Outcome(Enum):
    DONE = "done"
    RETRY = "retry"


class _Forget(ConsumerRebalanceListener):
    """Drops what this member remembers about partitions it loses: their committed offsets move on elsewhere.
    Runs on the consumer's I/O thread; single dict pops are atomic, so no lock is needed."""

    def __init__(self, owner: BusConsumer) -> None:
        self.owner = owner

    def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        self.owner._forget(revoked)

    def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        pass

    def on_partitions_lost(self, lost: list[TopicPartition]) -> None:
        self.owner._forget(lost)


class BusConsumer:
    """One consumer-group member. Not thread-safe (kafka-python's consumer is not): call everything from the
    thread that runs ``run``/``poll_once``, and stop it with the event given to ``run``."""

    def __init__(
        self,
        bootstrap: str,
        group_id: str,
        topics: Sequence[str],
        payload_types: Mapping[str, type[Payload]],
        handler: Handler,
        producer: BusProducer | None,
        session_timeout_ms: int = 6000,
        heartbeat_interval_ms: int = 1000,
        fetch_max_wait_ms: int = 10,
        max_poll_records: int = 100,
        *,
        idle_fetch_max_wait_ms: int | None = None,
        client_id: str | None = None,
        backoff_initial_s: float = 0.05,
        backoff_max_s: float = 5.0,
        park_timeout_s: float = 10.0,
        check_topics: bool = True,
    ) -> None:
        if not group_id:
            raise ValueError("group_id: must be non-empty")
        if isinstance(topics, str) or not topics:
            raise ValueError("topics: must be a non-empty list of topic names")
        for topic in topics:
            if topic not in payload_types:
                raise ValueError(f"payload_types: no payload type for topic {topic!r}")
        if max_poll_records < 1:
            raise ValueError(f"max_poll_records: must be >= 1, got {max_poll_records}")
        if not 0 < backoff_initial_s <= backoff_max_s:
            raise ValueError("backoff_initial_s: must be > 0 and <= backoff_max_s")
        if check_topics:
            # Subscribing to a missing topic makes Tansu create it with its default partition count.
            missing = missing_topics(bootstrap, topics)
            if missing:
                raise UnknownTopic(f"topics: {missing} do not exist; create them with ensure_topics first")
        self.group_id = group_id
        self.topics = list(topics)
        self.payload_types = dict(payload_types)
        self.handler = handler
        self.producer = producer
        self.max_poll_records = max_poll_records
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self.park_timeout_s = park_timeout_s
        self.stats = ConsumerStats()
        self._failures: dict[TopicPartition, int] = {}  # consecutive failures per partition
        self._paused_until: dict[TopicPartition, float] = {}
        self._committed: dict[TopicPartition, int] = {}  # what this member committed (saves a round trip)
        self._closed = False
        self._consumer = KafkaConsumer(
            bootstrap_servers=bootstrap,
            group_id=group_id,
            client_id=client_id or f"{group_id}-consumer",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            session_timeout_ms=session_timeout_ms,
            heartbeat_interval_ms=heartbeat_interval_ms,
            fetch_max_wait_ms=fetch_max_wait_ms,
            max_poll_records=max_poll_records,
            allow_auto_create_topics=False,
        )
        self._consumer.subscribe(self.topics, listener=_Forget(self))
        # A long fetch wait once the topics are quiet (service.runtime.bus.idle): an idle consumer costs ~nothing.
        self._idle = IdleFetch(self._consumer, fetch_max_wait_ms, idle_fetch_max_wait_ms)

    # -- the loop -----------------------------------------------------------------------------------------------

    def poll_once(self, timeout_ms: int = 100) -> int:
        """Poll one batch and process it; returns how many records were finished (handled or parked)."""
        self._resume_due()
        try:
            batch = self._consumer.poll(timeout_ms=timeout_ms, max_records=self.max_poll_records)
        except KafkaError as exc:
            self.stats.poll_errors += 1
            log.warning("poll failed in group %s: %r", self.group_id, exc)
            return 0
        self._idle.seen(sum(len(records) for records in batch.values()))
        finished = 0
        to_commit: dict[TopicPartition, OffsetAndMetadata] = {}
        try:
            for tp, records in batch.items():
                for record in records:
                    if self._process(tp, record) is _Outcome.RETRY:
                        self._retry_later(tp, record.offset)
                        break  # the rest of this partition comes again after the seek
                    self._failures.pop(tp, None)
                    to_commit[tp] = OffsetAndMetadata(record.offset + 1, "", -1)
                    finished += 1
        finally:
            # Also on KeyboardInterrupt and the like: what was processed is committed, the rest comes again.
            self._commit(to_commit)
        return finished

    def run(self, stop_event: threading.Event, poll_timeout_ms: int = 100) -> None:
        """Loop ``poll_once`` until ``stop_event`` is set. Unexpected errors are logged, counted and backed off:
        a worker never crash-loops on them."""
        errors = 0
        while not stop_event.is_set():
            try:
                self.poll_once(poll_timeout_ms)
                errors = 0
            except Exception:
                errors += 1
                self.stats.poll_errors += 1
                log.exception("consumer loop of group %s failed (%d in a row)", self.group_id, errors)
                stop_event.wait(self._backoff(errors))

    def _process(self, tp: TopicPartition, record: Any) -> _Outcome:
        meta = MessageMeta(
            topic=tp.topic,
            partition=tp.partition,
            offset=record.offset,
            key=record.key.decode("utf-8", errors="replace") if record.key is not None else None,
            headers=tuple((name, value) for name, value in (record.headers or ())),
            timestamp=record.timestamp,
        )
        try:
            payload = decode(record.value, record.headers, self.payload_types[tp.topic])
        except PoisonMessage as exc:
            return self._park(record, meta, exc.reason)
        try:
            self.handler(tp.topic, payload, meta)
        except ValueError as exc:
            # The handler says this message is wrong, so retrying cannot help.
            return self._park(record, meta, f"handler: {exc}")
        except Exception:
            self.stats.retries += 1
            log.exception("handler failed on %s:%d@%d; retrying after a backoff", tp.topic, tp.partition, meta.offset)
            return _Outcome.RETRY
        self.stats.processed += 1
        return _Outcome.DONE

    def _park(self, record: Any, meta: MessageMeta, reason: str) -> _Outcome:
        where = f"{meta.topic}:{meta.partition}@{meta.offset}"
        if self.producer is None:
            log.error("dropping poison message %s (no producer to park it): %s", where, reason)
            self.stats.parked += 1
            return _Outcome.DONE
        headers = [
            *meta.headers,
            (HEADER_PARKED_ERROR, reason.encode("utf-8")),
            (HEADER_PARKED_TOPIC, meta.topic.encode()),
            (HEADER_PARKED_PARTITION, str(meta.partition).encode()),
            (HEADER_PARKED_OFFSET, str(meta.offset).encode()),
            (HEADER_PARKED_GROUP, self.group_id.encode()),
        ]
        try:
            self.producer.publish_raw(
                parked_topic(meta.topic), record.key, record.value, headers, timeout=self.park_timeout_s
            )
        except Exception:
            # Not parked means not done: keep it, and try again after a backoff rather than lose it.
            self.stats.retries += 1
            log.exception("parking poison message %s failed; retrying after a backoff", where)
            return _Outcome.RETRY
        self.stats.parked += 1
        log.warning("parked poison message %s: %s", where, reason)
        return _Outcome.DONE

    def _backoff(self, failures: int) -> float:
        return float(min(self.backoff_max_s, self.backoff_initial_s * 2 ** min(failures - 1, 30)))

    def _retry_later(self, tp: TopicPartition, offset: int) -> None:
        failures = self._failures.get(tp, 0) + 1
        self._failures[tp] = failures
        try:
            self._consumer.seek(tp, offset)
            # Pausing only this partition keeps the others (other sessions) moving during the backoff.
            self._consumer.pause(tp)
        except Exception:  # revoked meanwhile: the new owner starts from the committed offset anyway
            log.debug("seek/pause of %s failed", tp, exc_info=True)
            return
        self._paused_until[tp] = time.monotonic() + self._backoff(failures)

    def _resume_due(self) -> None:
        if not self._paused_until:
            return
        now = time.monotonic()
        assigned = self._consumer.assignment()
        for tp, until in list(self._paused_until.items()):
            if tp not in assigned:
                self._paused_until.pop(tp, None)
            elif until <= now:
                self._paused_until.pop(tp, None)
                self._consumer.resume(tp)

    def _forget(self, partitions: list[TopicPartition]) -> None:
        for tp in partitions:
            self._committed.pop(tp, None)
            self._failures.pop(tp, None)
            self._paused_until.pop(tp, None)

    def _commit(self, offsets: dict[TopicPartition, OffsetAndMetadata]) -> None:
        if not offsets:
            return
        try:
            self._consumer.commit(offsets=offsets)
        except KafkaError as exc:
            # Typically a rebalance: the partitions' new owner redelivers this uncommitted work.
            self.stats.commit_failures += 1
            log.warning("commit failed in group %s: %r", self.group_id, exc)
            return
        for tp, meta in offsets.items():
            self._committed[tp] = meta.offset

    # -- observation --------------------------------------------------------------------------------------------

    def assignment(self) -> set[TopicPartition]:
        return set(self._consumer.assignment())

    def wait_for_assignment(self, timeout: float = 10.0) -> set[TopicPartition]:
        """Poll until the group has given this member partitions (records arriving meanwhile are processed as
        by ``poll_once``). Raises TimeoutError."""
        deadline = time.monotonic() + timeout
        while True:
            assigned = self.assignment()
            if assigned:
                return assigned
            if time.monotonic() > deadline:
                raise TimeoutError(f"group {self.group_id}: no partitions assigned within {timeout:.1f} s")
            self.poll_once(timeout_ms=50)

    def committed(self, tp: TopicPartition) -> int | None:
        """The group's committed offset of ``tp`` (the next record to process), or None."""
        if tp in self._committed:
            return self._committed[tp]
        value = self._consumer.committed(tp)
        return int(value) if value is not None else None

    def lag(self) -> dict[TopicPartition, int]:
        """Records not yet processed-and-committed, per assigned partition whose highwater is known (a partition
        appears after its first fetch). Highwater comes from fetch responses, which Tansu gets right."""
        result: dict[TopicPartition, int] = {}
        for tp in sorted(self._consumer.assignment()):
            highwater = self._consumer.highwater(tp)
            if highwater is None:
                continue
            committed = self.committed(tp)
            result[tp] = max(0, highwater - (committed if committed is not None else 0))
        return result

    # -- lifetime -----------------------------------------------------------------------------------------------

    def close(self) -> None:
        """Leave the group and close; idempotent. Does not close the producer (the caller owns it)."""
        if self._closed:
            return
        self._closed = True
        try:
            self._consumer.close(autocommit=False)
        except Exception:
            log.debug("closing the consumer raised", exc_info=True)

    def __enter__(self) -> BusConsumer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def read_to_end(bootstrap: str, topic: str, payload_type: type[P], timeout_s: float = 30.0) -> list[P]:
    """Every message on ``topic`` from the beginning, read by partition without a group up to the highwater mark
    (which Tansu reports right; its ListOffsets(latest) is wrong). For audits of a topic (benches, tests).
    Raises TimeoutError when the end is not reached within ``timeout_s``."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, fetch_max_wait_ms=10)
    try:
        partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        out: list[P] = []
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=100).values():
                out.extend(decode(r.value, r.headers, payload_type) for r in records)
            highs = [consumer.highwater(tp) for tp in partitions]
            if all(h is not None and consumer.position(tp) >= h for tp, h in zip(partitions, highs, strict=True)):
                return out
        raise TimeoutError(f"could not read {topic} to its end within {timeout_s} s")
    finally:
        consumer.close()
