"""Right-censored test cases: a case the log stopped recording before it was over.

An event log is extracted on some day. A case that started shortly before that day has only the events it had
by then, and its last recorded event looks like its end: the end-of-case target of its last prefix is an
artefact of the extraction, not something the process did. A chronological split puts those cases in the test
split (the latest cases), never in training, so no predictor can learn them and the test accuracy falls below
what the held-out training cases showed.

``CensoringHorizon.fit`` takes the usual duration of a training case (its ``quantile``, 0.9 by default) and the
log's last timestamp (train and test together); a test case is *fully observed* when it started at least that
long before the log's end. ``censoring_breakdown`` splits step scores by that and by whether the target is the end
of the case, so a report can show the accuracy on the cases the log saw through beside the rest.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from policy.evaluate import SliceMetrics, StepScore, slice_metrics
from schemas import Trace

DEFAULT_QUANTILE = 0.9


def _aware(moment: datetime) -> datetime:
    """A zone-less time read as UTC, as the importers read one, so that traces of either kind compare."""
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _span(trace: Trace) -> tuple[datetime, datetime] | None:
    times = [_aware(step.timestamp) for step in trace.steps if step.timestamp is not None]
    return (min(times), max(times)) if times else None


@dataclass(frozen=True)
class CensoringHorizon:
    """``horizon``: the ``quantile`` of the training cases' durations; ``log_end``: the log's last timestamp."""

    log_end: datetime
    horizon: timedelta
    quantile: float

    @classmethod
    def fit(
        cls, train: Iterable[Trace], test: Sequence[Trace], quantile: float = DEFAULT_QUANTILE
    ) -> CensoringHorizon | None:
        """None when the traces carry no timestamps (nothing can be said about censoring then)."""
        if not 0.0 < quantile < 1.0:
            raise ValueError(f"quantile must lie in (0, 1), got {quantile}")
        train_spans = [span for span in map(_span, train) if span is not None]
        test_spans = [span for span in map(_span, test) if span is not None]
        if not train_spans or not test_spans:
            return None
        durations = sorted(end - start for start, end in train_spans)
        horizon = durations[max(0, math.ceil(quantile * len(durations)) - 1)]  # the nearest-rank quantile
        log_end = max(end for _, end in train_spans + test_spans)
        return cls(log_end=log_end, horizon=horizon, quantile=quantile)

    def fully_observed(self, trace: Trace) -> bool | None:
        """Whether the case started at least ``horizon`` before the log's end (None: no timestamps)."""
        span = _span(trace)
        return None if span is None else span[0] + self.horizon <= self.log_end


@dataclass(frozen=True)
class CensoringBreakdown:
    """Step metrics of the fully observed cases and of the rest (possibly censored), each also for the
    end-of-case targets alone (the last step of a trace)."""

    horizon_days: float
    quantile: float
    fully_observed: SliceMetrics | None
    fully_observed_end: SliceMetrics | None
    possibly_censored: SliceMetrics | None
    possibly_censored_end: SliceMetrics | None

    def to_dict(self) -> dict[str, object]:
        def dump(metrics: SliceMetrics | None) -> dict[str, float | int] | None:
            return None if metrics is None else {"steps": metrics.steps, "accuracy": metrics.action_accuracy}

        return {
            "horizon_days": round(self.horizon_days, 1),
            "quantile": self.quantile,
            "fully_observed": dump(self.fully_observed),
            "fully_observed_end_of_case": dump(self.fully_observed_end),
            "possibly_censored": dump(self.possibly_censored),
            "possibly_censored_end_of_case": dump(self.possibly_censored_end),
        }


def censoring_breakdown(
    scores: Sequence[StepScore], test: Sequence[Trace], horizon: CensoringHorizon
) -> CensoringBreakdown:
    """Split ``scores`` (of ``test``'s steps) by whether their case is fully observed and whether the target is
    the case's end. Scores of traces without timestamps are left out of both groups."""
    observed = {trace.trace_id: horizon.fully_observed(trace) for trace in test}
    last_step = {trace.trace_id: len(trace.steps) - 1 for trace in test}
    groups: dict[tuple[bool, bool], list[StepScore]] = {(o, e): [] for o in (True, False) for e in (True, False)}
    for score in scores:
        seen_through = observed.get(score.trace_id)
        if seen_through is None:
            continue
        groups[(seen_through, score.step == last_step[score.trace_id])].append(score)

    def metrics(*keys: tuple[bool, bool]) -> SliceMetrics | None:
        rows = [score for key in keys for score in groups[key]]
        return slice_metrics(rows) if rows else None

    return CensoringBreakdown(
        horizon_days=horizon.horizon.total_seconds() / 86400,
        quantile=horizon.quantile,
        fully_observed=metrics((True, True), (True, False)),
        fully_observed_end=metrics((True, True)),
        possibly_censored=metrics((False, True), (False, False)),
        possibly_censored_end=metrics((False, True)),
    )


CENSORING_NOTE = (
    "A test case is fully observed when it started at least the {percentile:.0f}th percentile of the training "
    "cases' durations before the log's last event; in the others the last recorded event may be an end that only "
    "the log's extraction made. Action accuracy (prefixes); its ends = the end-of-case targets alone."
)


def censoring_table(rows: Sequence[tuple[str, Mapping[str, object]]]) -> str:
    """A markdown table of ``CensoringBreakdown.to_dict()`` rows, each under its label."""

    def cell(group: object) -> str:
        if not isinstance(group, Mapping):
            return "–"
        return f"{group['accuracy']:.4f} ({group['steps']})"

    lines = [
        "| predictor | horizon days | fully observed | its ends | possibly censored | its ends |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for label, row in rows:
        lines.append(
            f"| {label} | {row['horizon_days']} | {cell(row['fully_observed'])} | "
            f"{cell(row['fully_observed_end_of_case'])} | {cell(row['possibly_censored'])} | "
            f"{cell(row['possibly_censored_end_of_case'])} |"
        )
    return "\n".join(lines)
