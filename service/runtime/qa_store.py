"""QAStore: the QA queue of after-the-fact audits, in the runtime store's database (its own table).

A worker that executed an audited step adds a QA item (``add``: idempotent by id, one item per proposal); an
operator answers it once (``answer``: of concurrent answers exactly one is accepted, a repeat with the same content
is a duplicate, a different one is stale), the review and its audit entry in one transaction, as the store records
a deferral's answer; the realised-error estimate and the dashboard read the answered items (``labels``,
``outcomes``). The table lives beside the store's own tables and shares its engine, its table creation,
transactions and time conventions (naive UTC in the database, aware UTC out), so a QA item can be read wherever the
store can.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import Boolean, Column, DateTime, Index, Integer, MetaData, String, Table, Text, false, func, select
from sqlalchemy.engine import Connection, RowMapping

from schemas.qa import QAAnswer, QAItem, QALabel
from service.runtime.store import (
    AnswerStatus,
    AuditEntry,
    AuditNote,
    QueueStats,
    RuntimeStore,
    _aware,
    _aware_req,
    _naive_utc,
    _same_answer,
)

qa_metadata = MetaData()

QA_AUDIT = "qa"  # the kind of a review's audit entry: its action is ``qa:<verdict>``, its target the QA id


class QAStatus(StrEnum):
    PENDING = "pending"
    ANSWERED = "answered"


qa_items_table = Table(
    "qa_items",
    qa_metadata,
    Column("qa_id", String, primary_key=True),
    Column("session_id", String, nullable=False, index=True),
    Column("proposal_id", String, nullable=False, unique=True),
    Column("decision_id", String, nullable=False),
    Column("slice", String, nullable=False, index=True),
    Column("queue", String, nullable=False),
    Column("step", Integer, nullable=False),
    Column("status", String, nullable=False),
    Column("created_at", DateTime(timezone=False), nullable=False, index=True),  # when the step was executed
    Column("answered_at", DateTime(timezone=False), nullable=True),
    Column("verdict", String, nullable=True),
    Column("reason", String, nullable=True),
    Column("label", String, nullable=True),
    Column("operator_id", String, nullable=True),
    Column("answer", Text, nullable=True),
    Column("payload", Text, nullable=False),
    # True once the item reached the qa topic (the operator gateways'); maintenance re-sends the others.
    Column("published", Boolean, nullable=False, server_default=false()),
    Index("ix_qa_items_status_queue_created", "status", "queue", "created_at"),
)


def qa_id_for(proposal_id: str) -> str:
    """The QA item of a proposal: one per executed proposal, the same on every retry."""
    return f"qa-{proposal_id}"


@dataclass(frozen=True, slots=True)
class QARow:
    item: QAItem
    status: QAStatus
    created_at: datetime
    answered_at: datetime | None
    answer: QAAnswer | None
    label: QALabel | None
    published: bool


@dataclass(frozen=True, slots=True)
class QAAnswerResult:
    result: AnswerStatus
    reason: str
    item: QAItem | None = None  # set when the item exists
    audit_id: int | None = None  # the review's audit entry (accepted: written with it; duplicate: found)


@dataclass(frozen=True, slots=True)
class QALabelRow:
    """One answered QA item, as the realised-error estimate reads it."""

    qa_id: str
    session_id: str
    slice: str
    label: QALabel
    accepted: bool  # the verdict was accept (the paper's label)


def _row(row: RowMapping) -> QARow:
    return QARow(
        item=QAItem.model_validate_json(row["payload"]),
        status=QAStatus(row["status"]),
        created_at=_aware_req(row["created_at"]),
        answered_at=_aware(row["answered_at"]),
        answer=None if row["answer"] is None else QAAnswer.model_validate_json(row["answer"]),
        label=None if row["label"] is None else QALabel(row["label"]),
        published=bool(row["published"]),
    )


class QAStore:
    """The QA queue in ``store``'s database; the table is created if missing. Thread-safe as the store is."""

    def __init__(self, store: RuntimeStore) -> None:
        self.store = store
        store._create_tables(qa_metadata)

    def add(self, item: QAItem) -> bool:
        """Queue an executed step for review; False if its id is queued already (a retry)."""
        if not isinstance(item, QAItem):
            raise ValueError(f"item: expected a QAItem, got {type(item).__name__}")
        row: dict[str, Any] = {
            "qa_id": item.qa_id,
            "session_id": item.session_id,
            "proposal_id": item.proposal.proposal_id,
            "decision_id": item.decision.decision_id,
            "slice": str(item.decision.slice),
            "queue": item.queue,
            "step": item.step,
            "status": QAStatus.PENDING.value,
            "created_at": _naive_utc(item.executed_at),
            "payload": item.model_dump_json(),
            "published": False,
        }
        with self.store._write() as conn:
            return self.store._insert_ignore(conn, qa_items_table, "qa_id", row)

    def get(self, qa_id: str) -> QARow | None:
        query = select(qa_items_table).where(qa_items_table.c.qa_id == qa_id)
        with self.store._read() as conn:
            row = conn.execute(query).mappings().one_or_none()
        return None if row is None else _row(row)

    def items(
        self, queues: list[str] | None = None, status: QAStatus | None = QAStatus.PENDING, limit: int = 100
    ) -> list[QARow]:
        """QA items of the given queues (all if None): pending ones oldest first, otherwise newest first."""
        if limit < 1:
            raise ValueError(f"limit: must be >= 1, got {limit}")
        q = qa_items_table.c
        query = select(qa_items_table)
        if queues is not None:
            if not queues:
                return []
            query = query.where(q.queue.in_(list(queues)))
        if status is not None:
            query = query.where(q.status == QAStatus(status).value)
        if status == QAStatus.PENDING:
            query = query.order_by(q.created_at, q.qa_id)
        else:
            query = query.order_by(q.created_at.desc(), q.qa_id)
        with self.store._read() as conn:
            return [_row(row) for row in conn.execute(query.limit(limit)).mappings()]

    def counts(self, queues: list[str] | None = None) -> dict[str, int]:
        """Items per status (every status present) of the given queues (all if None)."""
        q = qa_items_table.c
        query = select(q.status, func.count()).group_by(q.status)
        counts = {status.value: 0 for status in QAStatus}
        if queues is not None:
            if not queues:
                return counts
            query = query.where(q.queue.in_(list(queues)))
        with self.store._read() as conn:
            for status, n in conn.execute(query):
                counts[status] = int(n)
        return counts

    def pending_stats(self, now: datetime | None = None) -> dict[str, QueueStats]:
        """Per queue with pending items: how many, and the age in seconds of the oldest."""
        at = _naive_utc(now)
        q = qa_items_table.c
        query = (
            select(q.queue, func.count(), func.min(q.created_at))
            .where(q.status == QAStatus.PENDING.value)
            .group_by(q.queue)
        )
        with self.store._read() as conn:
            rows = conn.execute(query).all()
        return {queue: QueueStats(int(n), max(0.0, (at - oldest).total_seconds())) for queue, n, oldest in sorted(rows)}

    def answer(
        self, answer: QAAnswer, now: datetime | None = None, *, audit: AuditNote | None = None
    ) -> QAAnswerResult:
        """Record a review, at most once per item: ``accepted`` (the item was pending; now answered with its
        label), ``duplicate`` (answered already with the same content), ``stale`` (answered differently, or the
        answer names another proposal or session), ``unknown`` (no such item). One transaction; the status
        compare-and-set makes exactly one of concurrent answers win.

        ``audit``: the review's audit entry (target the QA id, action ``qa:<verdict>``), written in the same
        transaction as an accepted review, so no crash or failed write separates them; a duplicate finds it again
        (``audit_id``)."""
        if not isinstance(answer, QAAnswer):
            raise ValueError(f"answer: expected a QAAnswer, got {type(answer).__name__}")
        audit_row = self.store._answer_audit_row(audit, QA_AUDIT)
        if audit is not None and audit.target != answer.qa_id:
            raise ValueError(
                f"audit: the target of a review's entry is its QA id {answer.qa_id!r}, got {audit.target!r}"
            )
        at = _naive_utc(now)
        with self.store._write() as conn:
            result = self._answer(conn, answer, at)
            if result.item is None:
                return result
            return replace(
                result, audit_id=self.store._audit_answer(conn, result.result, answer.qa_id, audit_row, QA_AUDIT)
            )

    @staticmethod
    def _answer(conn: Connection, answer: QAAnswer, at: datetime) -> QAAnswerResult:
        q = qa_items_table.c
        query = select(qa_items_table).where(q.qa_id == answer.qa_id).with_for_update()
        row = conn.execute(query).mappings().one_or_none()
        if row is None or row["session_id"] != answer.session_id:
            return QAAnswerResult(AnswerStatus.UNKNOWN, f"no QA item {answer.qa_id!r} in that session")
        item = QAItem.model_validate_json(row["payload"])
        if row["proposal_id"] != answer.proposal_id:
            return QAAnswerResult(AnswerStatus.STALE, "the answer names another proposal", item)
        if row["status"] == QAStatus.ANSWERED.value:
            # A note is free text for the QA log, not part of the verdict: the same verdict with another note
            # repeats it.
            if _same_answer(row["answer"], answer, also_ignore=frozenset({"note"})):
                return QAAnswerResult(AnswerStatus.DUPLICATE, "already answered with the same answer", item)
            return QAAnswerResult(AnswerStatus.STALE, "already answered differently", item)
        updated = conn.execute(
            qa_items_table.update()
            .where(q.qa_id == answer.qa_id, q.status == QAStatus.PENDING.value)
            .values(
                status=QAStatus.ANSWERED.value,
                answered_at=at,
                verdict=answer.verdict.value,
                reason=None if answer.reason is None else answer.reason.value,
                label=answer.label.value,
                operator_id=answer.operator_id,
                answer=answer.model_dump_json(),
            )
        )
        if updated.rowcount != 1:  # only reachable without row locks (SQLite serialises writers anyway)
            return QAAnswerResult(AnswerStatus.STALE, "answered concurrently", item)
        return QAAnswerResult(AnswerStatus.ACCEPTED, "accepted", item)

    def review_audit(self, qa_id: str) -> AuditEntry | None:
        """The audit entry of the review of ``qa_id`` (None if it was never reviewed with one)."""
        return self.store.answer_audit(qa_id, QA_AUDIT)

    def labels(self, since: datetime | None = None, session_ids: list[str] | None = None) -> list[QALabelRow]:
        """Every answered item (executed at or after ``since``; of ``session_ids`` if given), oldest first."""
        q = qa_items_table.c
        query = (
            select(q.qa_id, q.session_id, q.slice, q.label, q.verdict)
            .where(q.status == QAStatus.ANSWERED.value)
            .order_by(q.created_at, q.qa_id)
        )
        if since is not None:
            query = query.where(q.created_at >= _naive_utc(since))
        if session_ids is not None:
            query = query.where(q.session_id.in_(list(session_ids)))
        with self.store._read() as conn:
            return [
                QALabelRow(qa_id, session_id, name, QALabel(label), verdict == "accept")
                for qa_id, session_id, name, label, verdict in conn.execute(query)
            ]

    def outcomes(self, since: datetime | None = None) -> dict[str, dict[str, int]]:
        """Per slice: answered items by label (``acceptable``, ``unacceptable``, ``excluded``), ``accepted`` (the
        verdict was accept) and ``pending``."""
        q = qa_items_table.c
        query = select(q.slice, q.status, q.label, q.verdict, func.count()).group_by(
            q.slice, q.status, q.label, q.verdict
        )
        if since is not None:
            query = query.where(q.created_at >= _naive_utc(since))
        result: dict[str, dict[str, int]] = {}
        with self.store._read() as conn:
            for name, status, label, verdict, n in conn.execute(query):
                counts = result.setdefault(name, {"pending": 0, "accepted": 0, **{label.value: 0 for label in QALabel}})
                if status == QAStatus.PENDING.value:
                    counts["pending"] += int(n)
                    continue
                counts[label] += int(n)
                if verdict == "accept":
                    counts["accepted"] += int(n)
        return dict(sorted(result.items()))

    def mark_published(self, qa_id: str) -> bool:
        q = qa_items_table.c
        statement = qa_items_table.update().where(q.qa_id == qa_id, q.published.is_(False)).values(published=True)
        with self.store._write() as conn:
            return conn.execute(statement).rowcount == 1

    def unpublished(self, before: datetime, limit: int = 100) -> list[QAItem]:
        """Pending items created before ``before`` that never reached the qa topic (their worker died or lost the
        broker between adding and publishing), oldest first."""
        q = qa_items_table.c
        query = (
            select(q.payload)
            .where(q.published.is_(False), q.status == QAStatus.PENDING.value, q.created_at < _naive_utc(before))
            .order_by(q.created_at, q.qa_id)
            .limit(limit)
        )
        with self.store._read() as conn:
            return [QAItem.model_validate_json(payload) for payload in conn.execute(query).scalars()]
