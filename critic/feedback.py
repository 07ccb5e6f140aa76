"""Critic training data: feedback records from sandbox copilot reviews, their JSONL files, and time-based splits.

A FeedbackRecord keeps the critic's label (``accepted`` + ``reason``) apart from the policy-correction data
(``operator_action``). The sandbox's hidden truth (was the proposal acceptable?) travels beside the records, in a
sidecar file, for analysis only: it is never a critic feature and never part of a record.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from critic.base import labels
from critic.errors import FeedbackError
from schemas.base import validation_message
from schemas.feedback import FeedbackRecord, FeedbackSource
from schemas.files import atomic_file, atomic_write_text

# Synthetic review times: case ``i`` starts ``i`` minutes after the epoch and its turn ``t`` is reviewed ``t``
# seconds later (a case has fewer than 60 turns), so time order = case order, then turn order. A turn is a step,
# or a proposal rejected because the screen changed under it (the step is then proposed again).
SYNTHETIC_EPOCH = datetime(2026, 1, 1, tzinfo=UTC)


# --- collection --------------------------------------------------------------------------------------------------


@dataclass
class CopilotFeedback:
    """Records of one copilot collection and, per record, the sandbox's truth (for analysis only)."""

    records: list[FeedbackRecord] = field(default_factory=list)
    truth: list[bool] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        """Rows, acceptance rate (the operator's verdict), label rate (the critic's label: acceptances plus
        acceptable alternatives), truth rate, corrections, and acceptance per action type."""
        rows = len(self.records)

        def rate(count: int | float, total: int) -> float | None:
            return round(float(count) / total, 4) if total else None

        per_type: dict[str, list[bool]] = defaultdict(list)
        for record in self.records:
            per_type[record.proposal.action.type.value].append(record.accepted)
        return {
            "rows": rows,
            "acceptance_rate": rate(sum(r.accepted for r in self.records), rows),
            "label_rate": rate(int(labels(self.records).sum()), rows),
            "acceptable_rate": rate(sum(self.truth), len(self.truth)),
            "corrections": sum(r.operator_action is not None for r in self.records),
            "per_action_type": {
                t: {"rows": len(v), "acceptance_rate": rate(sum(v), len(v))} for t, v in sorted(per_type.items())
            },
        }


# --- JSONL files ---------------------------------------------------------------------------------------------


def truth_path(path: str | Path) -> Path:
    """The sidecar holding the sandbox truth of a feedback file: ``x.jsonl`` -> ``x.truth.json``."""
    return Path(path).with_suffix(".truth.json")


def write_feedback(records: Iterable[FeedbackRecord], path: str | Path, truth: Sequence[bool] | None = None) -> Path:
    """Write one FeedbackRecord JSON per line, atomically (temporary file + rename: a reader never sees half a
    file, and a failure midway leaves the previous file, or none, in place). ``truth`` (one flag per record)
    goes to the sidecar ``truth_path(path)``; without it a stale sidecar is removed, so it can never be paired
    with other rows."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path) as rows:  # the rows replace the file only after the sidecar is settled
        count = 0
        for count, record in enumerate(records, start=1):
            if not isinstance(record, FeedbackRecord):
                raise ValueError(f"records[{count - 1}]: expected a FeedbackRecord, got {type(record).__name__}")
            rows.write(record.model_dump_json() + "\n")
        sidecar = truth_path(path)
        if truth is None:
            sidecar.unlink(missing_ok=True)
        else:
            flags = [bool(t) for t in truth]
            if len(flags) != count:
                raise ValueError(f"truth: {len(flags)} flags for {count} records")
            atomic_write_text(sidecar, json.dumps(flags) + "\n")
    return path


def read_feedback(path: str | Path) -> list[FeedbackRecord]:
    """Every record of a JSONL feedback file (blank lines are skipped). A bad line raises FeedbackError naming
    the file, the line number and the offending field; a file without rows raises too."""
    path = Path(path)
    records: list[FeedbackRecord] = []
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                records.append(FeedbackRecord.model_validate_json(line))
            except ValidationError as error:
                raise FeedbackError(f"{path}:{number}: {validation_message(error)}") from None
    if not records:
        raise FeedbackError(f"{path}: no feedback rows")
    return records


def read_truth(path: str | Path) -> list[bool] | None:
    """The sandbox truth written beside a feedback file, or None if there is none."""
    sidecar = truth_path(path)
    if not sidecar.exists():
        return None
    try:
        flags = json.loads(sidecar.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise FeedbackError(f"{sidecar}: not JSON ({error.msg})") from None
    if not isinstance(flags, list) or not all(isinstance(f, bool) for f in flags):
        raise FeedbackError(f"{sidecar}: truth must be a JSON list of booleans")
    return flags


# --- windows and splits --------------------------------------------------------------------------------------


def _utc(moment: datetime) -> datetime:
    """Aware UTC (a naive time is taken as UTC), so times from files, databases and callers compare."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _time_order(records: Iterable[FeedbackRecord]) -> list[FeedbackRecord]:
    return sorted(records, key=lambda r: (_utc(r.created_at), r.record_id))


