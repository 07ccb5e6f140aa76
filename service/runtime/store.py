"""RuntimeStore: the durable truth of background sessions, in SQLite (a file, the default) or PostgreSQL.

A worker keeps nothing it cannot rebuild from here: which sessions exist and who owns them (leases), what was
proposed and decided, which steps wait for an operator (deferrals) and which side effects were sent to the BPM
(applied actions). A crashed worker is replaced and the new one resumes from these rows.

Guarantees (each public method is one transaction):

- Ownership: ``claim`` is a compare-and-set in one ``UPDATE ... WHERE``: at most one worker holds a valid lease on
  a session at a time. ``apply_once``, ``park`` and ``drop_reservation`` given a ``worker_id`` refuse to act for a
  worker that no longer holds the lease (fencing, ``LeaseLostError``), so a worker that was presumed dead cannot
  act after its successor took over.
- Operator answers: ``answer`` accepts an OperatorDecision only if it names the session's pending proposal and
  the state etag it was parked on, and only once: of any number of concurrent answers exactly one is accepted;
  the others are ``duplicate`` (same content: a redelivery or a double click) or ``stale``.
- Side effects: ``apply_once`` reserves the idempotency key before calling ``apply`` and confirms it after, so
  ``apply`` is never started twice for one key by this store's callers, whichever thread or process they run in.
  A crash between reservation and confirmation leaves an *unconfirmed* key: the effect may or may not have
  happened. The resuming worker re-sends it with the same key (``unconfirmed_keys``) and then ``confirm``s it;
  that is safe because the BPM adapter is itself idempotent on the key (the sandbox keeps a per-case map), so
  together the effect happens exactly once. If ``apply`` raises, the outcome is unknown too: the reservation is
  released so a retry with the same key may apply it, again relying on the BPM's idempotency. When the BPM
  proves an unconfirmed key was never applied (it refuses the re-sent action: the key is checked before anything
  else), ``drop_reservation`` removes the dead reservation so the session can decide that step again.
- Deferrals are parked (stored) before they are published, so none is lost; ``mark_published`` records that one
  reached the topic, so a worker taking a parked session over re-publishes only the ones that never did.
- Counters are kept in the same transaction as the fact they count, so a crash never loses or doubles a count:
  ``park`` adds one to ``actions_deferred`` (and clears ``automated``); ``confirm`` (also called by
  ``apply_once``) adds one to ``actions_applied``. Callers must not ``bump`` those again for the same events.

Concurrency: SQLite runs in WAL mode with a busy timeout; every write transaction starts with ``BEGIN
IMMEDIATE`` so writers serialise (no read-then-write upgrade failures) while readers never block. PostgreSQL runs
at READ COMMITTED; transactions that change several rows lock the session row first (``SELECT ... FOR UPDATE``),
always in the order session -> deferral / applied action, so they cannot deadlock each other.

Durability: SQLite runs with ``synchronous=NORMAL`` (the WAL is fsynced at checkpoints, not at every commit).
A committed transaction survives a crash of the process (the worker killed with SIGKILL, an OOM kill): it is in
the WAL file the OS holds. A power loss or kernel crash may lose the last transactions (never corrupt the file):
leases and reservations then roll back a little, which the BPM's idempotency keys and the takeover path already
handle, but an operator answer accepted just before may be lost and has to be given again. ``FULL`` fsyncs
every commit: measured on this project's machine, a one-row commit took 0.4 ms median and 4 ms p99 with FULL
against 0.03 ms median and 0.1-0.6 ms p99 with NORMAL. Where power-loss durability matters, use PostgreSQL.

Times are stored as naive UTC (SQLite keeps no time zone) and returned as aware UTC datetimes.
"""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from types import TracebackType
from typing import Any, NamedTuple, Self, TypeVar, get_args

