"""Right-censored test cases: the horizon from training durations, and the split of step scores it gives."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from importers.xes import import_xes
from policy.baselines.floors import SuffixNGram
from policy.baselines.gbm import GradientBoostingBaseline
from policy.censoring import CensoringHorizon, censoring_breakdown
from policy.evaluate import StepScore, evaluate_with_scores
from policy.report import compare_with_floors
from schemas.actions import ClickControl, CloseChat
from schemas.screen import ButtonControl, ScreenSchema
from schemas.state import UIState
from schemas.trace import Trace, TraceSource, TraceStep

EVENTLOGS = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "eventlogs"
T0 = datetime(2012, 1, 1, tzinfo=UTC)
SCREEN = ScreenSchema(screen_id="s", process_id="p", controls=[ButtonControl(id="a")], resolution_codes=["done"])


def _trace(case: str, start_day: float, length_days: float, events: int = 3, timed: bool = True) -> Trace:
    """``events`` clicks spread over ``length_days`` from ``start_day``, then the end of the case."""
    actions = [ClickControl(control_id="a")] * events + [CloseChat(resolution="done")]
    steps = []
    for i, action in enumerate(actions):
        moment = T0 + timedelta(days=start_day + length_days * min(i, events - 1) / max(1, events - 1))
        state = UIState(session_id=case, case_id=case, process_id="p", screen=SCREEN, step=i)
        steps.append(TraceStep(step=i, state=state, action=action, timestamp=moment if timed else None))
    return Trace(trace_id=case, source=TraceSource.XES, case_id=case, process_id="p", steps=steps)


def _score(trace_id: str, step: int, ok: bool) -> StepScore:
    return StepScore(
        trace_id=trace_id,
        step=step,
        process_id="p",
        gold_type="click_control",
        tool_ok=ok,
        action_ok=ok,
        step_ok=ok,
        value_f1=None,
        confidence=0.5,
        bayes_p=None,
        bayes_type_p=None,
        prefix_seen=None,
    )


def test_the_horizon_is_the_quantile_of_training_durations_and_the_log_end_spans_train_and_test() -> None:
    train = [_trace(f"t{i}", start_day=i, length_days=float(i)) for i in range(1, 11)]  # durations 1..10 days
    test = [_trace("early", 30, 2), _trace("late", 38, 2)]  # the log ends on day 40
    horizon = CensoringHorizon.fit(train, test, quantile=0.9)
    assert horizon is not None
    assert horizon.horizon == timedelta(days=9)  # the nearest rank: 9 of the 10 durations are at most 9 days
    assert horizon.log_end == T0 + timedelta(days=40)
    assert horizon.fully_observed(test[0]) is True  # started 10 days before the end
    assert horizon.fully_observed(test[1]) is False  # 2 days: it may have gone on after the extraction
    assert horizon.fully_observed(_trace("untimed", 0, 1, timed=False)) is None


def test_the_breakdown_separates_the_ends_of_possibly_censored_cases() -> None:
    train = [_trace(f"t{i}", start_day=i, length_days=5) for i in range(5)]
    early, late = _trace("early", 20, 2), _trace("late", 28, 2)  # horizon 5 days, log end day 30
    horizon = CensoringHorizon.fit(train, [early, late])
    assert horizon is not None
    # every step right except the end of the late case, which the log may have cut
    scores = [_score("early", i, True) for i in range(4)] + [_score("late", i, i < 3) for i in range(4)]
    breakdown = censoring_breakdown(scores, [early, late], horizon)
    assert breakdown.fully_observed is not None and breakdown.possibly_censored is not None
    assert (breakdown.fully_observed.steps, breakdown.fully_observed.action_accuracy) == (4, 1.0)
    assert (breakdown.possibly_censored.steps, breakdown.possibly_censored.action_accuracy) == (4, 0.75)
    assert breakdown.possibly_censored_end is not None and breakdown.possibly_censored_end.action_accuracy == 0.0
    assert breakdown.fully_observed_end is not None and breakdown.fully_observed_end.steps == 1
    row = breakdown.to_dict()
    assert row["possibly_censored_end_of_case"] == {"steps": 1, "accuracy": 0.0}
    assert row["horizon_days"] == 5.0


def test_zone_less_times_count_as_utc_beside_zoned_ones() -> None:
    train = [_trace(f"t{i}", start_day=i, length_days=5) for i in range(5)]
    late = _trace("late", 28, 2)
    naive = late.model_copy(
        update={
            "steps": [
                s.model_copy(update={"timestamp": s.timestamp and s.timestamp.replace(tzinfo=None)}) for s in late.steps
            ]
        }
    )
    horizon = CensoringHorizon.fit(train, [naive])
    assert horizon is not None and horizon.log_end == T0 + timedelta(days=30)
    assert horizon.fully_observed(naive) is False


def test_untimed_traces_give_no_horizon_and_a_bad_quantile_is_refused() -> None:
    untimed = [_trace("a", 0, 1, timed=False)]
    assert CensoringHorizon.fit(untimed, untimed) is None
    with pytest.raises(ValueError, match="quantile"):
        CensoringHorizon.fit([_trace("a", 0, 1)], [_trace("b", 2, 1)], quantile=1.0)


def test_the_evaluate_report_shows_the_split_for_every_predictor_on_timed_traces() -> None:
    train = [_trace(f"t{i}", start_day=i, length_days=5) for i in range(6)]
    test = [_trace("early", 20, 2), _trace("late", 28, 2)]
    report = compare_with_floors(SuffixNGram().fit(train), test, train, name="n-gram policy")
    assert "## Right-censored test cases" in report.markdown and "90th percentile" in report.markdown
    assert (
        set(report.data["censoring"])
        == set(report.results)
        == {
            "most_frequent_per_screen",
            "suffix_ngram_6",
            "n-gram policy",
        }
    )
    assert report.censoring["n-gram policy"]["possibly_censored"]["steps"] == 4


@pytest.mark.integration
def test_the_latest_cases_of_a_real_log_end_where_the_extraction_cut_them() -> None:
    """BPI 2012 W: the test split's cases started up to six weeks before the log was extracted, and the cases
    the log saw through end where held-out training would predict; the others often end only in the log."""
    names = [EVENTLOGS / f"{split}_BPI_Challenge_2012_W_Complete.xes.gz" for split in ("val", "test")]
    if not all(path.exists() for path in names):
        pytest.skip(f"real data not available: {EVENTLOGS} is missing (the shared data folder sits beside the repo)")
    val, test = (list(import_xes(path, vocabulary_from=names).traces) for path in names)
    horizon = CensoringHorizon.fit(val, test)
    assert horizon is not None and 20 < horizon.horizon.days < 60  # a month, give or take: loan applications
    _, scores = evaluate_with_scores(GradientBoostingBaseline().fit(val), test, min_prefix=1)
    breakdown = censoring_breakdown(scores, test, horizon)
    observed_end, censored_end = breakdown.fully_observed_end, breakdown.possibly_censored_end
    assert observed_end is not None and censored_end is not None
    assert censored_end.steps > 500  # most test cases started within a horizon of the log's end
    assert censored_end.action_accuracy < observed_end.action_accuracy - 0.05
