"""The autopilot phase's report: what selective autopilot did to a set of cases, against an all-manual run of the
same cases, with the statistics behind each claim (printed as markdown, written as JSON, drawn as a PNG).

Every case is worked twice: once as a background session of the runtime (autopilot where a slice allows it,
operators answering deferrals, operators working a case by hand after a rejection or a handover), and once by
hand in the sandbox's all-manual simulation (``sandbox.simulate.work_case``: the same seed and case index give the
same customer and the same case). From the two:

- fully automated share: sessions that completed with no human step (no deferral answered, nothing done by hand);
- handling time: operator seconds per session against the all-manual seconds of the same cases; the reduction is
  ``1 - sum(autopilot) / sum(all-manual)``, with a paired bootstrap interval (cases resampled together);
- quality: the share of cases resolved correctly (the sandbox's truth: end status, resolution code and decisive
  form values), with a Newcombe interval for the paired difference (Newcombe 1998, "Improved confidence intervals
  for the difference between binomial proportions based on paired data", method 10: Wilson score limits of both
  rates combined through the correlation of the paired outcomes);
- realised error among auto-executed steps: the router samples a random share of would-execute steps for review
  (after the fact by default, in the QA queue; or deferred before execution), so the reviews are an unbiased sample
  of what autopilot executes. Under the operators' label an error is a review graded model error or other
  (acceptable alternatives are not errors, environment rejections are left out); under the paper's accept label
  anything but accept is one. Two-sided Clopper-Pearson interval, sessions as clusters
  (``service.runtime.realised_error``);
- non-inferiority of correct resolution: the autopilot's point estimate minus all-manual at least 0 and the lower
  95% bound at least -3 points (``NON_INFERIORITY_MARGIN``);
- why a session needed a human: the first rule and slice that interrupted each session, ranked
  (``service.runtime.blockers``);
- deferral latency (published -> in an operator's inbox), decision latency (observe -> decision), the stage of
  every slice at the end and the stage events (promotions, demotions and their reasons).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import beta, norm

from service.runtime.realised_error import RealisedError, realised_error

TARGET_FULLY_AUTOMATED = 0.50
TARGET_HANDLING_REDUCTION = 0.40
NON_INFERIORITY_MARGIN = 0.03  # the lower 95% bound of autopilot - all-manual correct resolution may not be below -3 pt
PAPER = "the paper: 45% of sessions fully automated, handling time -39%"


def _check_confidence(confidence: float) -> None:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence: must be in (0, 1), got {confidence}")


def _check_counts(successes: int, n: int, what: str = "successes") -> None:
    if n < 0 or successes < 0 or successes > n:
        raise ValueError(f"{what}: need 0 <= {what} <= n, got {successes} of {n}")


@dataclass(frozen=True, slots=True)
class Interval:
    """An estimate and its confidence limits (NaN everywhere when there is nothing to estimate from)."""

    estimate: float
    low: float
    high: float

    def to_dict(self) -> dict[str, float | None]:
        return {k: (None if math.isnan(v) else v) for k, v in asdict(self).items()}


NAN_INTERVAL = Interval(math.nan, math.nan, math.nan)


# ---- intervals ----------------------------------------------------------------------------------------------------


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> Interval:
    """The Wilson score interval for a proportion (NaN for ``n == 0``)."""
    _check_confidence(confidence)
    _check_counts(successes, n)
    if n == 0:
        return NAN_INTERVAL
    z = float(norm.ppf(0.5 + confidence / 2.0))
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return Interval(p, max(0.0, centre - half), min(1.0, centre + half))


def clopper_pearson_interval(k: int, n: int, confidence: float = 0.95) -> Interval:
    """The exact two-sided Clopper-Pearson interval for a proportion ``k / n`` (NaN for ``n == 0``)."""
    _check_confidence(confidence)
    _check_counts(k, n, "k")
    if n == 0:
        return NAN_INTERVAL
    tail = (1.0 - confidence) / 2.0
    low = 0.0 if k == 0 else float(beta.ppf(tail, k, n - k + 1))
    high = 1.0 if k == n else float(beta.ppf(1.0 - tail, k + 1, n - k))
    return Interval(k / n, low, high)


def _square_and_add(p1: float, w1: Interval, p2: float, w2: Interval, phi: float) -> Interval:
    # Newcombe's square-and-add: each limit of p1 - p2 combines the distances to the Wilson limits of both rates.
    lower = math.sqrt(max(0.0, (p1 - w1.low) ** 2 - 2 * phi * (p1 - w1.low) * (w2.high - p2) + (w2.high - p2) ** 2))
    upper = math.sqrt(max(0.0, (w1.high - p1) ** 2 - 2 * phi * (w1.high - p1) * (p2 - w2.low) + (p2 - w2.low) ** 2))
    diff = p1 - p2
    return Interval(diff, max(-1.0, diff - lower), min(1.0, diff + upper))


def newcombe_difference(x1: int, n1: int, x2: int, n2: int, confidence: float = 0.95) -> Interval:
    """Newcombe's hybrid score interval for ``x1/n1 - x2/n2`` from two independent samples (Newcombe 1998,
    method 10 of the unpaired paper)."""
    _check_counts(x1, n1, "x1")
    _check_counts(x2, n2, "x2")
    if n1 == 0 or n2 == 0:
        return NAN_INTERVAL
    return _square_and_add(
        x1 / n1, wilson_interval(x1, n1, confidence), x2 / n2, wilson_interval(x2, n2, confidence), 0.0
    )


@dataclass(frozen=True, slots=True)
class PairedTable:
    """Paired binary outcomes: both succeeded, only the first, only the second, neither."""

    both: int
    first_only: int
    second_only: int
    neither: int

    @property
    def n(self) -> int:
        return self.both + self.first_only + self.second_only + self.neither

    @classmethod
    def from_pairs(cls, first: Sequence[bool], second: Sequence[bool]) -> PairedTable:
        if len(first) != len(second):
            raise ValueError(f"second: {len(second)} outcomes for {len(first)} in first; pairs must match")
        a = sum(1 for x, y in zip(first, second, strict=True) if x and y)
        b = sum(1 for x, y in zip(first, second, strict=True) if x and not y)
        c = sum(1 for x, y in zip(first, second, strict=True) if y and not x)
        return cls(a, b, c, len(first) - a - b - c)


def paired_newcombe_difference(table: PairedTable, confidence: float = 0.95) -> Interval:
    """Newcombe's interval for the difference of two paired proportions (first - second), method 10 of Newcombe
    1998 (paired): the square-and-add of the two Wilson intervals with the phi correlation of the table,
    continuity-corrected as in the paper (a positive ``ad - bc`` is reduced by ``n / 2``, floored at 0)."""
    a, b, c, d = table.both, table.first_only, table.second_only, table.neither
    if min(a, b, c, d) < 0:
        raise ValueError(f"table: counts must be >= 0, got {table}")
    n = table.n
    if n == 0:
        return NAN_INTERVAL
    p1, p2 = (a + b) / n, (a + c) / n
    product = (a + b) * (c + d) * (a + c) * (b + d)
    phi = 0.0
    if product > 0:
        cross = a * d - b * c
        corrected = cross - n / 2 if cross > n / 2 else (cross if cross < 0 else 0.0)
        phi = corrected / math.sqrt(product)
    return _square_and_add(p1, wilson_interval(a + b, n, confidence), p2, wilson_interval(a + c, n, confidence), phi)


# ---- the measures -------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SessionResult:
    """One background session of the autopilot run. ``deferred``: steps a human answered (audits included);
    ``manual_steps``: steps a human did by hand (after a rejection or a handover)."""

    case_index: int
    process_id: str
    status: str
    executed: int
    deferred: int
    manual_steps: int
    correct: bool
    handling_time_s: float
    ambiguous: bool = False  # the customer left their preference open: a clarifying question is the right step

    @property
    def fully_automated(self) -> bool:
        return self.status == "completed" and self.deferred == 0 and self.manual_steps == 0


@dataclass(frozen=True, slots=True)
class ManualResult:
    """The same case worked by hand (the all-manual simulation)."""

    case_index: int
    correct: bool
    handling_time_s: float


@dataclass(frozen=True, slots=True)
class SliceResult:
    """A slice at the end of the run: its stage, threshold and labels, and what happened to its steps."""

    slice: str
    stage: str
    stage_reason: str
    threshold: float | None
    labels: int
    executed: int
    deferred: int  # answered by a human: copilot, below or without a threshold, audits, always-ask
    audits: int
    audit_errors: int

    @property
    def automation(self) -> float:
        total = self.executed + self.deferred
        return self.executed / total if total else 0.0


def fully_automated_share(sessions: Sequence[SessionResult]) -> float:
    """The share of sessions that completed with no human step (0 for no sessions)."""
    return sum(s.fully_automated for s in sessions) / len(sessions) if sessions else 0.0


def _seconds(values: Sequence[float], name: str) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1 or not np.all(np.isfinite(array)) or np.any(array < 0):
        raise ValueError(f"{name}: handling times must be finite seconds >= 0")
    return array


def handling_time_reduction(autopilot: Sequence[float], manual: Sequence[float]) -> float:
    """``1 - sum(autopilot) / sum(manual)`` over the same cases: the share of operator time saved."""
    auto, hand = _seconds(autopilot, "autopilot"), _seconds(manual, "manual")
    if auto.size != hand.size:
        raise ValueError(f"manual: {hand.size} cases for {auto.size} autopilot cases; the runs must be paired")
    if hand.size == 0 or hand.sum() <= 0:
        raise ValueError("manual: no all-manual handling time to compare with")
    return float(1.0 - auto.sum() / hand.sum())


def handling_time_reduction_interval(
    autopilot: Sequence[float], manual: Sequence[float], confidence: float = 0.95, resamples: int = 2000, seed: int = 0
) -> Interval:
    """The reduction with a paired percentile-bootstrap interval (cases resampled with both their times)."""
    _check_confidence(confidence)
    estimate = handling_time_reduction(autopilot, manual)
    auto, hand = _seconds(autopilot, "autopilot"), _seconds(manual, "manual")
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, auto.size, size=(resamples, auto.size))
    hand_sums = hand[draws].sum(axis=1)
    ratios = 1.0 - auto[draws].sum(axis=1) / np.where(hand_sums > 0, hand_sums, np.nan)
    tail = (1.0 - confidence) / 2.0 * 100.0
    low, high = np.nanpercentile(ratios, [tail, 100.0 - tail])
    return Interval(estimate, float(low), float(high))


@dataclass(frozen=True, slots=True)
class AuditedError:
    """Audited would-execute steps and how many a human did not accept, with the Clopper-Pearson interval."""

    audits: int
    errors: int
    interval: Interval

    def to_dict(self) -> dict[str, Any]:
        return {"audits": self.audits, "errors": self.errors, **self.interval.to_dict()}


@dataclass(frozen=True, slots=True)
class ReviewLabel:
    """One reviewed auto-executed step: its session, the operators' label (acceptable, unacceptable, excluded:
    ``schemas.qa.qa_label``) and whether the verdict was accept (the paper's label)."""

    session_id: str
    label: str
    accepted: bool


def realised_errors(reviews: Sequence[ReviewLabel], confidence: float = 0.95) -> dict[str, RealisedError]:
    """The realised error under the operators' label (``operators``: unacceptable among reviews, environment left
    out) and the paper's (``accept``: anything but accept), each with sessions as clusters."""
    operators = realised_error(
        ((r.session_id, r.label == "unacceptable") for r in reviews if r.label != "excluded"), confidence
    )
    accept = realised_error(((r.session_id, not r.accepted) for r in reviews), confidence)
    return {"operators": operators, "accept": accept}


def audited_error(accepted: Sequence[bool], confidence: float = 0.95) -> AuditedError:
    """The realised error among auto-executed steps, estimated from audit answers (``accepted`` per audit)."""
    errors = sum(1 for a in accepted if not a)
    return AuditedError(len(accepted), errors, clopper_pearson_interval(errors, len(accepted), confidence))


# ---- the report ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Target:
    """A target, what was measured, and whether it was met (None: nothing to judge it on)."""

    name: str
    goal: str
    measured: str
    met: bool | None


def _pct(x: float | None, digits: int = 1) -> str:
    return "—" if x is None or math.isnan(x) else f"{x * 100:.{digits}f}%"


def _ms(summary: Mapping[str, Any], key: str) -> str:
    value = summary.get(key)
    return "—" if value is None else f"{float(value):.1f} ms"


@dataclass
class AutopilotReport:
    """Everything measured in one autopilot run beside the all-manual run of the same cases. ``run`` holds
    descriptive settings (critic version, workers, audit rate, wall time, ...); ``notes`` are printed as is."""

    alpha: float
    sessions: list[SessionResult]
    manual: list[ManualResult]
    slices: list[SliceResult]
    events: list[dict[str, Any]] = field(default_factory=list)
    deferral_latency_ms: dict[str, Any] = field(default_factory=dict)
    publish_latency_ms: dict[str, Any] = field(default_factory=dict)
    decision_latency_ms: dict[str, Any] = field(default_factory=dict)
    audit_labels: list[bool] = field(default_factory=list)
    reviews: list[ReviewLabel] = field(default_factory=list)
    blockers: list[dict[str, Any]] = field(default_factory=list)  # service.runtime.blockers.BlockerCount.to_dict()
    run: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    confidence: float = 0.95

    def __post_init__(self) -> None:
        if not 0.0 < self.alpha < 1.0:
            raise ValueError(f"alpha: must be in (0, 1), got {self.alpha}")
        _check_confidence(self.confidence)
        auto = [s.case_index for s in self.sessions]
        hand = [m.case_index for m in self.manual]
        if sorted(auto) != sorted(hand) or len(set(auto)) != len(auto):
            raise ValueError("manual: the all-manual run must hold exactly the autopilot run's case indices, once each")
        if not self.sessions:
            raise ValueError("sessions: the report needs at least one session")
        by_index = {m.case_index: m for m in self.manual}
        self.manual = [by_index[s.case_index] for s in self.sessions]  # paired by position from here on

    # ---- derived figures ----------------------------------------------------------------------------------------

    @property
    def fully_automated(self) -> float:
        return fully_automated_share(self.sessions)

    @property
    def handling_reduction(self) -> Interval:
        return handling_time_reduction_interval(
            [s.handling_time_s for s in self.sessions], [m.handling_time_s for m in self.manual], self.confidence
        )

    @property
    def quality_table(self) -> PairedTable:
        return PairedTable.from_pairs([s.correct for s in self.sessions], [m.correct for m in self.manual])

    @property
    def quality_difference(self) -> Interval:
        return paired_newcombe_difference(self.quality_table, self.confidence)

    @property
    def ambiguous_quality_difference(self) -> Interval | None:
        """Autopilot minus all-manual correct resolution on the ambiguous cases only (None without any)."""
        pairs = [(s.correct, m.correct) for s, m in zip(self.sessions, self.manual, strict=True) if s.ambiguous]
        if not pairs:
            return None
        table = PairedTable.from_pairs([a for a, _ in pairs], [b for _, b in pairs])
        return paired_newcombe_difference(table, self.confidence)

    @property
    def error(self) -> AuditedError:
        return audited_error(self.audit_labels, self.confidence)

    @property
    def realised(self) -> dict[str, RealisedError]:
        """The realised error from the reviews under both labels (see ``realised_errors``)."""
        return realised_errors(self.reviews, self.confidence)

    @property
    def non_inferior(self) -> bool:
        """Correct resolution not lower than all-manual: estimate >= 0 and lower bound >= -margin."""
        q = self.quality_difference
        return bool(q.estimate >= 0.0 and q.low >= -NON_INFERIORITY_MARGIN)

    def headline(self, label: str = "operators") -> dict[str, float | None]:
        """The run's headline figures (``label``: ``operators`` or ``accept`` for the realised error): fully
        automated share, handling-time reduction, quality difference and its lower 95% bound, realised error and
        its upper 95% bound, alpha."""
        reduction = self.handling_reduction
        quality = self.quality_difference
        ambiguous = self.ambiguous_quality_difference
        error = self.realised[label]

        def number(value: float | None) -> float | None:
            return None if value is None or math.isnan(value) else round(float(value), 6)

        return {
            "fully_automated": number(self.fully_automated),
            "handling_time_reduction": number(reduction.estimate),
            "quality_difference": number(quality.estimate),
            "quality_difference_low": number(quality.low),
            "quality_difference_ambiguous": None if ambiguous is None else number(ambiguous.estimate),
            "quality_difference_ambiguous_low": None if ambiguous is None else number(ambiguous.low),
            "ambiguous_sessions": sum(s.ambiguous for s in self.sessions),
            "realised_error": number(error.estimate),
            "realised_error_high": number(error.high),
            "alpha": self.alpha,
        }

    def summary(self) -> dict[str, Any]:
        n = len(self.sessions)
        auto_time = sum(s.handling_time_s for s in self.sessions) / n
        hand_time = sum(m.handling_time_s for m in self.manual) / n
        auto_ok = sum(s.correct for s in self.sessions)
        hand_ok = sum(m.correct for m in self.manual)
        statuses: dict[str, int] = {}
        for s in self.sessions:
            statuses[s.status] = statuses.get(s.status, 0) + 1
        executed = sum(s.executed for s in self.sessions)
        deferred = sum(s.deferred for s in self.sessions)
        manual_steps = sum(s.manual_steps for s in self.sessions)
        return {
            "sessions": n,
            "alpha": self.alpha,
            "confidence": self.confidence,
            "statuses": dict(sorted(statuses.items())),
            "fully_automated": self.fully_automated,
            "fully_automated_sessions": sum(s.fully_automated for s in self.sessions),
            "steps": {"executed": executed, "deferred": deferred, "manual": manual_steps},
            "step_automation": executed / max(1, executed + deferred + manual_steps),
            "handling_time_s": {"autopilot": auto_time, "all_manual": hand_time},
            "handling_time_reduction": self.handling_reduction.to_dict(),
            "correct_resolution": {
                "autopilot": wilson_interval(auto_ok, n, self.confidence).to_dict(),
                "all_manual": wilson_interval(hand_ok, n, self.confidence).to_dict(),
                "difference": self.quality_difference.to_dict(),
                "paired_table": asdict(self.quality_table),
            },
            "audited_error": self.error.to_dict(),
            "realised_error": {name: value.to_dict() for name, value in self.realised.items()},
            "non_inferior": self.non_inferior,
            "deferral_latency_ms": self.deferral_latency_ms,
            "publish_latency_ms": self.publish_latency_ms,
            "decision_latency_ms": self.decision_latency_ms,
        }

    def targets(self) -> list[Target]:
        reduction = self.handling_reduction
        quality = self.quality_difference
        error = self.error
        level = f"{self.confidence:.0%}"
        realised = self.realised["operators"]
        return [
            Target(
                "fully automated sessions",
                f">= {TARGET_FULLY_AUTOMATED:.0%}",
                _pct(self.fully_automated),
                self.fully_automated >= TARGET_FULLY_AUTOMATED,
            ),
            Target(
                "handling time vs all-manual",
                f">= {TARGET_HANDLING_REDUCTION:.0%} lower",
                f"{_pct(reduction.estimate)} lower ({level} CI {_pct(reduction.low)} .. {_pct(reduction.high)})",
                reduction.estimate >= TARGET_HANDLING_REDUCTION,
            ),
            Target(
                "correct resolution vs all-manual",
                f"non-inferior: estimate >= 0 and lower {level} bound >= -{NON_INFERIORITY_MARGIN * 100:g} points",
                f"{quality.estimate * 100:+.1f} points ({level} CI {quality.low * 100:+.1f} .. "
                f"{quality.high * 100:+.1f})",
                self.non_inferior,
            ),
            Target(
                "realised error among auto-executed steps (audits)",
                f"<= alpha = {self.alpha:g} (accept label)",
                "no audits (nothing auto-executed under a threshold)"
                if error.audits == 0
                else f"{error.errors}/{error.audits} = {_pct(error.interval.estimate)} ({level} CI "
                f"{_pct(error.interval.low)} .. {_pct(error.interval.high)})",
                None if error.audits == 0 else error.interval.estimate <= self.alpha,
            ),
            Target(
                "realised unacceptable-action rate among auto-executed steps (reviews)",
                f"<= alpha = {self.alpha:g} (model error or other; environment left out)",
                "no reviews"
                if realised.estimate is None
                else f"{realised.errors}/{realised.reviewed} = {_pct(realised.estimate)} ({level} CI "
                f"{_pct(realised.low)} .. {_pct(realised.high)}; {realised.sessions} sessions, design effect "
                f"{realised.design_effect:g})",
                realised.within(self.alpha),
            ),
        ]

    # ---- output -------------------------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return {
            "summary": self.summary(),
            "targets": [asdict(t) for t in self.targets()],
            "slices": [{**asdict(s), "automation": s.automation} for s in self.slices],
            "events": self.events,
            "blockers": self.blockers,
            "headline": self.headline(),
            "headline_accept_label": self.headline("accept"),
            "run": self.run,
            "notes": self.notes,
        }

    def blocker_markdown(self, limit: int = 15) -> list[str]:
        """The ranked blocker table (why sessions needed a human) as markdown lines."""
        lines = ["### Why sessions needed a human", ""]
        if not self.blockers:
            return [*lines, "No blocker recorded (every session ran without a human, or none was measured)."]
        return lines + _blocker_lines(self.blockers, len(self.sessions), limit)

    def markdown(self, title: str = "Autopilot phase") -> str:
        s = self.summary()
        n = s["sessions"]
        quality = s["correct_resolution"]
        steps = s["steps"]
        level = f"{self.confidence:.0%}"
        lines = [f"## {title}", ""]
        lines += [f"- {note}" for note in self.notes]
        if self.notes:
            lines.append("")
        lines += [
            "| measure | autopilot | all-manual (same cases) |",
            "|---|---:|---:|",
            f"| sessions | {n} | {n} |",
            f"| fully automated (no human step) | {_pct(s['fully_automated'])} ({s['fully_automated_sessions']}) | 0% |",
            f"| steps executed in the background | {_pct(s['step_automation'])} ({steps['executed']} of "
            f"{steps['executed'] + steps['deferred'] + steps['manual']}) | 0% |",
            f"| average handling time (operator s / session) | {s['handling_time_s']['autopilot']:.1f} | "
            f"{s['handling_time_s']['all_manual']:.1f} |",
            f"| correct resolution | {_pct(quality['autopilot']['estimate'])} ({level} CI "
            f"{_pct(quality['autopilot']['low'])} .. {_pct(quality['autopilot']['high'])}) | "
            f"{_pct(quality['all_manual']['estimate'])} ({level} CI {_pct(quality['all_manual']['low'])} .. "
            f"{_pct(quality['all_manual']['high'])}) |",
            "",
            "Session ends: " + ", ".join(f"{k} {v}" for k, v in s["statuses"].items()) + ". "
            f"Latency: deferral (published -> operator inbox) p50 {_ms(self.publish_latency_ms, 'p50')}, "
            f"p99 {_ms(self.publish_latency_ms, 'p99')} (from the deferral's creation: p50 "
            f"{_ms(self.deferral_latency_ms, 'p50')}, p99 {_ms(self.deferral_latency_ms, 'p99')}); decision "
            f"(observe -> decision) p50 {_ms(self.decision_latency_ms, 'p50')}, "
            f"p99 {_ms(self.decision_latency_ms, 'p99')}.",
            "",
            f"### Targets ({PAPER})",
            "",
            "| target | goal | measured | met |",
            "|---|---|---|---|",
        ]
        for t in self.targets():
            verdict = "n/a" if t.met is None else ("**met**" if t.met else "**missed**")
            lines.append(f"| {t.name} | {t.goal} | {t.measured} | {verdict} |")
        lines += [
            "",
            "### Slices at the end",
            "",
            "| slice | stage | threshold | labels | executed | deferred | audits (errors) | automated steps |",
            "|---|---|---:|---:|---:|---:|---:|---:|",
        ]
        for sl in sorted(self.slices, key=lambda x: (-(x.executed + x.deferred), x.slice)):
            threshold = "—" if sl.threshold is None else f"{sl.threshold:.4f}"
            lines.append(
                f"| {sl.slice} | {sl.stage} | {threshold} | {sl.labels} | {sl.executed} | {sl.deferred} | "
                f"{sl.audits} ({sl.audit_errors}) | {_pct(sl.automation)} |"
            )
        lines += ["", *self.blocker_markdown(), "", "### Stage events (promotions, demotions, alarms)", ""]
        if not self.events:
            lines.append("none")
        for e in self.events:
            lines.append(
                f"- {e['process_id']}/{e['action_type']}: {e['from']} -> {e['to']} by {e['actor']}: {e['reason']}"
            )
        demotions = [e for e in self.events if e["from"] == "autopilot" and e["to"] != "autopilot"]
        lines += ["", f"Demoted during the run: {len(demotions)} slice(s)."]
        return "\n".join(lines) + "\n"