from pydantic import BaseModel
from sqlalchemy import (
    Boolean,
    Column,
    Connection,
    DateTime,
    Engine,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    delete,
    event,
    false,
    func,
    inspect,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import RowMapping

from critic.database import SQLITE_BUSY_TIMEOUT_S, open_engine
from schemas.actions import Action, parse_action
from schemas.decision import Decision, Deferral, OperatorDecision
from schemas.proposal import Proposal

T = TypeVar("T")

_ACTION_CLASSES: tuple[type, ...] = get_args(get_args(Action)[0])  # Action = Annotated[A | B | ..., discriminator]

_WRITE = "autopilot_write"  # execution option that makes the SQLite BEGIN an IMMEDIATE one
_PG_SCHEMA_LOCK = 0x5E55_1025  # advisory lock key: two processes creating the tables at once must not collide
_PG_STAGE_EVENT_LOCK = 0x5E55_1026  # advisory lock key of the stage-event compare-and-set
_ANSWER_ATTEMPTS = 3
ANSWER_AUDIT = "answer"  # the kind of a deferral answer's audit entry: its action is ``answer:<verdict>``


class SessionStatus(StrEnum):
    RUNNING = "running"
    PARKED = "parked"  # waiting for an operator's answer to a deferral
    COMPLETED = "completed"
    HANDED_OVER = "handed_over"  # a human took the case over
    FAILED = "failed"
    STOPPED = "stopped"  # stopped by a supervisor


ACTIVE_STATUSES = frozenset({SessionStatus.RUNNING, SessionStatus.PARKED})
TERMINAL_STATUSES = frozenset(SessionStatus) - ACTIVE_STATUSES


class DeferralStatus(StrEnum):
    PENDING = "pending"
    ANSWERED = "answered"
    STALE = "stale"  # superseded: the session parked again on a newer proposal
    CANCELLED = "cancelled"  # the session ended while the deferral was pending


class AnswerStatus(StrEnum):
    ACCEPTED = "accepted"
    STALE = "stale"
    UNKNOWN = "unknown"
    DUPLICATE = "duplicate"


class ApplyRefusedError(RuntimeError):
    """``apply_once`` will not start a side effect: the session is not running, or the worker lost its lease."""


class LeaseLostError(ApplyRefusedError):
    """The worker named in a fenced call (``apply_once``, ``park``, ``drop_reservation``) no longer holds a valid
    lease on the session: another worker took it over, or it ended. Nothing was changed."""


metadata = MetaData()

# Every datetime column holds naive UTC.
sessions_table = Table(
    "sessions",
    metadata,
    Column("session_id", String, primary_key=True),
    Column("case_id", String, nullable=False, index=True),
    Column("process_id", String, nullable=False),
    Column("status", String, nullable=False),
    Column("owner", String, nullable=True, index=True),
    Column("lease_until", DateTime(timezone=False), nullable=True),
    Column("step", Integer, nullable=False),
    Column("pending_proposal_id", String, nullable=True),
    Column("pending_etag", String, nullable=True),
    Column("pending_deferral_id", String, nullable=True),
    Column("actions_applied", Integer, nullable=False),
    Column("actions_deferred", Integer, nullable=False),
    Column("automated", Boolean, nullable=False),
    Column("started_at", DateTime(timezone=False), nullable=False, index=True),
    Column("updated_at", DateTime(timezone=False), nullable=False),
    Column("ended_at", DateTime(timezone=False), nullable=True),
    Column("outcome", Text, nullable=True),
    Index("ix_sessions_status_lease", "status", "lease_until"),  # expired_sessions
)

proposals_table = Table(
    "proposals",
    metadata,
    Column("proposal_id", String, primary_key=True),
    Column("session_id", String, nullable=False, index=True),
    Column("step", Integer, nullable=False),
    Column("payload", Text, nullable=False),
    Column("created_at", DateTime(timezone=False), nullable=False),
)

decisions_table = Table(
    "decisions",
    metadata,
    Column("decision_id", String, primary_key=True),
    Column("session_id", String, nullable=False, index=True),
    Column("proposal_id", String, nullable=False, index=True),
    Column("outcome", String, nullable=False),
    Column("slice", String, nullable=False, index=True),
    Column("stage", String, nullable=False),
    Column("tier", String, nullable=False),
    Column("score", Float, nullable=True),
    Column("threshold", Float, nullable=True),
    Column("audit", Boolean, nullable=False),
    Column("reason", Text, nullable=False),
    Column("decided_at", DateTime(timezone=False), nullable=False, index=True),
    Column("payload", Text, nullable=False),
)

deferrals_table = Table(
    "deferrals",
    metadata,
    Column("deferral_id", String, primary_key=True),
    Column("session_id", String, nullable=False, index=True),
    Column("proposal_id", String, nullable=False, unique=True),
    Column("state_etag", String, nullable=False),
    Column("queue", String, nullable=False),
    Column("status", String, nullable=False),
    Column("created_at", DateTime(timezone=False), nullable=False),
    Column("answered_at", DateTime(timezone=False), nullable=True),
    Column("answer", Text, nullable=True),
    Column("operator_id", String, nullable=True),
    Column("payload", Text, nullable=False),
    # True once the deferral reached the deferrals topic: a takeover re-publishes only the ones that never did.
    Column("published", Boolean, nullable=False, server_default=false()),
    Index("ix_deferrals_status_queue_created", "status", "queue", "created_at"),  # the operator inbox
)

applied_actions_table = Table(
    "applied_actions",
    metadata,
    Column("idempotency_key", String, primary_key=True),
    Column("session_id", String, nullable=False),
    Column("step", Integer, nullable=False),
    Column("action", Text, nullable=False),
    Column("reservation", String, nullable=False),  # whose reservation: only its holder may release it
    Column("reserved_at", DateTime(timezone=False), nullable=False),
    Column("applied_at", DateTime(timezone=False), nullable=True),  # NULL until confirmed
    Index("ix_applied_actions_session_applied", "session_id", "applied_at"),  # unconfirmed_keys
)

audit_log_table = Table(
    "audit_log",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("at", DateTime(timezone=False), nullable=False, index=True),
    Column("actor", String, nullable=False),
    Column("action", String, nullable=False),
    Column("target", String, nullable=False),
    Column("details", Text, nullable=False),
    Index("ix_audit_log_target", "target"),  # an answer's audit entry, found again by its deferral id
)


@dataclass(frozen=True, slots=True)
class SessionRow:
    session_id: str
    case_id: str
    process_id: str
    status: SessionStatus
    owner: str | None
    lease_until: datetime | None
    step: int
    pending_proposal_id: str | None
    pending_etag: str | None
    pending_deferral_id: str | None
    actions_applied: int
    actions_deferred: int
    automated: bool
    started_at: datetime
    updated_at: datetime
    ended_at: datetime | None
    outcome: dict[str, Any] | None


@dataclass(frozen=True, slots=True)
class DeferralRow:
    deferral: Deferral
    status: DeferralStatus
    created_at: datetime
    answered_at: datetime | None
    answer: OperatorDecision | None
    operator_id: str | None
    published: bool = False  # reached the deferrals topic (``mark_published``)


@dataclass(frozen=True, slots=True)
class AnswerResult:
    result: AnswerStatus
    reason: str
    deferral_id: str | None = None
    session_id: str | None = None
    deferral: Deferral | None = None  # set when the deferral exists: the proposal an accepted answer approves
    audit_id: int | None = None  # the answer's audit entry (accepted: written with it; duplicate: found)


@dataclass(frozen=True, slots=True)
class AuditNote:
    """An audit entry to write in the same transaction as the change it records (``answer``)."""

    actor: str
    action: str
    target: str
    details: Mapping[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class UnconfirmedAction:
    """A side effect that was reserved but never confirmed: re-send it with the same key, then ``confirm``."""

    idempotency_key: str
    session_id: str
    step: int
    action: Action
    reserved_at: datetime


@dataclass(frozen=True, slots=True)
class AuditEntry:
    id: int
    at: datetime
    actor: str
    action: str
    target: str
    details: dict[str, Any]


class QueueStats(NamedTuple):
    depth: int
    oldest_age_s: float


class _Conflict(Exception):
    """A compare-and-set lost a race inside a transaction: roll it back and try again."""


def _utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def _naive_utc(moment: datetime | None) -> datetime:
    if moment is None:
        return _utcnow()
    return moment if moment.tzinfo is None else moment.astimezone(UTC).replace(tzinfo=None)


def _aware(moment: datetime | None) -> datetime | None:
    return None if moment is None else moment.replace(tzinfo=UTC)


def _aware_req(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC)


def _text(name: str, value: object) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{name}: must be a non-empty string, got {value!r}")
    return value


def _count(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name}: must be an integer >= 0, got {value!r}")
    return value


def _seconds(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name}: must be a finite number of seconds > 0, got {value!r}")
    return float(value)


def _limit(value: int | None) -> int | None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ValueError(f"limit: must be an integer >= 1 or None, got {value!r}")
    return value


def _json(name: str, value: Mapping[str, Any] | None) -> str:
    if value is None:
        value = {}
    if not isinstance(value, Mapping):
        raise ValueError(f"{name}: must be a mapping, got {type(value).__name__}")
    try:
        return json.dumps(dict(value), sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{name}: not JSON-serialisable: {error}") from None


def _target(value: object) -> str:
    if not isinstance(value, str):  # may be empty: some actions (a global kill switch) have no target
        raise ValueError(f"target: must be a string, got {value!r}")
    return value


def _status(value: object) -> SessionStatus:
    if isinstance(value, str) and value in SessionStatus.__members__.values():
        return SessionStatus(value)
    allowed = ", ".join(s.value for s in SessionStatus)
    raise ValueError(f"status: {value!r} is not one of {allowed}")


def _session_row(row: RowMapping) -> SessionRow:
    return SessionRow(
        session_id=row["session_id"],
        case_id=row["case_id"],
        process_id=row["process_id"],
        status=SessionStatus(row["status"]),
        owner=row["owner"],
        lease_until=_aware(row["lease_until"]),
        step=row["step"],
        pending_proposal_id=row["pending_proposal_id"],
        pending_etag=row["pending_etag"],
        pending_deferral_id=row["pending_deferral_id"],
        actions_applied=row["actions_applied"],
        actions_deferred=row["actions_deferred"],
        automated=bool(row["automated"]),
        started_at=_aware_req(row["started_at"]),
        updated_at=_aware_req(row["updated_at"]),
        ended_at=_aware(row["ended_at"]),
        outcome=None if row["outcome"] is None else json.loads(row["outcome"]),
    )


def _deferral_row(row: RowMapping) -> DeferralRow:
    return DeferralRow(
        deferral=Deferral.model_validate_json(row["payload"]),
        status=DeferralStatus(row["status"]),
        created_at=_aware_req(row["created_at"]),
        answered_at=_aware(row["answered_at"]),
        answer=None if row["answer"] is None else OperatorDecision.model_validate_json(row["answer"]),
        operator_id=row["operator_id"],
        published=bool(row["published"]),
    )


def _audit_entry(row: RowMapping) -> AuditEntry:
    return AuditEntry(
        id=row["id"],
        at=_aware_req(row["at"]),
        actor=row["actor"],
        action=row["action"],
        target=row["target"],
        details=json.loads(row["details"]),
    )


def _same_answer(stored: str, answer: BaseModel, *, also_ignore: frozenset[str] = frozenset()) -> bool:
    """Whether ``answer`` says what the stored answer (JSON of the same model) says. A redelivered message is
    byte-identical, but a double click is a second answer a moment later: compare what it says, not when it was
    made (nor ``also_ignore``: free text the caller does not count as content)."""
    ignore = {"schema_version", "decided_at", *also_ignore}
    return type(answer).model_validate_json(stored).model_dump(exclude=ignore) == answer.model_dump(exclude=ignore)


def _make_engine(url: str) -> tuple[Engine, str]:
    """Build the engine (``critic.database``, shared with the feedback store) with this store's SQLite
    transactions; return it with the URL as it may be shown (password hidden)."""
    engine, shown = open_engine(url)
    if engine.dialect.name == "sqlite":
        _sqlite_transactions(engine)
    return engine, shown


def _sqlite_transactions(engine: Engine) -> None:
    """WAL + busy timeout, and transactions that SQLAlchemy begins explicitly (IMMEDIATE for writers).

    pysqlite's own transaction handling begins a transaction only at the first write, so the reads of a
    read-check-write transaction would run outside it; SQLAlchemy's documented recipe turns that off and emits
    BEGIN itself."""

    @event.listens_for(engine, "connect")
    def _connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {int(SQLITE_BUSY_TIMEOUT_S * 1000)}")
        cursor.execute("PRAGMA journal_mode = WAL")  # persistent in the file; readers never block writers
        # Per connection: with WAL, NORMAL survives a process crash; see the module docstring for power loss.
        cursor.execute("PRAGMA synchronous = NORMAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(conn: Connection) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get(_WRITE) else "BEGIN")


# Stage changes every process applies to its own AutonomyStages (``service.runtime.stage_sync``): supervisor overrides,
# unpins, the kill switch, and automatic demotions. Append-only; readers follow it by id.
stage_events_table = Table(
    "stage_events",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("at", DateTime(timezone=False), nullable=False),
    Column("origin", String, nullable=False),  # the process that wrote it (it applied the change itself)
    Column("kind", String, nullable=False),  # override | unpin | kill_switch | demotion
    Column("process_id", String, nullable=True),
    Column("action_type", String, nullable=True),
    Column("stage", String, nullable=True),
    Column("flag", Boolean, nullable=False),  # override: pin; kill_switch: on
    Column("actor", String, nullable=False),
    Column("reason", Text, nullable=False),
)


# Copilot proposals the API issued (``/copilot/suggest``): feedback is accepted only for one of these, from the
# caller it was issued to, once (decision 0009). Pruned after the retention the API sets.
issued_proposals_table = Table(
    "issued_proposals",
    metadata,
    Column("proposal_id", String, primary_key=True),
    Column("issued_to", String, nullable=False),
    Column("process_id", String, nullable=False),
    Column("state_etag", String, nullable=False),
    Column("issued_at", DateTime(timezone=False), nullable=False, index=True),
    Column("feedback_digest", String, nullable=True),  # what the feedback said, once given
    Column("payload", Text, nullable=False),
)


class IssuedStatus(StrEnum):
    CLAIMED = "claimed"  # first feedback for the proposal: recorded
    REPEATED = "repeated"  # the same feedback again (a retry): harmless
    UNKNOWN = "unknown"  # never issued, or expired and pruned
    OTHER_CALLER = "other_caller"  # issued to someone else
    DIFFERENT = "different"  # the proposal sent is not the one issued under its id
    USED = "used"  # feedback with other content was given already


@dataclass(frozen=True, slots=True)
class IssuedClaim:
    status: IssuedStatus
    proposal: Proposal | None = None
    issued_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class StageEventRow:
    id: int
    at: datetime
    origin: str
    kind: str
    process_id: str | None
    action_type: str | None
    stage: str | None
    flag: bool
    actor: str
    reason: str


# One row per worker incarnation, upserted by the worker itself (``service.runtime.worker``): what the supervisor's
# overview and the readiness probe read, so workers in other processes and pods show like local ones.
worker_heartbeats_table = Table(
    "worker_heartbeats",
    metadata,
    Column("worker_id", String, primary_key=True),
    Column("started_at", DateTime(timezone=False), nullable=False),
    Column("last_seen", DateTime(timezone=False), nullable=False, index=True),
    Column("interval_s", Float, nullable=False),  # the worker writes at least this often while it runs
    Column("stopped_at", DateTime(timezone=False), nullable=True),  # set when it closed cleanly
    Column("critic_version", String, nullable=True),  # the champion it decides with
    Column("stage_event_id", Integer, nullable=False),  # the stage-event log applied up to here
    Column("kill_switch", Boolean, nullable=False),
    Column("sessions", Integer, nullable=False),  # held in memory
    Column("decisions", Text, nullable=False),  # JSON {outcome: count} since it started
    Column("latency", Text, nullable=False),  # JSON decision latency summary (ms): count, p50, p99, max
)


@dataclass(frozen=True, slots=True)
class WorkerHeartbeat:
    """A worker's latest report of itself (``RuntimeStore.heartbeat``)."""

    worker_id: str
    started_at: datetime
    last_seen: datetime
    interval_s: float
    critic_version: str | None
    stage_event_id: int
    kill_switch: bool
    sessions: int
    decisions: dict[str, int]
    decision_latency_ms: dict[str, float | int | None]
    stopped_at: datetime | None = None

    def alive(self, now: datetime | None = None, missed: float = 3.0) -> bool:
        """Running: not stopped, and seen within ``missed`` of its own heartbeat intervals."""
        at = now or datetime.now(UTC)
        return self.stopped_at is None and (at - self.last_seen).total_seconds() <= missed * self.interval_s


class RuntimeStore:
    """Sessions, proposals, decisions, deferrals, applied actions, the audit log, the replicated stage-event log
    and the workers' heartbeats in one database.

    ``url`` is any SQLAlchemy URL of SQLite (a file; created with its folder if missing) or PostgreSQL
    (``postgresql+psycopg://...``; a bare ``postgresql://`` uses psycopg 3 too). The tables are created if
    missing. Thread-safe: each call uses its own connection from the engine's pool; several processes may share
    one database."""

    def __init__(self, url: str) -> None:
        self.engine, self.url = _make_engine(url)
        self._writer = self.engine.execution_options(**{_WRITE: True})
        self._postgres = self.engine.dialect.name == "postgresql"
        self._create_tables(metadata, self._migrate)

    def _create_tables(self, tables: MetaData, migrate: Callable[[Connection], None] | None = None) -> None:
        """Create the missing tables of ``tables`` (the store's, or another module's beside them: the QA queue),
        then ``migrate``, in one transaction that two processes creating tables at once cannot both enter."""
        with self._write() as conn:
            if self._postgres:
                conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_SCHEMA_LOCK})
            tables.create_all(conn)
            if migrate is not None:
                migrate(conn)

    def _migrate(self, conn: Connection) -> None:
        """Add the columns newer versions of this module need to tables an older one created (create_all adds
        no columns). Rows from before know no better than "not published": a takeover re-publishes them, which
        readers dedupe on the deferral id."""
        columns = {column["name"] for column in inspect(conn).get_columns("deferrals")}
        if "published" not in columns:
            default = "false" if self._postgres else "0"
            conn.execute(text(f"ALTER TABLE deferrals ADD COLUMN published BOOLEAN NOT NULL DEFAULT {default}"))
        conn.execute(text("CREATE INDEX IF NOT EXISTS ix_audit_log_target ON audit_log (target)"))

    def __repr__(self) -> str:
        return f"RuntimeStore({self.url!r})"

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self.engine.dispose()

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        with self.engine.connect() as conn:
            yield conn

    @contextmanager
    def _write(self) -> Iterator[Connection]:
        with self._writer.begin() as conn:
            yield conn

    def _insert_ignore(self, conn: Connection, table: Table, key: str, row: dict[str, Any]) -> bool:
        """Insert unless the key exists; True if inserted. ON CONFLICT also covers a concurrent inserter.

        RETURNING tells whether a row went in: psycopg reports no rowcount (-1) for such an INSERT."""
        dialect = postgresql if self._postgres else sqlite
        statement = dialect.insert(table).values(**row).on_conflict_do_nothing(index_elements=[key])
        return conn.execute(statement.returning(table.c[key])).first() is not None

    @staticmethod
    def _lock_session(conn: Connection, session_id: str) -> RowMapping | None:
        query = select(sessions_table).where(sessions_table.c.session_id == session_id).with_for_update()
        return conn.execute(query).mappings().one_or_none()

    @staticmethod
    def _check_lease(session: RowMapping, worker_id: str, at: datetime) -> None:
        """Fencing: raise LeaseLostError unless ``worker_id`` holds a valid lease on the (locked) session row."""
        _text("worker_id", worker_id)
        if session["owner"] != worker_id or session["lease_until"] is None or session["lease_until"] < at:
            raise LeaseLostError(f"worker {worker_id!r} holds no valid lease on session {session['session_id']!r}")

    # ---- sessions -------------------------------------------------------------------------------------------

    def create_session(self, session_id: str, case_id: str, process_id: str) -> bool:
        """Create a running, unowned session; False (and nothing changes) if the id exists."""
        _text("session_id", session_id)
        _text("case_id", case_id)
        _text("process_id", process_id)
        now = _utcnow()
        row = {
            "session_id": session_id,
            "case_id": case_id,
            "process_id": process_id,
            "status": SessionStatus.RUNNING.value,
            "owner": None,
            "lease_until": None,
            "step": 0,
            "actions_applied": 0,
            "actions_deferred": 0,
            "automated": True,
            "started_at": now,
            "updated_at": now,
        }
        with self._write() as conn:
            return self._insert_ignore(conn, sessions_table, "session_id", row)

    def get_session(self, session_id: str) -> SessionRow | None:
        with self._read() as conn:
            query = select(sessions_table).where(sessions_table.c.session_id == session_id)
            row = conn.execute(query).mappings().one_or_none()
        return None if row is None else _session_row(row)

    def sessions(self, status: SessionStatus | str | None = None, limit: int | None = None) -> list[SessionRow]:
        """Sessions, newest first, optionally of one status."""
        query = select(sessions_table).order_by(sessions_table.c.started_at.desc(), sessions_table.c.session_id)
        if status is not None:
            query = query.where(sessions_table.c.status == _status(status).value)
        if _limit(limit) is not None:
            query = query.limit(limit)
        with self._read() as conn:
            return [_session_row(row) for row in conn.execute(query).mappings()]

    def counts_by_status(self) -> dict[str, int]:
        """Number of sessions per status; every status is present (0 if none)."""
        query = select(sessions_table.c.status, func.count()).group_by(sessions_table.c.status)
        counts = {status.value: 0 for status in SessionStatus}
        with self._read() as conn:
            for status, count in conn.execute(query):
                counts[status] = int(count)
        return counts

    def automation_counts(self) -> tuple[int, int]:
        """(fully automated, ended) sessions: ended ones (any terminal status) and, of those, the completed ones
        that never needed a human step (``automated``)."""
        s = sessions_table.c
        query = select(
            func.count(),
            func.count().filter((s.status == SessionStatus.COMPLETED.value) & s.automated.is_(True)),
        ).where(s.status.in_([status.value for status in TERMINAL_STATUSES]))
        with self._read() as conn:
            ended, automated = conn.execute(query).one()
        return int(automated or 0), int(ended or 0)

    def finish(self, session_id: str, status: SessionStatus | str, outcome: Mapping[str, Any] | None = None) -> bool:
        """End a session with a terminal status and outcome; drop its owner and pending step and cancel its
        pending deferrals. False if the session is unknown or already ended (the first end wins, so a worker
        finishing a session a supervisor just stopped does not overwrite ``stopped``)."""
        final = _status(status)
        if final not in TERMINAL_STATUSES:
            allowed = ", ".join(sorted(s.value for s in TERMINAL_STATUSES))
            raise ValueError(f"status: {final.value!r} does not end a session (one of {allowed})")
        body = _json("outcome", outcome)
        now = _utcnow()
        with self._write() as conn:
            session = self._lock_session(conn, session_id)
            if session is None or session["status"] in TERMINAL_STATUSES:
                return False
            conn.execute(
                update(sessions_table)
                .where(sessions_table.c.session_id == session_id)
                .values(
                    status=final.value,
                    outcome=body,
                    ended_at=now,
                    updated_at=now,
                    owner=None,
                    lease_until=None,
                    pending_proposal_id=None,
                    pending_etag=None,
                    pending_deferral_id=None,
                )
            )
            conn.execute(
                update(deferrals_table)
                .where(deferrals_table.c.session_id == session_id)
                .where(deferrals_table.c.status == DeferralStatus.PENDING.value)
                .values(status=DeferralStatus.CANCELLED.value)
            )
        return True

    def bump(
        self,
        session_id: str,
        applied: int = 0,
        deferred: int = 0,
        automated: bool | None = None,
        step: int | None = None,
    ) -> bool:
        """Add to the counters, set the step, and record a human step with ``automated=False`` (sticky: the flag
        means "no human step so far", so True or None leave it). False if the session is unknown.

        ``park`` and ``confirm`` already count their own events; this is for anything else."""
        values: dict[str, Any] = {"updated_at": _utcnow()}
        if _count("applied", applied):
            values["actions_applied"] = sessions_table.c.actions_applied + applied
        if _count("deferred", deferred):
            values["actions_deferred"] = sessions_table.c.actions_deferred + deferred
        if automated is not None and not isinstance(automated, bool):
            raise ValueError(f"automated: must be a bool or None, got {automated!r}")
        if automated is False:
            values["automated"] = False
        if step is not None:
            values["step"] = _count("step", step)
        with self._write() as conn:
            result = conn.execute(
                update(sessions_table).where(sessions_table.c.session_id == session_id).values(**values)
            )
        return result.rowcount == 1

    # ---- leases ---------------------------------------------------------------------------------------------

    def claim(self, session_id: str, worker_id: str, lease_s: float, now: datetime | None = None) -> bool:
        """Take or extend ownership of an active session: succeeds if it is unowned, owned by ``worker_id``, or
        its lease expired (``lease_until < now``). One compare-and-set UPDATE, so two workers never both win."""
        _text("worker_id", worker_id)
        at = _naive_utc(now)
        until = at + timedelta(seconds=_seconds("lease_s", lease_s))
        s = sessions_table.c
        statement = (
            update(sessions_table)
            .where(s.session_id == session_id)
            .where(s.status.in_([status.value for status in ACTIVE_STATUSES]))
            .where(or_(s.owner.is_(None), s.owner == worker_id, s.lease_until.is_(None), s.lease_until < at))
            .values(owner=worker_id, lease_until=until, updated_at=at)
        )
        with self._write() as conn:
            return conn.execute(statement).rowcount == 1

    def renew(self, worker_id: str, lease_s: float, now: datetime | None = None) -> int:
        """Extend the lease of every active session ``worker_id`` still owns; return how many. A session another
        worker took over is no longer owned, so it is not renewed (compare with ``owned_sessions``)."""
        _text("worker_id", worker_id)
        at = _naive_utc(now)
        until = at + timedelta(seconds=_seconds("lease_s", lease_s))
        s = sessions_table.c
        statement = (
            update(sessions_table)
            .where(s.owner == worker_id)
            .where(s.status.in_([status.value for status in ACTIVE_STATUSES]))
            .values(lease_until=until)
        )
        with self._write() as conn:
            return int(conn.execute(statement).rowcount)

    def release(self, session_id: str, worker_id: str) -> bool:
        """Give a session up (e.g. on shutdown) so another worker may claim it at once; False if not owned."""
        s = sessions_table.c
        statement = (
            update(sessions_table)
            .where(s.session_id == session_id, s.owner == worker_id)
            .values(owner=None, lease_until=None, updated_at=_utcnow())
        )
        with self._write() as conn:
            return conn.execute(statement).rowcount == 1

    def owned_sessions(
        self, worker_id: str, now: datetime | None = None, *, status: SessionStatus | str | None = None
    ) -> list[str]:
        """Active sessions on which ``worker_id`` holds a valid lease; with ``status``, only running or only parked
        ones."""
        wanted = ACTIVE_STATUSES if status is None else {_status(status)}
        if not wanted <= ACTIVE_STATUSES:
            raise ValueError(f"status: {status!r} is not an active status (running or parked)")
        s = sessions_table.c
        query = (
            select(s.session_id)
            .where(s.owner == worker_id, s.lease_until >= _naive_utc(now))
            .where(s.status.in_(sorted(status.value for status in wanted)))
            .order_by(s.session_id)
        )
        with self._read() as conn:
            return list(conn.execute(query).scalars())

    def expired_sessions(
        self, now: datetime | None = None, limit: int | None = None, *, include_parked: bool = False
    ) -> list[str]:
        """Running sessions nobody holds a valid lease on (a dead worker's, or released ones), longest expired
        first: for another worker to ``claim``.

        Parked sessions are left out by default: nothing can happen to them until an operator answers, and
        ``answer`` makes them running (and so listed here if their owner is gone). ``include_parked`` lists them
        too, after every running one: a worker that adopts them re-publishes a deferral that never reached the
        topic and, since it then owns the session, resumes it as soon as the answer arrives instead of at the
        next scan."""
        if not isinstance(include_parked, bool):
            raise ValueError(f"include_parked: must be a bool, got {include_parked!r}")
        at = _naive_utc(now)
        s = sessions_table.c
        statuses = [SessionStatus.RUNNING.value] + ([SessionStatus.PARKED.value] if include_parked else [])
        query = (
            select(s.session_id)
            .where(s.status.in_(statuses))
            .where(or_(s.owner.is_(None), s.lease_until.is_(None), s.lease_until < at))
            # Running ones first (they have work to do; a parked one waits for its operator anyway), then the
            # released ones (no lease at all), then the longest expired.
            .order_by(s.status == SessionStatus.PARKED.value, s.lease_until.is_not(None), s.lease_until, s.session_id)
        )
        if _limit(limit) is not None:
            query = query.limit(limit)
        with self._read() as conn:
            return list(conn.execute(query).scalars())

    # ---- proposals and decisions ----------------------------------------------------------------------------

    def record_proposal(self, proposal: Proposal) -> bool:
        """Store a proposal; False if its id is stored already (a redelivery)."""
        if not isinstance(proposal, Proposal):
            raise ValueError(f"proposal: expected a Proposal, got {type(proposal).__name__}")
        with self._write() as conn:
            return self._record_proposal(conn, proposal)

    def _record_proposal(self, conn: Connection, proposal: Proposal) -> bool:
        row = {
            "proposal_id": proposal.proposal_id,
            "session_id": proposal.session_id,
            "step": proposal.step,
            "payload": proposal.model_dump_json(),
            "created_at": _utcnow(),
        }
        return self._insert_ignore(conn, proposals_table, "proposal_id", row)

    def get_proposal(self, proposal_id: str) -> Proposal | None:
        query = select(proposals_table.c.payload).where(proposals_table.c.proposal_id == proposal_id)
        with self._read() as conn:
            payload = conn.execute(query).scalar_one_or_none()
        return None if payload is None else Proposal.model_validate_json(payload)

    def record_decision(self, decision: Decision) -> bool:
        """Store a router decision; False if its id is stored already (a redelivery)."""
        if not isinstance(decision, Decision):
            raise ValueError(f"decision: expected a Decision, got {type(decision).__name__}")
        with self._write() as conn:
            return self._record_decision(conn, decision)

    def _record_decision(self, conn: Connection, decision: Decision) -> bool:
        row = {
            "decision_id": decision.decision_id,
            "session_id": decision.session_id,
            "proposal_id": decision.proposal_id,
            "outcome": decision.outcome.value,
            "slice": str(decision.slice),
            "stage": decision.stage.value,
            "tier": decision.tier.value,
            "score": decision.score,
            "threshold": decision.threshold,
            "audit": decision.audit,
            "reason": decision.reason,
            "decided_at": _naive_utc(decision.decided_at),
            "payload": decision.model_dump_json(),
        }
        return self._insert_ignore(conn, decisions_table, "decision_id", row)

    def decisions(self, session_id: str) -> list[Decision]:
        """A session's decisions in the order they were made."""
        d = decisions_table.c
        query = select(d.payload).where(d.session_id == session_id).order_by(d.decided_at, d.decision_id)
        with self._read() as conn:
            return [Decision.model_validate_json(payload) for payload in conn.execute(query).scalars()]

    def decision_counts(self, since: datetime | None = None) -> dict[str, int]:
        """Decisions per outcome made at or after ``since`` (all of them without it), by every worker."""
        d = decisions_table.c
        query = select(d.outcome, func.count()).group_by(d.outcome)
        if since is not None:
            query = query.where(d.decided_at >= _naive_utc(since))
        with self._read() as conn:
            return {str(outcome): int(n) for outcome, n in conn.execute(query)}

    # ---- deferrals ------------------------------------------------------------------------------------------

    def park(self, session_id: str, deferral: Deferral, *, worker_id: str | None = None) -> bool:
        """Park an active session on ``deferral``: in one transaction store the deferral (pending, not yet
        published), its proposal and decision (if new), set the session parked at the proposal's step with the
        pending proposal id, etag and deferral id, count it (``actions_deferred`` + 1) and clear ``automated``.
        A deferral pending from an earlier park of the same session becomes stale (the session moved on).

        Returns False and changes nothing if this deferral is stored already (a redelivery: same deferral id and
        proposal id) or the session has ended. Raises ValueError for an unknown session or a deferral id /
        proposal id already used by another deferral, and with ``worker_id`` LeaseLostError when that worker
        holds no valid lease on the session (fencing: a worker presumed dead must not park a session its
        successor runs)."""
        if not isinstance(deferral, Deferral):
            raise ValueError(f"deferral: expected a Deferral, got {type(deferral).__name__}")
        _text("session_id", session_id)
        if deferral.session_id != session_id or deferral.proposal.session_id != session_id:
            raise ValueError(f"deferral.session_id: the deferral belongs to another session than {session_id!r}")
        proposal = deferral.proposal
        now = _utcnow()
        d = deferrals_table.c
        with self._write() as conn:
            session = self._lock_session(conn, session_id)
            if session is None:
                raise ValueError(f"session_id: no session {session_id!r}")
            query = select(d.deferral_id, d.proposal_id).where(
                or_(d.deferral_id == deferral.deferral_id, d.proposal_id == proposal.proposal_id)
            )
            existing = conn.execute(query).all()
            if any(row == (deferral.deferral_id, proposal.proposal_id) for row in existing):
                return False
            if existing:
                raise ValueError(
                    f"deferral.deferral_id: {deferral.deferral_id!r} or its proposal {proposal.proposal_id!r} "
                    "is already stored with another deferral"
                )
            if session["status"] not in ACTIVE_STATUSES:
                return False
            if worker_id is not None:
                self._check_lease(session, worker_id, now)
            if session["pending_deferral_id"] is not None:
                conn.execute(
                    update(deferrals_table)
                    .where(d.deferral_id == session["pending_deferral_id"], d.status == DeferralStatus.PENDING.value)
                    .values(status=DeferralStatus.STALE.value)
                )
            self._record_proposal(conn, proposal)
            self._record_decision(conn, deferral.decision)
            self._insert_ignore(
                conn,
                deferrals_table,
                "deferral_id",
                {
                    "deferral_id": deferral.deferral_id,
                    "session_id": session_id,
                    "proposal_id": proposal.proposal_id,
                    "state_etag": proposal.state_etag,
                    "queue": deferral.queue,
                    "status": DeferralStatus.PENDING.value,
                    "created_at": _naive_utc(deferral.created_at),
                    "payload": deferral.model_dump_json(),
                    "published": False,
                },
            )
            conn.execute(
                update(sessions_table)
                .where(sessions_table.c.session_id == session_id)
                .values(
                    status=SessionStatus.PARKED.value,
                    pending_proposal_id=proposal.proposal_id,
                    pending_etag=proposal.state_etag,
                    pending_deferral_id=deferral.deferral_id,
                    actions_deferred=sessions_table.c.actions_deferred + 1,
                    automated=False,
                    step=proposal.step,
                    updated_at=now,
                )
            )
        return True

    def answer(
        self, decision: OperatorDecision, now: datetime | None = None, *, audit: AuditNote | None = None
    ) -> AnswerResult:
        """Apply an operator's answer, at most once per deferral.

        ``audit``: the answer's audit entry, written in the same transaction as an accepted answer (so no crash
        separates them); a duplicate finds it again (``audit_id``). Audit entries of answers have the deferral id
        as their target and an action starting with ``answer:``.

        - ``accepted``: a pending deferral exists for the proposal, and the session is parked on exactly that
          proposal and state etag. The deferral is marked answered (with the answer) and the session is running
          again with its pending fields cleared, in one transaction.
        - ``duplicate``: the deferral was answered already with the same content (a redelivery): harmless.
        - ``stale``: the deferral is no longer pending (answered differently, superseded or cancelled), or the
          answer names another state etag than the one the session is parked on.
        - ``unknown``: no deferral for that proposal in that session.
        Of concurrent answers for one deferral exactly one is accepted."""
        if not isinstance(decision, OperatorDecision):
            raise ValueError(f"decision: expected an OperatorDecision, got {type(decision).__name__}")
        audit_row = self._answer_audit_row(audit, ANSWER_AUDIT)
        at = _naive_utc(now)
        for _ in range(_ANSWER_ATTEMPTS):
            try:
                with self._write() as conn:
                    result = self._answer(conn, decision, at)
                    if result.deferral_id is None:
                        return result
                    audit_id = self._audit_answer(conn, result.result, result.deferral_id, audit_row, ANSWER_AUDIT)
                    return replace(result, audit_id=audit_id)
            except _Conflict:
                continue  # lost a race: the next attempt sees the winner's answer
        raise RuntimeError(f"answer: proposal {decision.proposal_id!r} kept changing; gave up")

    def _answer(self, conn: Connection, decision: OperatorDecision, at: datetime) -> AnswerResult:
        d = deferrals_table.c
        by_proposal = select(deferrals_table).where(d.proposal_id == decision.proposal_id)
        found = conn.execute(by_proposal).mappings().one_or_none()
        if found is None or found["session_id"] != decision.session_id:
            return AnswerResult(AnswerStatus.UNKNOWN, f"no deferral for proposal {decision.proposal_id!r}")
        # Lock in the store's order (session, then deferral) and read the deferral again under the lock.
        session = self._lock_session(conn, found["session_id"])
        row = conn.execute(by_proposal.with_for_update()).mappings().one()
        info: dict[str, Any] = {
            "deferral_id": row["deferral_id"],
            "session_id": row["session_id"],
            "deferral": Deferral.model_validate_json(row["payload"]),
        }
        status = DeferralStatus(row["status"])
        if status == DeferralStatus.ANSWERED:
            if _same_answer(row["answer"], decision):
                return AnswerResult(AnswerStatus.DUPLICATE, "already answered with the same answer", **info)
            return AnswerResult(AnswerStatus.STALE, "already answered differently", **info)
        if status != DeferralStatus.PENDING:
            return AnswerResult(AnswerStatus.STALE, f"the deferral is {status.value}", **info)
        if decision.state_etag != row["state_etag"]:
            return AnswerResult(AnswerStatus.STALE, "the answer names another state etag", **info)
        if session is None or (
            session["status"] != SessionStatus.PARKED.value
            or session["pending_proposal_id"] != decision.proposal_id
            or session["pending_etag"] != decision.state_etag
        ):
            return AnswerResult(AnswerStatus.STALE, "the session is not parked on this proposal and state", **info)
        answered = conn.execute(
            update(deferrals_table)
            .where(d.deferral_id == row["deferral_id"], d.status == DeferralStatus.PENDING.value)
            .values(
                status=DeferralStatus.ANSWERED.value,
                answer=decision.model_dump_json(),
                answered_at=at,
                operator_id=decision.operator_id,
            )
        )
        s = sessions_table.c
        resumed = conn.execute(
            update(sessions_table)
            .where(s.session_id == row["session_id"], s.status == SessionStatus.PARKED.value)
            .where(s.pending_proposal_id == decision.proposal_id, s.pending_etag == decision.state_etag)
            .values(
                status=SessionStatus.RUNNING.value,
                pending_proposal_id=None,
                pending_etag=None,
                pending_deferral_id=None,
                updated_at=at,
            )
        )
        if answered.rowcount != 1 or resumed.rowcount != 1:
            raise _Conflict  # only reachable without row locks; rolls the transaction back
        return AnswerResult(AnswerStatus.ACCEPTED, "accepted", **info)

    def recorded_answer(self, decision: OperatorDecision) -> AnswerResult:
        """What the store holds for an announced answer, changing nothing (a worker reading an announcement on
        ``operator-decisions``): ``accepted`` if the deferral was answered with exactly this answer, ``stale`` if
        it was answered differently or is no longer pending, ``unknown`` if there is no such deferral in that
        session or no answer was recorded for it (an announcement nobody recorded is never acted on)."""
        if not isinstance(decision, OperatorDecision):
            raise ValueError(f"decision: expected an OperatorDecision, got {type(decision).__name__}")
        d = deferrals_table.c
        with self._read() as conn:
            row = conn.execute(select(deferrals_table).where(d.proposal_id == decision.proposal_id)).mappings().first()
        if row is None or row["session_id"] != decision.session_id:
            return AnswerResult(AnswerStatus.UNKNOWN, f"no deferral for proposal {decision.proposal_id!r}")
        info: dict[str, Any] = {
            "deferral_id": row["deferral_id"],
            "session_id": row["session_id"],
            "deferral": Deferral.model_validate_json(row["payload"]),
        }
        status = DeferralStatus(row["status"])
        if status == DeferralStatus.PENDING:
            return AnswerResult(AnswerStatus.UNKNOWN, "no answer was recorded for this deferral", **info)
        if status != DeferralStatus.ANSWERED:
            return AnswerResult(AnswerStatus.STALE, f"the deferral is {status.value}", **info)
        if not _same_answer(row["answer"], decision):
            return AnswerResult(AnswerStatus.STALE, "the deferral was answered differently", **info)
        return AnswerResult(AnswerStatus.ACCEPTED, "the recorded answer", **info)

    def get_deferral(self, deferral_id: str) -> DeferralRow | None:
        query = select(deferrals_table).where(deferrals_table.c.deferral_id == deferral_id)
        with self._read() as conn:
            row = conn.execute(query).mappings().one_or_none()
        return None if row is None else _deferral_row(row)

    def mark_published(self, deferral_id: str) -> bool:
        """Record that the deferral reached the deferrals topic (the broker acknowledged it); False if the
        deferral is unknown or marked already. Not fenced: it states a fact about the topic, whoever sent it."""
        d = deferrals_table.c
        statement = (
            update(deferrals_table).where(d.deferral_id == deferral_id, d.published.is_(False)).values(published=True)
        )
        with self._write() as conn:
            return conn.execute(statement).rowcount == 1

    def session_deferrals(self, session_id: str) -> list[DeferralRow]:
        """A session's deferrals, oldest first, whatever their status."""
        d = deferrals_table.c
        query = select(deferrals_table).where(d.session_id == session_id).order_by(d.created_at, d.deferral_id)
        with self._read() as conn:
            return [_deferral_row(row) for row in conn.execute(query).mappings()]

    def pending_deferrals(self, queues: Sequence[str] | None = None, limit: int = 100) -> list[Deferral]:
        """Pending deferrals, oldest first, of the given queues (all queues if None)."""
        if isinstance(queues, str):
            raise ValueError("queues: must be a sequence of queue names, not one string")
        d = deferrals_table.c
        query = select(d.payload).where(d.status == DeferralStatus.PENDING.value)
        if queues is not None:
            if not queues:
                return []
            query = query.where(d.queue.in_(list(queues)))
        query = query.order_by(d.created_at, d.deferral_id).limit(_limit(limit))
        with self._read() as conn:
            return [Deferral.model_validate_json(payload) for payload in conn.execute(query).scalars()]

    def audit_outcomes(self, since: datetime | None = None) -> dict[str, tuple[int, int]]:
        """Per slice (``process/action_type``): (accepted, answered) audited steps, i.e. would-execute steps
        deferred at random whose deferral a human answered, decided at or after ``since``. Read from the store, so
        every process (an API without worker threads included) sees what all workers audited."""
        c, d = decisions_table.c, deferrals_table.c
        accepted = d.answer.like('%"verdict":"accept"%')
        query = (
            select(c.slice, func.count(), func.count().filter(accepted))
            .select_from(decisions_table.join(deferrals_table, d.proposal_id == c.proposal_id))
            .where(c.audit.is_(True), d.status == DeferralStatus.ANSWERED.value)
            .group_by(c.slice)
        )
        if since is not None:
            query = query.where(c.decided_at >= _naive_utc(since))
        with self._read() as conn:
            return {str(name): (int(ok or 0), int(n)) for name, n, ok in conn.execute(query)}

    def deferral_stats(self, now: datetime | None = None) -> dict[str, QueueStats]:
        """Per queue with pending deferrals: how many, and the age in seconds of the oldest one."""
        at = _naive_utc(now)
        d = deferrals_table.c
        query = (
            select(d.queue, func.count(), func.min(d.created_at))
            .where(d.status == DeferralStatus.PENDING.value)
            .group_by(d.queue)
        )
        with self._read() as conn:
            rows = conn.execute(query).all()
        return {
            queue: QueueStats(int(depth), max(0.0, (at - oldest).total_seconds()))
            for queue, depth, oldest in sorted(rows)
        }

    # ---- exactly-once side effects --------------------------------------------------------------------------

    def apply_once(
        self,
        idempotency_key: str,
        session_id: str,
        step: int,
        action: Action,
        apply: Callable[[], T],
        *,
        worker_id: str | None = None,
        proposal: Proposal | None = None,
        decision: Decision | None = None,
    ) -> tuple[bool, T | None]:
        """Run the side effect ``apply`` at most once for ``idempotency_key``; see the module docstring.

        1. Reserve the key (one transaction). If it is reserved or confirmed already: ``(False, None)`` without
           calling ``apply`` (another caller applied it, or is applying it now). Raises ApplyRefusedError if the
           session is not running or, with ``worker_id``, LeaseLostError (a subclass) if that worker does not hold
           a valid lease on it (fencing); ValueError if the session is unknown. ``proposal`` and ``decision`` (if
           given and new) are stored in the same transaction, as ``record_proposal`` / ``record_decision`` would:
           one commit instead of three per executed step, and nothing is stored when the call is refused.
        2. Call ``apply``. If it raises, release the reservation so a retry with the same key may apply it, and
           re-raise.
        3. Confirm the key (``applied_at`` set, ``actions_applied`` + 1) and return ``(True, result)``.
        A crash (or a database error in 3) between 1 and 3 leaves the key unconfirmed; ``(False, None)`` then
        answers later calls for it, so a worker that resumes a session must re-send its ``unconfirmed_keys``."""
        _text("idempotency_key", idempotency_key)
        _text("session_id", session_id)
        _count("step", step)
        if not callable(apply):
            raise ValueError("apply: must be callable")
        if not isinstance(action, _ACTION_CLASSES):
            raise ValueError(f"action: expected an Action, got {type(action).__name__}")
        if proposal is not None and not isinstance(proposal, Proposal):
            raise ValueError(f"proposal: expected a Proposal, got {type(proposal).__name__}")
        if decision is not None and not isinstance(decision, Decision):
            raise ValueError(f"decision: expected a Decision, got {type(decision).__name__}")
        body = action.model_dump_json()
        token = uuid.uuid4().hex
        at = _utcnow()
        a = applied_actions_table.c
        with self._write() as conn:
            session = self._lock_session(conn, session_id)
            if session is None:
                raise ValueError(f"session_id: no session {session_id!r}")
            known = conn.execute(select(a.idempotency_key).where(a.idempotency_key == idempotency_key)).first()
            if known is None:
                if session["status"] != SessionStatus.RUNNING.value:
                    raise ApplyRefusedError(f"session {session_id!r} is {session['status']}, not running")
                if worker_id is not None:
                    self._check_lease(session, worker_id, at)
            if proposal is not None:
                self._record_proposal(conn, proposal)
            if decision is not None:
                self._record_decision(conn, decision)
            if known is not None:
                return False, None
            row = {
                "idempotency_key": idempotency_key,
                "session_id": session_id,
                "step": step,
                "action": body,
                "reservation": token,
                "reserved_at": at,
                "applied_at": None,
            }
            if not self._insert_ignore(conn, applied_actions_table, "idempotency_key", row):
                return False, None
        try:
            result = apply()
        except BaseException:
            # The outcome is unknown (the BPM may have applied it before failing): free the key for a retry with
            # the same key, which the BPM's own idempotency makes safe. Only our own reservation is removed. If
            # the database fails here too, the key stays unconfirmed and a resuming worker re-sends it.
            with suppress(Exception), self._write() as conn:
                conn.execute(
                    delete(applied_actions_table).where(
                        a.idempotency_key == idempotency_key, a.reservation == token, a.applied_at.is_(None)
                    )
                )
            raise
        self.confirm(idempotency_key)
        return True, result

    def confirm(self, idempotency_key: str) -> bool:
        """Mark a reserved key applied and count it on its session (one transaction); False if it is unknown or
        confirmed already, so a key is counted once however often it is confirmed."""
        a = applied_actions_table.c
        with self._write() as conn:
            query = select(a.session_id).where(a.idempotency_key == idempotency_key)
            session_id = conn.execute(query).scalar_one_or_none()
            if session_id is None:
                return False
            self._lock_session(conn, session_id)  # the store's lock order: session first
            confirmed = conn.execute(
                update(applied_actions_table)
                .where(a.idempotency_key == idempotency_key, a.applied_at.is_(None))
                .values(applied_at=_utcnow())
            )
            if confirmed.rowcount != 1:
                return False
            conn.execute(
                update(sessions_table)
                .where(sessions_table.c.session_id == session_id)
                .values(actions_applied=sessions_table.c.actions_applied + 1)
            )
        return True

    def drop_reservation(self, idempotency_key: str, *, worker_id: str | None = None) -> bool:
        """Remove an unconfirmed reservation whose action the BPM never applied; True if one was removed.

        Call it only with the BPM's proof: re-sent with its key, the action was refused (stale etag, invalid
        action, ended case), and the BPM checks a key before anything else, so a refusal means the key is
        unknown to it. The step can then be decided again (possibly the same action under the same key). A
        confirmed key is never removed (False). With ``worker_id``, LeaseLostError if that worker holds no valid
        lease on the key's session (a presumed-dead worker must not undo its successor's reservations)."""
        _text("idempotency_key", idempotency_key)
        a = applied_actions_table.c
        with self._write() as conn:
            query = select(a.session_id).where(a.idempotency_key == idempotency_key)
            session_id = conn.execute(query).scalar_one_or_none()
            if session_id is None:
                return False
            session = self._lock_session(conn, session_id)  # the store's lock order: session first
            if worker_id is not None and session is not None:
                self._check_lease(session, worker_id, _utcnow())
            dropped = conn.execute(
                delete(applied_actions_table).where(a.idempotency_key == idempotency_key, a.applied_at.is_(None))
            )
            return dropped.rowcount == 1

    def unconfirmed_keys(self, session_id: str) -> list[UnconfirmedAction]:
        """Reserved but unconfirmed side effects of a session, oldest first: a worker that resumes the session
        (after ``claim``) re-sends each with its key, then calls ``confirm``."""
        a = applied_actions_table.c
        query = (
            select(applied_actions_table)
            .where(a.session_id == session_id, a.applied_at.is_(None))
            .order_by(a.reserved_at, a.step, a.idempotency_key)
        )
        with self._read() as conn:
            rows = conn.execute(query).mappings().all()
        return [
            UnconfirmedAction(
                idempotency_key=row["idempotency_key"],
                session_id=row["session_id"],
                step=row["step"],
                action=parse_action(row["action"]),
                reserved_at=_aware_req(row["reserved_at"]),
            )
            for row in rows
        ]

    def is_applied(self, idempotency_key: str) -> bool:
        """True if the key is confirmed."""
        a = applied_actions_table.c
        query = select(a.applied_at).where(a.idempotency_key == idempotency_key)
        with self._read() as conn:
            return conn.execute(query).scalar_one_or_none() is not None

    # ---- audit log ------------------------------------------------------------------------------------------

    def audit(self, actor: str, action: str, target: str, details: Mapping[str, Any] | None = None) -> int:
        """Append an audit entry; return its id. ``details`` must already be redacted: no customer message
        bodies, no secrets."""
        row = self._audit_row(actor, action, target, details)
        with self._write() as conn:
            return self._insert_audit(conn, row)

    @staticmethod
    def _audit_row(actor: str, action: str, target: str, details: Mapping[str, Any] | None) -> dict[str, Any]:
        return {
            "at": _utcnow(),
            "actor": _text("actor", actor),
            "action": _text("action", action),
            "target": _target(target),
            "details": _json("details", details),
        }

    @staticmethod
    def _insert_audit(conn: Connection, row: dict[str, Any]) -> int:
        result = conn.execute(audit_log_table.insert().values(**{**row, "at": _utcnow()}))
        return int(result.inserted_primary_key[0])  # type: ignore[index]

    # An answer's audit entry (a deferral's answer, a QA review) is written in the answer's own transaction: the
    # compare-and-set and its entry commit together or not at all. Its action is ``<kind>:<verdict>`` and its
    # target the id answered, so a duplicate answer finds the entry again.

    def _answer_audit_row(self, audit: AuditNote | None, kind: str) -> dict[str, Any] | None:
        """The audit row of an answer of ``kind`` about to be recorded (None without a note)."""
        if audit is None:
            return None
        if not isinstance(audit, AuditNote):
            raise ValueError(f"audit: expected an AuditNote, got {type(audit).__name__}")
        if not audit.action.startswith(f"{kind}:"):
            raise ValueError(
                f"audit: the action of an answer's entry must start with {kind + ':'!r}, got {audit.action!r}"
            )
        return self._audit_row(audit.actor, audit.action, audit.target, audit.details)

    def _audit_answer(
        self, conn: Connection, result: AnswerStatus, target: str, row: dict[str, Any] | None, kind: str
    ) -> int | None:
        """Inside the answer's transaction: write the entry of an accepted answer (``row``), or find the one of
        the answer a duplicate repeats; the entry's id (None if there is none)."""
        if result == AnswerStatus.ACCEPTED and row is not None:
            return self._insert_audit(conn, row)
        if result == AnswerStatus.DUPLICATE:
            return self._answer_audit_id(conn, target, kind)
        return None

    @staticmethod
    def _answer_audit_id(conn: Connection, target: str, kind: str) -> int | None:
        t = audit_log_table.c
        query = select(t.id).where(t.target == target, t.action.like(f"{kind}:%")).order_by(t.id.desc()).limit(1)
        found = conn.execute(query).scalar_one_or_none()
        return None if found is None else int(found)

    def answer_audit(self, target: str, kind: str = ANSWER_AUDIT) -> AuditEntry | None:
        """The audit entry of the answer to ``target`` (a deferral id; with ``kind`` ``qa`` a QA id), or None if
        it was never answered with one."""
        with self._read() as conn:
            entry_id = self._answer_audit_id(conn, target, kind)
            if entry_id is None:
                return None
            row = conn.execute(select(audit_log_table).where(audit_log_table.c.id == entry_id)).mappings().one()
        return _audit_entry(row)

    # ---- replicated stage events ----------------------------------------------------------------------------

    def append_stage_event(
        self,
        origin: str,
        kind: str,
        actor: str,
        reason: str,
        *,
        process_id: str | None = None,
        action_type: str | None = None,
        stage: str | None = None,
        flag: bool = False,
    ) -> int:
        """Append a stage event; returns its id."""
        row = self._stage_event_row(origin, kind, actor, reason, process_id, action_type, stage, flag)
        with self._write() as conn:
            return self._append_stage_event(conn, row)

    def append_stage_event_if_latest(
        self,
        after_id: int,
        origin: str,
        kind: str,
        actor: str,
        reason: str,
        *,
        process_id: str,
        action_type: str,
        stage: str | None = None,
        flag: bool = False,
    ) -> int | None:
        """Append a stage event on a slice only if no event on that slice has an id above ``after_id`` (the log as
        far as the writer has applied it): a compare-and-set, so a change made on a stale view of the slice never
        lands after one its writer had not seen. Returns the new id, or None when refused."""
        row = self._stage_event_row(origin, kind, actor, reason, process_id, action_type, stage, flag)
        t = stage_events_table.c
        with self._write() as conn:
            if self._postgres:  # READ COMMITTED: serialise the check and the insert (SQLite's BEGIN IMMEDIATE does)
                conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_STAGE_EVENT_LOCK})
            latest = conn.execute(
                select(func.max(t.id)).where(t.process_id == process_id, t.action_type == action_type)
            ).scalar_one_or_none()
            if latest is not None and int(latest) > int(after_id):
                return None
            return self._append_stage_event(conn, row)

    @staticmethod
    def _stage_event_row(
        origin: str,
        kind: str,
        actor: str,
        reason: str,
        process_id: str | None,
        action_type: str | None,
        stage: str | None,
        flag: bool,
    ) -> dict[str, Any]:
        for name, value in (("origin", origin), ("kind", kind), ("actor", actor)):
            _text(name, value)
        return {
            "at": _utcnow(),
            "origin": origin,
            "kind": kind,
            "process_id": process_id,
            "action_type": action_type,
            "stage": stage,
            "flag": bool(flag),
            "actor": actor,
            "reason": str(reason),
        }

    @staticmethod
    def _append_stage_event(conn: Connection, row: dict[str, Any]) -> int:
        result = conn.execute(stage_events_table.insert().values(**row).returning(stage_events_table.c.id))
        return int(result.scalar_one())

    def stage_events_after(self, after_id: int, limit: int = 500) -> list[StageEventRow]:
        """Stage events with an id above ``after_id``, oldest first."""
        t = stage_events_table.c
        query = select(stage_events_table).where(t.id > int(after_id)).order_by(t.id).limit(_limit(limit))
        with self._read() as conn:
            rows = conn.execute(query).mappings().all()
        return [
            StageEventRow(
                id=int(r["id"]),
                at=_aware_req(r["at"]),
                origin=r["origin"],
                kind=r["kind"],
                process_id=r["process_id"],
                action_type=r["action_type"],
                stage=r["stage"],
                flag=bool(r["flag"]),
                actor=r["actor"],
                reason=r["reason"],
            )
            for r in rows
        ]

    def audit_log(self, limit: int = 100) -> list[AuditEntry]:
        """The newest audit entries, newest first."""
        query = select(audit_log_table).order_by(audit_log_table.c.id.desc()).limit(_limit(limit))
        with self._read() as conn:
            rows = conn.execute(query).mappings().all()
        return [_audit_entry(row) for row in rows]

    # ---- issued copilot proposals ---------------------------------------------------------------------------

    def record_issued(self, proposal: Proposal, issued_to: str, now: datetime | None = None) -> None:
        """Remember that ``proposal`` was issued to ``issued_to`` (a suggestion); a repeat changes nothing."""
        if not isinstance(proposal, Proposal):
            raise ValueError(f"proposal: expected a Proposal, got {type(proposal).__name__}")
        row = {
            "proposal_id": proposal.proposal_id,
            "issued_to": _text("issued_to", issued_to),
            "process_id": proposal.process_id,
            "state_etag": proposal.state_etag,
            "issued_at": _naive_utc(now),
            "feedback_digest": None,
            "payload": proposal.model_dump_json(),
        }
        with self._write() as conn:
            self._insert_ignore(conn, issued_proposals_table, "proposal_id", row)

    def claim_issued(
        self, proposal: Proposal, issued_to: str, feedback_digest: str, *, issued_after: datetime | None = None
    ) -> IssuedClaim:
        """Record feedback (``feedback_digest``: what it said) for an issued proposal, at most once, in one
        transaction: ``claimed`` the first time, ``repeated`` for the same feedback again, ``used`` for different
        feedback after it; ``unknown`` if it was never issued (or before ``issued_after``: expired),
        ``other_caller`` if it was issued to someone else, ``different`` if ``proposal`` is not what was issued
        (nothing changes then)."""
        if not isinstance(proposal, Proposal):
            raise ValueError(f"proposal: expected a Proposal, got {type(proposal).__name__}")
        _text("feedback_digest", feedback_digest)
        t = issued_proposals_table.c
        with self._write() as conn:
            query = select(issued_proposals_table).where(t.proposal_id == proposal.proposal_id).with_for_update()
            row = conn.execute(query).mappings().one_or_none()
            if row is None or (issued_after is not None and row["issued_at"] < _naive_utc(issued_after)):
                return IssuedClaim(IssuedStatus.UNKNOWN)
            issued = Proposal.model_validate_json(row["payload"])
            issued_at = _aware_req(row["issued_at"])
            if row["issued_to"] != issued_to:
                return IssuedClaim(IssuedStatus.OTHER_CALLER, issued, issued_at)
            if issued.model_dump(exclude={"schema_version"}) != proposal.model_dump(exclude={"schema_version"}):
                return IssuedClaim(IssuedStatus.DIFFERENT, issued, issued_at)
            if row["feedback_digest"] is not None:
                status = IssuedStatus.REPEATED if row["feedback_digest"] == feedback_digest else IssuedStatus.USED
                return IssuedClaim(status, issued, issued_at)
            conn.execute(
                update(issued_proposals_table)
                .where(t.proposal_id == proposal.proposal_id)
                .values(feedback_digest=feedback_digest)
            )
            return IssuedClaim(IssuedStatus.CLAIMED, issued, issued_at)

    def prune_issued(self, before: datetime) -> int:
        """Forget proposals issued before ``before``; returns how many."""
        t = issued_proposals_table.c
        with self._write() as conn:
            return int(conn.execute(delete(issued_proposals_table).where(t.issued_at < _naive_utc(before))).rowcount)

    # ---- worker heartbeats ----------------------------------------------------------------------------------

    def heartbeat(self, beat: WorkerHeartbeat) -> None:
        """Insert or replace the worker's heartbeat row."""
        _text("worker_id", beat.worker_id)
        row = {
            "worker_id": beat.worker_id,
            "started_at": _naive_utc(beat.started_at),
            "last_seen": _naive_utc(beat.last_seen),
            "interval_s": _seconds("interval_s", beat.interval_s),
            "stopped_at": None if beat.stopped_at is None else _naive_utc(beat.stopped_at),
            "critic_version": beat.critic_version,
            "stage_event_id": int(beat.stage_event_id),
            "kill_switch": bool(beat.kill_switch),
            "sessions": _count("sessions", beat.sessions),
            "decisions": json.dumps(beat.decisions, sort_keys=True),
            "latency": json.dumps(beat.decision_latency_ms, sort_keys=True),
        }
        dialect = postgresql if self._postgres else sqlite
        statement = dialect.insert(worker_heartbeats_table).values(**row)
        statement = statement.on_conflict_do_update(
            index_elements=["worker_id"], set_={k: v for k, v in row.items() if k != "worker_id"}
        )
        with self._write() as conn:
            conn.execute(statement)

    def heartbeats(self, since: datetime | None = None) -> list[WorkerHeartbeat]:
        """The workers' heartbeat rows (seen at or after ``since``, when given), by worker id."""
        h = worker_heartbeats_table.c
        query = select(worker_heartbeats_table).order_by(h.worker_id)
        if since is not None:
            query = query.where(h.last_seen >= _naive_utc(since))
        with self._read() as conn:
            rows = conn.execute(query).mappings().all()
        return [
            WorkerHeartbeat(
                worker_id=row["worker_id"],
                started_at=_aware_req(row["started_at"]),
                last_seen=_aware_req(row["last_seen"]),
                interval_s=float(row["interval_s"]),
                critic_version=row["critic_version"],
                stage_event_id=int(row["stage_event_id"]),
                kill_switch=bool(row["kill_switch"]),
                sessions=int(row["sessions"]),
                decisions={str(k): int(v) for k, v in json.loads(row["decisions"]).items()},
                decision_latency_ms=json.loads(row["latency"]),
                stopped_at=_aware(row["stopped_at"]),
            )
            for row in rows
        ]