def time_window(
    records: Sequence[FeedbackRecord], days: float | None, now: datetime | None = None
) -> list[FeedbackRecord]:
    """Records created in the ``days`` before ``now`` (``now - days < created_at <= now``), in time order.
    ``days=None`` keeps every record up to ``now``. ``now=None`` means the newest record's time: a window over
    a replayed or synthetic log is then relative to the log, not to the wall clock (pass ``now`` for that)."""
    if days is not None and days <= 0:
        raise ValueError(f"days: must be > 0 (or None for all), got {days}")
    ordered = _time_order(records)
    if not ordered:
        return []
    end = _utc(now) if now is not None else _utc(ordered[-1].created_at)
    start = None if days is None else end - timedelta(days=days)
    return [r for r in ordered if (start is None or _utc(r.created_at) > start) and _utc(r.created_at) <= end]


def time_split(
    records: Sequence[FeedbackRecord], fractions: Sequence[float] = (0.6, 0.2, 0.2)
) -> tuple[list[FeedbackRecord], ...]:
    """Consecutive time slices (ordered by created_at, ties by record_id) of the given sizes, e.g. train /
    calibration / threshold-and-test: every later slice is newer than every earlier one, as in production."""
    if not fractions or any(f < 0 for f in fractions) or abs(sum(fractions) - 1.0) > 1e-6:
        raise ValueError(f"fractions: must be non-negative and sum to 1, got {tuple(fractions)}")
    ordered = _time_order(records)
    cuts = [0]
    total = 0.0
    for fraction in fractions[:-1]:
        total += fraction
        cuts.append(round(total * len(ordered)))
    cuts.append(len(ordered))
    return tuple(ordered[a:b] for a, b in pairwise(cuts))


# --- sources -------------------------------------------------------------------------------------------------


def load_feedback_source(source: str) -> list[FeedbackRecord]:
    """Feedback from a JSONL file, a directory of ``*.jsonl`` files, or a database URL (``sqlite:///x.db``,
    ``postgresql://...``, read through the FeedbackStore). Records are returned in time order; a record
    delivered twice (same record_id) is kept once, as the store does."""
    if "://" in source:
        from critic.store import FeedbackStore  # here: reading files must not need a database driver

        store = FeedbackStore(source)
        try:
            records = store.read()
        finally:
            store.close()
        if not records:
            raise FeedbackError(f"{source}: no feedback rows")
        return records
    path = Path(source)
    if path.is_dir():
        files = sorted(path.glob("*.jsonl"))
        if not files:
            raise FeedbackError(f"{path}: no .jsonl feedback files in this directory")
        records = [r for f in files for r in read_feedback(f)]
    elif path.is_file():
        records = read_feedback(path)
    else:
        raise FeedbackError(f"source: {source!r} is neither a .jsonl file, a directory nor a database URL")
    unique: dict[str, FeedbackRecord] = {}
    for record in records:
        unique.setdefault(record.record_id, record)
    return _time_order(unique.values())


IMPORT_PREFIX = "import-"


def as_imported(records: Iterable[FeedbackRecord]) -> list[FeedbackRecord]:
    """The records marked as imported (source ``import``; the record id prefixed ``import-``, so an imported row
    never takes the id of a row the service wrote): whatever a file says about itself, the service did not
    observe it."""
    out = []
    for record in records:
        record_id = record.record_id if record.record_id.startswith(IMPORT_PREFIX) else IMPORT_PREFIX + record.record_id
        out.append(record.model_copy(update={"source": FeedbackSource.IMPORT, "record_id": record_id}))
    return out
