"""Why a session needed a human: the first rule and slice that interrupted it, and the ranked table of them.

A session is *interrupted* when a human had to act on it: it was parked on a deferral (``automated`` is cleared),
or it ended handed over, failed or stopped. Its **blocker** is the first thing that stopped it:

- ``deferral``: the first decision that deferred a step (its router rule: ``stage_copilot``, ``no_threshold``,
  ``below_threshold``, ``audit`` with pre-execution audits, ``step_failures``, ``kill_switch``, ...);
- ``always_ask``: the first step whose action is always-ask (rule ``always_ask``);
- ``blocked``: a decision that blocked the step, which hands the session over;
- ``hand_over``: the worker handed the session over without a decision to show for it (``max_steps``,
  ``step_failures`` beyond the deferrals, ``no_proposal``: the policy had no valid action, ``resend_failed``);
- ``failed`` (the BPM does not know the case) and ``stopped`` (a supervisor's stop) for completeness.

The slice is the decision's ``process/action_type``; for a hand-over without a decision it is ``process/*``.

Two views of the same accounting: ``first_blockers`` derives it from the store (decisions in order, then the
session's end), which is what the report and the dashboard rank; the worker counts each session's first
interruption as it happens in the ``autopilot_session_blockers_total`` metric (``blocker_of_decision`` /
``blocker_of_end``), so a Prometheus query shows the next gap without reading the database.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import func, or_, select

from schemas.decision import Decision, DecisionOutcome
from service.runtime.store import RuntimeStore, SessionStatus, decisions_table, sessions_table


class BlockerKind(StrEnum):
    DEFERRAL = "deferral"
    ALWAYS_ASK = "always_ask"
    BLOCKED = "blocked"
    HAND_OVER = "hand_over"
    FAILED = "failed"
    STOPPED = "stopped"


# Hand-over rules the worker writes into a session's outcome (``outcome["rule"]``).
MAX_STEPS = "max_steps"
STEP_FAILURES = "step_failures"
NO_PROPOSAL = "no_proposal"
RESEND_FAILED = "resend_failed"
OPERATOR_TOOK_OVER = "operator_took_over"

_OUTCOME_KIND = {
    DecisionOutcome.DEFER.value: BlockerKind.DEFERRAL,
    DecisionOutcome.ALWAYS_ASK.value: BlockerKind.ALWAYS_ASK,
    DecisionOutcome.BLOCKED.value: BlockerKind.BLOCKED,
}
_INTERRUPTING_ENDS = (SessionStatus.HANDED_OVER, SessionStatus.FAILED, SessionStatus.STOPPED)


@dataclass(frozen=True, slots=True)
class Blocker:
    kind: BlockerKind
    rule: str
    slice: str

    @property
    def process_id(self) -> str:
        return self.slice.partition("/")[0]

    @property
    def action_type(self) -> str:
        return self.slice.partition("/")[2]


@dataclass(frozen=True, slots=True)
class BlockerCount:
    """One row of the ranked table: how many interrupted sessions this blocker stopped first."""

    kind: str
    rule: str
    slice: str
    sessions: int
    share: float  # of the interrupted sessions

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "rule": self.rule,
            "slice": self.slice,
            "sessions": self.sessions,
            "share": self.share,
        }


def _rule(reason: str) -> str:
    return reason.split(":", 1)[0].strip() or "unknown"


def blocker_of_decision(decision: Decision) -> Blocker | None:
    """The blocker a decision is (None for an executed step: it stops nothing)."""
    kind = _OUTCOME_KIND.get(decision.outcome.value)
    return None if kind is None else Blocker(kind, _rule(decision.reason), str(decision.slice))


def blocker_of_end(process_id: str, status: SessionStatus | str, outcome: Mapping[str, Any] | None) -> Blocker:
    """The blocker of a session that ended interrupted with no interrupting decision (hand-over, failed, stopped)."""
    status = SessionStatus(status)
    where = f"{process_id}/*"
    if status == SessionStatus.FAILED:
        return Blocker(BlockerKind.FAILED, "case_unknown", where)
    if status == SessionStatus.STOPPED:
        return Blocker(BlockerKind.STOPPED, "stopped", where)
    rule = (outcome or {}).get("rule")
    return Blocker(BlockerKind.HAND_OVER, str(rule) if rule else "hand_over", where)


def first_blockers(store: RuntimeStore, since: datetime | None = None) -> dict[str, Blocker]:
    """Every interrupted session (started at or after ``since``) -> its first blocker, from the store."""
    d, s = decisions_table.c, sessions_table.c
    ordered = (
        select(
            d.session_id,
            d.outcome,
            d.slice,
            d.reason,
            func.row_number().over(partition_by=d.session_id, order_by=(d.decided_at, d.decision_id)).label("n"),
        )
        .where(d.outcome != DecisionOutcome.EXECUTE.value)
        .subquery()
    )
    first = select(ordered.c.session_id, ordered.c.outcome, ordered.c.slice, ordered.c.reason).where(ordered.c.n == 1)
    interrupted = select(s.session_id, s.process_id, s.status, s.outcome).where(
        or_(s.automated.is_(False), s.status.in_([status.value for status in _INTERRUPTING_ENDS]))
    )
    if since is not None:
        interrupted = interrupted.where(s.started_at >= since.astimezone(UTC).replace(tzinfo=None))
    with store._read() as conn:
        decided = {row.session_id: row for row in conn.execute(first)}
        sessions = conn.execute(interrupted).all()
    result: dict[str, Blocker] = {}
    for session_id, process_id, status, outcome in sessions:
        row = decided.get(session_id)
        if row is not None:
            result[session_id] = Blocker(_OUTCOME_KIND[row.outcome], _rule(row.reason), row.slice)
        else:
            result[session_id] = blocker_of_end(process_id, status, None if outcome is None else json.loads(outcome))
    return result


def sessions_started(store: RuntimeStore, since: datetime | None = None) -> int:
    """Sessions started at or after ``since`` (all if None): the denominator of the blocker shares."""
    query = select(func.count()).select_from(sessions_table)
    if since is not None:
        query = query.where(sessions_table.c.started_at >= since.astimezone(UTC).replace(tzinfo=None))
    with store._read() as conn:
        return int(conn.execute(query).scalar_one())


def rank(blockers: Iterable[Blocker], limit: int | None = None) -> list[BlockerCount]:
    """The ranked table: (kind, rule, slice) by sessions stopped first, most first (ties by name)."""
    counts = Counter(blockers)
    total = sum(counts.values())
    rows = sorted(counts.items(), key=lambda item: (-item[1], item[0].kind, item[0].rule, item[0].slice))
    if limit is not None:
        rows = rows[:limit]
    return [BlockerCount(b.kind.value, b.rule, b.slice, n, n / total) for b, n in rows]


def rank_by_rule(blockers: Sequence[Blocker]) -> list[tuple[str, str, int]]:
    """The same, summed over slices: (kind, rule, sessions), most first."""
    counts = Counter((b.kind.value, b.rule) for b in blockers)
    return [(kind, rule, n) for (kind, rule), n in sorted(counts.items(), key=lambda item: (-item[1], item[0]))]
