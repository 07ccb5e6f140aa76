"""FeedbackStore: the ``feedback`` table, the contract between the service that writes operator feedback and the
nightly retraining job that reads it.

One row per FeedbackRecord, keyed by ``record_id``. The full record is kept as JSON (``payload``); the other
columns are copies for filtering and inspection (``created_at`` is indexed for time windows). Writes are
idempotent: a redelivered record (same ``record_id``, e.g. a Kafka message consumed twice) is ignored.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Self

from pydantic import ValidationError
from sqlalchemy import (
    Boolean,
    Column,
    Connection,
    DateTime,
    MetaData,
    String,
    Table,
    Text,
    func,
    select,
)
from sqlalchemy.dialects import postgresql, sqlite

from critic.database import open_engine
from critic.errors import FeedbackError
from schemas.base import validation_message
from schemas.feedback import FeedbackRecord

_CHUNK = 500  # ids per IN (...) query: far below every backend's bound-parameter limit

metadata = MetaData()

# created_at holds naive UTC: SQLite keeps no time zone, so every backend stores (and is queried with) UTC.
feedback_table = Table(
    "feedback",
    metadata,
    Column("record_id", String, primary_key=True),
    Column("created_at", DateTime(timezone=False), nullable=False, index=True),
    Column("process_id", String, nullable=False),
    Column("action_type", String, nullable=False),
    Column("accepted", Boolean, nullable=False),
    Column("reason", String, nullable=True),
    Column("source", String, nullable=False),
    Column("operator_id", String, nullable=False),
    Column("payload", Text, nullable=False),
)


def _naive_utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=None) if moment.tzinfo is None else moment.astimezone(UTC).replace(tzinfo=None)


def _row(record: FeedbackRecord) -> dict[str, Any]:
    return {
        "record_id": record.record_id,
        "created_at": _naive_utc(record.created_at),
        "process_id": record.slice.process_id,
        "action_type": record.slice.action_type.value,
        "accepted": record.accepted,
        "reason": None if record.reason is None else record.reason.value,
        "source": record.source.value,
        "operator_id": record.operator_id,
        "payload": record.model_dump_json(),
    }


def _chunks(items: Sequence[str]) -> Iterator[Sequence[str]]:
    for i in range(0, len(items), _CHUNK):
        yield items[i : i + _CHUNK]


class FeedbackStore:
    """Feedback records in a SQL database (a URL ``critic.database.open_engine`` accepts: ``sqlite:///feedback.db``,
    ``postgresql://...``). The table is created if missing."""

    def __init__(self, url: str) -> None:
        self.engine, self.url = open_engine(url, allow_memory=True)  # self.url: the password hidden
        metadata.create_all(self.engine)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _insert(self, conn: Connection, rows: list[dict[str, Any]]) -> None:
        # The existing-id check runs first; ON CONFLICT DO NOTHING also covers a concurrent writer that inserts
        # the same record between that check and this insert (SQLite and PostgreSQL both support it).
        dialect = sqlite if conn.dialect.name == "sqlite" else postgresql  # the two open_engine accepts
        conn.execute(dialect.insert(feedback_table).on_conflict_do_nothing(index_elements=["record_id"]), rows)

    def add(self, records: Iterable[FeedbackRecord]) -> int:
        """Insert the records not stored yet, in one transaction; return how many were new. A record whose
        ``record_id`` is already stored (or repeated in ``records``) is ignored, not duplicated."""
        batch: dict[str, FeedbackRecord] = {}
        for i, record in enumerate(records):
            if not isinstance(record, FeedbackRecord):
                raise ValueError(f"records[{i}]: expected a FeedbackRecord, got {type(record).__name__}")
            batch.setdefault(record.record_id, record)
        if not batch:
            return 0
        ids = list(batch)
        with self.engine.begin() as conn:
            existing: set[str] = set()
            for chunk in _chunks(ids):
                query = select(feedback_table.c.record_id).where(feedback_table.c.record_id.in_(chunk))
                existing.update(conn.execute(query).scalars())
            rows = [_row(batch[i]) for i in ids if i not in existing]
            if rows:
                self._insert(conn, rows)
        return len(rows)

    def count(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(feedback_table)).scalar_one())

    def counts_by_slice(self) -> dict[tuple[str, str], int]:
        """Labels per slice, ``(process_id, action_type) -> rows`` (what a promotion round needs)."""
        t = feedback_table.c
        query = select(t.process_id, t.action_type, func.count()).group_by(t.process_id, t.action_type)
        with self.engine.connect() as conn:
            return {(str(p), str(a)): int(n) for p, a, n in conn.execute(query)}

    def read(self, since: datetime | None = None, until: datetime | None = None) -> list[FeedbackRecord]:
        """Records with ``since <= created_at < until`` (either bound optional; a naive time is UTC), in time
        order (ties by record_id). A row whose payload fails validation raises FeedbackError naming it."""
        query = select(feedback_table.c.record_id, feedback_table.c.payload)
        if since is not None:
            query = query.where(feedback_table.c.created_at >= _naive_utc(since))
        if until is not None:
            query = query.where(feedback_table.c.created_at < _naive_utc(until))
        query = query.order_by(feedback_table.c.created_at, feedback_table.c.record_id)
        records: list[FeedbackRecord] = []
        with self.engine.connect() as conn:
            for record_id, payload in conn.execute(query):
                try:
                    record = FeedbackRecord.model_validate_json(payload)
                except ValidationError as error:
                    raise FeedbackError(f"{self._where()}: record {record_id!r}: {validation_message(error)}") from None
                if record.record_id != record_id:
                    raise FeedbackError(
                        f"{self._where()}: record {record_id!r}: record_id: payload has {record.record_id!r}"
                    )
                records.append(record)
        return records

    def _where(self) -> str:
        # The URL without its password: error messages end up in logs.
        return self.engine.url.render_as_string(hide_password=True)

    def close(self) -> None:
        self.engine.dispose()