HEADLINE_ROWS = (
    ("fully_automated", "sessions fully automated (no human step)"),
    ("handling_time_reduction", "handling time saved vs all-manual"),
    ("quality_difference", "correct resolution, autopilot - all-manual"),
    ("quality_difference_low", "... its lower 95% bound"),
    ("quality_difference_ambiguous", "correct resolution on ambiguous cases, autopilot - all-manual"),
    ("quality_difference_ambiguous_low", "... its lower 95% bound"),
    ("ambiguous_sessions", "ambiguous cases (preference left open)"),
    ("realised_error", "realised error among auto-executed steps"),
    ("realised_error_high", "... its upper 95% bound"),
    ("alpha", "alpha"),
    ("coverage_share_of_oracle", "coverage at alpha, share of the oracle's"),
    ("sessions_to_autonomy_new_process", "copilot sessions to autonomy, new process"),
)


def _figure(key: str, value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if key in ("sessions_to_autonomy_new_process", "ambiguous_sessions"):
        return str(value)
    if key.startswith("quality_difference"):
        return f"{float(value) * 100:+.1f} pt"
    return _pct(float(value))


def non_inferiority(headline: Mapping[str, Any]) -> bool | None:
    """The non-inferiority rule on a headline: estimate >= 0 and lower 95% bound >= -3 points (None: not measured)."""
    estimate, low = headline.get("quality_difference"), headline.get("quality_difference_low")
    if estimate is None or low is None:
        return None
    return bool(estimate >= 0.0 and low >= -NON_INFERIORITY_MARGIN)


def critic_figures(results_dir: str | Path, alpha: float, label: str = "operators") -> tuple[dict[str, Any], list[str]]:
    """``coverage_share_of_oracle`` and ``sessions_to_autonomy_new_process`` at ``alpha`` from the critic benches'
    results (``critic_sandbox.json``, ``critic_time_to_autonomy.json``; a ``headline`` object in them wins, and
    for ``label="accept"`` its ``accept_label`` part), each None with a note when a file or figure is missing."""
    import json

    folder = Path(results_dir)
    key = f"{alpha:g}"
    figures: dict[str, Any] = {"coverage_share_of_oracle": None, "sessions_to_autonomy_new_process": None}
    notes: list[str] = []

    def load(name: str) -> dict[str, Any] | None:
        path = folder / name
        if not path.is_file():
            notes.append(f"{name}: not found; run its bench")
            return None
        try:
            data = json.loads(path.read_text())
        except ValueError as error:
            notes.append(f"{name}: unreadable ({error})")
            return None
        return data if isinstance(data, dict) else None

    def headline_of(data: dict[str, Any]) -> dict[str, Any]:
        top = data.get("headline") or {}
        if label == "accept":  # the figures measured under the paper's label, where the bench wrote them
            return {"alpha": top.get("alpha"), **(top.get("accept_label") or {})} if top.get("accept_label") else {}
        return top

    sandbox = load("critic_sandbox.json")
    if sandbox is not None:
        top = headline_of(sandbox)
        # Older files have no headline: their top-level figures are the default label's.
        feature = ((sandbox.get("coverage") or {}).get("feature") or {}) if label != "accept" else {}
        measured_at = top.get("alpha", ((feature.get("thresholds") or {}).get("config") or {}).get("alpha"))
        coverage = top.get("coverage_share_of_oracle", feature.get("share_of_oracle"))
        if measured_at is not None and abs(float(measured_at) - alpha) > 1e-9:
            notes.append(f"critic_sandbox.json: coverage measured at alpha {measured_at:g}, not {key}")
            coverage = None
        elif coverage is None:
            notes.append("critic_sandbox.json: no coverage share of the oracle in it")
        figures["coverage_share_of_oracle"] = coverage
    autonomy = load("critic_time_to_autonomy.json")
    if autonomy is not None:
        sessions = headline_of(autonomy).get("sessions_to_autonomy_new_process")
        if sessions is None and label != "accept":
            sessions = (autonomy.get("first_holding_threshold_sessions") or {}).get(key)
        figures["sessions_to_autonomy_new_process"] = sessions
        if sessions is None:
            notes.append(f"critic_time_to_autonomy.json: no holding threshold for the new process at alpha {key}")
    return figures, notes


def headline_markdown(headline: Mapping[str, Any], accept: Mapping[str, Any] | None = None) -> str:
    """The headline figures as a table, with the accept label's beside them, and the non-inferiority verdict."""
    lines = ["| figure | operators' label (unacceptable = model error or other) | accept label (the paper's) |",
             "|---|---:|---:|"]  # fmt: skip
    for key, name in HEADLINE_ROWS:
        other = "" if accept is None else _figure(key, accept.get(key))
        lines.append(f"| {name} | {_figure(key, headline.get(key))} | {other} |")
    verdicts = {None: "not measured", True: "**pass**", False: "**fail**"}
    lines += [
        "",
        f"Non-inferiority of correct resolution (estimate >= 0 and lower 95% bound >= "
        f"-{NON_INFERIORITY_MARGIN * 100:g} points): {verdicts[non_inferiority(headline)]}"
        + ("" if accept is None else f" (accept label: {verdicts[non_inferiority(accept)]})"),
    ]
    return "\n".join(lines) + "\n"


def _blocker_lines(blockers: Sequence[Mapping[str, Any]], sessions: int, limit: int) -> list[str]:
    interrupted = sum(int(b["sessions"]) for b in blockers)
    lines = [
        f"{interrupted} of {sessions} sessions needed a human; the first rule and slice that stopped each, most "
        "first (deferral: the router's rule; hand_over: the worker's):",
        "",
        "| # | kind | rule | slice | sessions | of interrupted | of all |",
        "|---:|---|---|---|---:|---:|---:|",
    ]
    for i, b in enumerate(blockers[:limit], 1):
        lines.append(
            f"| {i} | {b['kind']} | {b['rule']} | {b['slice']} | {b['sessions']} | {_pct(b['share'])} | "
            f"{_pct(int(b['sessions']) / sessions if sessions else None)} |"
        )
    if len(blockers) > limit:
        rest = sum(int(b["sessions"]) for b in blockers[limit:])
        lines.append(f"| | | {len(blockers) - limit} more | | {rest} | {_pct(rest / interrupted)} | |")
    return lines


def plot_reports(reports: Mapping[str, AutopilotReport], path: str | Path, title: str = "Selective autopilot") -> Path:
    """Per-slice share of steps executed in the background (one bar per report, the slice's final stage in the
    label), and beside it handling time and correct resolution (with Wilson intervals) against all-manual."""
    from matplotlib.figure import Figure

    if not reports:
        raise ValueError("reports: nothing to plot")
    names = list(reports)
    slice_names = sorted(
        {sl.slice for r in reports.values() for sl in r.slices if sl.executed + sl.deferred > 0},
        key=lambda name: (
            -max(
                (sl.executed + sl.deferred for r in reports.values() for sl in r.slices if sl.slice == name), default=0
            )
        ),
    )[:30]
    fig = Figure(figsize=(13.0, max(5.0, 0.28 * len(slice_names) + 2.0)), layout="constrained")
    grid = fig.add_gridspec(2, 2, width_ratios=[1.6, 1.0])
    ax_slices = fig.add_subplot(grid[:, 0])
    ax_time = fig.add_subplot(grid[0, 1])
    ax_quality = fig.add_subplot(grid[1, 1])
    height = 0.8 / len(names)
    y = np.arange(len(slice_names))
    for i, name in enumerate(names):
        by_name = {sl.slice: sl for sl in reports[name].slices}
        values = [by_name[s].automation if s in by_name else 0.0 for s in slice_names]
        ax_slices.barh(y + i * height, values, height=height, label=name)
    labels = []
    for s in slice_names:
        stages = "/".join(next((sl.stage for sl in reports[name].slices if sl.slice == s), "—")[:4] for name in names)
        steps = max(sl.executed + sl.deferred for r in reports.values() for sl in r.slices if sl.slice == s)
        labels.append(f"{s} [{stages}] {steps}")
    ax_slices.set_yticks(y + height * (len(names) - 1) / 2, labels, fontsize="small")
    ax_slices.invert_yaxis()
    ax_slices.set(
        xlabel="steps executed in the background", xlim=(0, 1), title=f"{title}: per slice [final stage] steps"
    )
    ax_slices.legend(fontsize="small", loc="lower right")

    first = next(iter(reports.values()))
    manual_time = sum(m.handling_time_s for m in first.manual) / len(first.manual)
    times = [sum(s.handling_time_s for s in r.sessions) / len(r.sessions) for r in reports.values()]
    ax_time.bar([*names, "all-manual"], [*times, manual_time], color=[*(f"C{i}" for i in range(len(names))), "grey"])
    ax_time.set(ylabel="operator seconds per session", title="average handling time")
    for i, r in enumerate(reports.values()):
        ax_time.annotate(
            f"{-r.handling_reduction.estimate:+.0%}\n{r.fully_automated:.0%} fully auto",
            (i, times[i]),
            ha="center",
            va="bottom",
            fontsize="small",
        )

    rows: list[tuple[str, int, int]] = [
        (name, sum(s.correct for s in r.sessions), len(r.sessions)) for name, r in reports.items()
    ]
    rows.append(("all-manual", sum(m.correct for m in first.manual), len(first.manual)))
    for i, (name, ok, n) in enumerate(rows):
        w = wilson_interval(ok, n)
        color = "grey" if name == "all-manual" else f"C{i}"
        ax_quality.errorbar(
            [i], [w.estimate], yerr=[[w.estimate - w.low], [w.high - w.estimate]], fmt="o", capsize=4, color=color
        )
    ax_quality.set_xticks(range(len(rows)), [r[0] for r in rows])
    ax_quality.set(ylabel="correct resolution (95% Wilson CI)", title="outcome quality")
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png", dpi=110)
    return out
