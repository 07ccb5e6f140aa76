"""The combined policy: routing and calibration logic, never worse than its best member where one is clearly
better, few cases fall back to the n-gram, proposals like the LM's, and a save/load round trip."""

from __future__ import annotations

import itertools
import json
import random
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from importers.eventlog import RawCase, RawEvent, activity_screen, case_trace
from policy.baselines.floors import SuffixNGram
from policy.baselines.gbm import OTHER, GradientBoostingBaseline
from policy.calibration import IsotonicCalibrator, expected_calibration_error
from policy.censoring import CensoringHorizon
from policy.combined import CombinedPolicy, choose_blend, load_policy, time_split
from policy.evaluate import evaluate
from policy.policy import LMPolicy
from policy.predictor import NextActionPredictor
from policy.report import compare_with_floors
from policy.routing import ROOT, choose_routes, clearly_better, group_path, length_bucket
from policy.saved import is_policy_dir
from policy.serialise import is_activity_log
from schemas.actions import ClickControl, action_key, validate_action
from schemas.state import ChatMessage, ChatRole
from schemas.trace import Trace, TraceSource

SCREEN = activity_screen("toy", ["open", "fix", "escalate", "review", "close"])
START = datetime(2021, 3, 1, 9, 0, tzinfo=UTC)


def _case(i: int, rng: random.Random) -> Trace:
    """Case ``i``: open, then fix or escalate as the case attribute ``kind`` says (the activity prefix alone
    gets that step half right, a model of the attributes all of it), a review now and then, then close."""
    kind = rng.choice(["hardware", "software"])
    activities = ["open", "fix" if kind == "hardware" else "escalate"]
    if rng.random() < 0.3:
        activities.append("review")
    activities.append("close")
    moment = START + timedelta(hours=i)
    events = [
        RawEvent(activity=a, timestamp=moment + timedelta(minutes=10 * j), resource=None, attributes={"team": "t1"})
        for j, a in enumerate(activities)
    ]
    raw = RawCase(case_id=f"c{i:04d}", attributes={"kind": kind}, events=events)
    return case_trace(raw, screen=SCREEN, source=TraceSource.XES, source_file="toy.xes")


@pytest.fixture(scope="module")
def toy() -> tuple[list[Trace], list[Trace]]:
    rng = random.Random(5)
    traces = [_case(i, rng) for i in range(400)]
    return traces[:300], traces[300:]


def _accuracy(predictor: NextActionPredictor, test: list[Trace]) -> float:
    return evaluate(predictor, test, min_prefix=0).overall.action_accuracy


# ---- routing -----------------------------------------------------------------------------------------------


def test_length_buckets_cover_every_length_once() -> None:
    labels = [length_bucket(n) for n in range(40)]
    assert labels[:4] == ["0", "1", "2", "3-4"] and labels[4] == "3-4" and labels[39] == "21+"
    assert len(set(labels)) == 8


def test_a_clear_win_is_needed_to_leave_the_parent_choice() -> None:
    incumbent = np.array([True] * 50 + [False] * 50)
    assert clearly_better(incumbent, incumbent, 1.64) == 0.0
    slightly = incumbent.copy()
    slightly[50:55] = True
    slightly[:3] = False  # 5 steps won, 3 lost: within noise
    assert clearly_better(slightly, incumbent, 1.64) == 0.0
    clearly = incumbent.copy()
    clearly[50:70] = True
    assert clearly_better(clearly, incumbent, 1.64) == 20.0


def test_routing_picks_the_better_predictor_per_group_and_inherits_below_min_steps() -> None:
    rng = np.random.default_rng(0)
    n = 400
    paths = [(ROOT, "p", "p/s", "p/s/len 0") if i < 200 else (ROOT, "p", "p/s", "p/s/len 1") for i in range(n)]
    paths += [(ROOT, "p", "p/s", "p/s/len 2")] * 10  # too few steps to decide on: inherits
    n = len(paths)
    ngram = rng.random(n) < 0.6
    gbm = ngram.copy()
    gbm[200:400] = rng.random(200) < 0.95  # clearly better on the second group only
    gbm[:200] = rng.random(200) < 0.3  # clearly worse on the first
    routing = choose_routes(paths, {"ngram": ngram, "gbm": gbm}, "ngram")
    assert routing.route(paths[0]) == "ngram"
    assert routing.route(paths[300]) == "gbm"
    assert "p/s/len 2" not in routing.choices
    assert routing.route(paths[-1]) == routing.choices["p/s"]


def test_blend_weights_favour_the_better_member() -> None:
    a, b = ClickControl(control_id="a"), ClickControl(control_id="b")
    good = [[(a, 0.9), (b, 0.1)]] * 30
    bad = [[(b, 0.8), (a, 0.2)]] * 30
    weights, accuracy = choose_blend({"good": good, "bad": bad}, [action_key(a)] * 30, ["good", "bad"])
    assert accuracy == 1.0 and weights[0] > weights[1]


# ---- calibration -------------------------------------------------------------------------------------------


def test_isotonic_calibration_maps_confidence_to_accuracy() -> None:
    rng = np.random.default_rng(1)
    raw = rng.random(4000)
    right = rng.random(4000) < raw**2  # overconfident: P(right) = raw^2
    calibrator = IsotonicCalibrator().fit(list(raw), list(right))
    calibrated = calibrator(raw)
    assert expected_calibration_error(list(calibrated), list(right)) < 0.03
    assert expected_calibration_error(list(raw), list(right)) > 0.1
    assert np.all(np.diff(calibrator(np.linspace(0, 1, 50))) > 0)  # ties broken by the raw confidence
    again = IsotonicCalibrator.from_dict(json.loads(json.dumps(calibrator.to_dict())))
    assert np.array_equal(again(raw), calibrated)


def test_calibration_with_few_steps_is_their_accuracy() -> None:
    calibrator = IsotonicCalibrator().fit([0.9, 0.8, 0.95], [True, False, False])
    assert calibrator(0.99) == pytest.approx(1 / 3, abs=1e-3)


# ---- the combined policy -----------------------------------------------------------------------------------


def test_time_split_holds_out_the_latest_cases(toy: tuple[list[Trace], list[Trace]]) -> None:
    train, _ = toy
    early, late, running = time_split(list(reversed(train)), 0.2)
    assert len(late) == 60 and len(early) == 240
    # only the cases that may still have been running at the log's end (the last one: an hour apart, each
    # under an hour long) start after the held-out ones
    first_held = min(t.attributes["case_start"] for t in late)
    assert sum(t.attributes["case_start"] > first_held for t in early) == running == 1
    # per process: a new process's few (latest) cases are not all held out
    newcomers = [t.model_copy(update={"process_id": "new"}) for t in train[-5:]]
    early, late, _ = time_split(train[:-5] + newcomers, 0.2)
    assert sum(t.process_id == "new" for t in early) == 4 and sum(t.process_id == "new" for t in late) == 1


def _long_case(i: int, cut: datetime) -> Trace:
    """Case ``i`` starts at hour ``i`` and takes 36 hours (four events twelve hours apart); a log extracted at
    ``cut`` holds only the events before it."""
    moment = START + timedelta(hours=i)
    events = [
        RawEvent(activity=a, timestamp=moment + timedelta(hours=12 * j), resource=None, attributes={})
        for j, a in enumerate(["open", "fix", "review", "close"])
    ]
    raw = RawCase(case_id=f"c{i:04d}", events=[e for e in events if e.timestamp < cut])
    return case_trace(raw, screen=SCREEN, source=TraceSource.XES, source_file="toy.xes")


@pytest.mark.parametrize(("cut_hours", "seen_through"), [(200, True), (60, False)])
def test_held_out_cases_are_the_latest_the_log_saw_through(cut_hours: int, seen_through: bool) -> None:
    traces = [_long_case(i, START + timedelta(hours=cut_hours)) for i in range(min(200, cut_hours))]
    horizon = CensoringHorizon.fit(traces, traces)
    assert horizon is not None and horizon.horizon == timedelta(hours=36)
    seen = [t for t in traces if horizon.fully_observed(t)]
    early, late, running = time_split(traces, 0.2)
    assert len(late) == round(0.2 * len(traces)) and len(early) + len(late) == len(traces)
    if seen_through:  # 164 of 200 cases were over when the log was cut: the latest 40 of them are held out
        assert len(seen) == 164 and running == 36
        assert late == seen[-40:]
        policy = CombinedPolicy(lm=False, gbm=False).fit(traces)
        assert policy.report_["possibly_running_cases"] == 36
        assert "(36 later ones, possibly running at its end, only fitted)" in policy.choice_markdown()
    else:  # only 24 of 60 were over: the latest cases are held out, cut or not
        assert len(seen) == 24 and running == 0
        assert late == traces[-12:]


def test_never_worse_than_its_best_member_where_one_is_clearly_better(
    toy: tuple[list[Trace], list[Trace]],
) -> None:
    train, test = toy
    members: list[NextActionPredictor] = [
        SuffixNGram(max_n=1).fit(train),
        SuffixNGram().fit(train),
        GradientBoostingBaseline().fit(train),
    ]
    scores = {m.name: _accuracy(m, test) for m in members}
    assert scores["gbm"] > scores["suffix_ngram_6"] + 0.05  # the case attribute decides a step: GBM is better
    combined = CombinedPolicy(lm=False).fit(train)
    assert _accuracy(combined, test) >= max(scores.values())
    assert combined.routing_ is not None
    step_one = next(s.state for s in test[0].steps if s.state.step == 1)
    assert combined.routing_.route(group_path(step_one)).startswith(("gbm", "blend"))
    assert "gbm" in combined.choice_markdown()


def test_few_cases_fall_back_to_the_ngram(toy: tuple[list[Trace], list[Trace]]) -> None:
    train, test = toy
    combined = CombinedPolicy(lm=False).fit(train[:5])
    assert combined.routing_ is not None
    assert combined.routing_.routes_used() <= {"bigram", "ngram", "ngram_start"}
    ngram = SuffixNGram(max_n=1).fit(train[:5])
    assert _accuracy(combined, test) >= _accuracy(ngram, test) - 0.02
    single = CombinedPolicy(lm=False).fit(train[:1])  # nothing to hold out: the n-gram answers
    assert single.predict([test[0].steps[1].state])[0].action is not None
    report = single.choice_markdown()  # nothing held out, nothing scored: dashes, not "None"
    assert "held-out accuracy –" in report and "None" not in report


def test_proposals_are_valid_ranked_and_calibrated(toy: tuple[list[Trace], list[Trace]]) -> None:
    train, test = toy
    combined = CombinedPolicy(lm=False).fit(train)
    states = [s.state for t in test[:20] for s in t.steps]
    proposals = combined.propose_batch(states, k=3)
    for state, proposal in zip(states, proposals, strict=True):
        assert proposal is not None and proposal.state_etag == state.etag
        assert proposal.model_version == combined.version_
        ranked = [proposal.features, *[a.features for a in proposal.alternatives]]
        assert [f.rank for f in ranked] == list(range(len(ranked)))
        assert all(x.probability >= y.probability for x, y in itertools.pairwise(ranked))
        assert 0.0 <= proposal.features.probability <= 1.0 and proposal.features.logprob <= 0.0
        for action in [proposal.action, *[a.action for a in proposal.alternatives]]:
            validate_action(action, state.screen)


def test_save_load_round_trip_with_the_lm(toy: tuple[list[Trace], list[Trace]], tmp_path: Path) -> None:
    train, test = toy
    combined = CombinedPolicy(time_budget_s=25, min_lm_budget_s=15, lm_threads=1).fit(train[:120])
    assert combined.lm_ is not None, combined.report_["left_out"]
    combined.save(tmp_path / "policy")
    loaded = load_policy(tmp_path / "policy")
    assert isinstance(loaded, CombinedPolicy)
    assert loaded.version_ == combined.version_ and loaded.routing_ == combined.routing_
    states = [s.state for t in test[:15] for s in t.steps]
    before, after = combined.predict(states), loaded.predict(states)
    assert [(p.action, round(p.confidence, 9)) for p in before] == [(p.action, round(p.confidence, 9)) for p in after]
    first, again = combined.propose_batch(states[:5]), loaded.propose_batch(states[:5])
    assert [p.features if p else None for p in first] == [p.features if p else None for p in again]
    # the LM alone still loads from the same directory (the critic fine-tunes it)
    assert LMPolicy.load(tmp_path / "policy").version_ == combined.lm_.version_
    assert "combined policy" in loaded.choice_markdown().lower()
    # the service and the workers load it the same way, a GPU server's scorer going to the LM
    assert is_policy_dir(tmp_path / "policy") and not is_policy_dir(tmp_path)
    server = object()
    served = load_policy(tmp_path / "policy", scorer=server)  # type: ignore[arg-type]
    assert isinstance(served, CombinedPolicy) and served.lm_ is not None and served.lm_.scorer is server


def test_the_floor_comparison_shows_the_choice(toy: tuple[list[Trace], list[Trace]]) -> None:
    train, test = toy
    combined = CombinedPolicy(lm=False).fit(train)
    report = compare_with_floors(combined, test, train, name="combined policy", batch_size=16)
    assert {"most_frequent_per_screen", "suffix_ngram_6", "combined policy"} <= set(report.results)
    assert "Which predictor answers where" in report.markdown and "**gbm" in report.markdown


def test_the_fit_says_each_phase_when_asked(
    toy: tuple[list[Trace], list[Trace]], capsys: pytest.CaptureFixture[str]
) -> None:
    train, _ = toy
    CombinedPolicy(lm=False).fit(train)
    assert capsys.readouterr().err == ""
    policy = CombinedPolicy(lm=False, progress=True).fit(train)
    lines = capsys.readouterr().err.splitlines()
    assert all(line.startswith("combined policy: ") for line in lines)
    text = "\n".join(lines)
    fitted = policy.report_["members"]
    assert all(f"fitted {name} in " in text for name in fitted)
    assert "held out" in lines[0] and "scoring" in text and "refitted" in text
    assert lines[-1].startswith(f"combined policy: fitted in {policy.report_['fit_s']:.0f} s")


def test_an_activity_log_with_many_actions_keeps_the_gbm_on_the_frequent_ones(
    toy: tuple[list[Trace], list[Trace]],
) -> None:
    train, test = toy
    counts = Counter(action_key(s.action) for t in train for s in t.steps)
    assert len(counts) == 6
    frequent = {key for key, _ in counts.most_common(3)}  # open, close and the end of the case: once per case
    capped = GradientBoostingBaseline(max_classes=3).fit(train)
    assert capped.classes_ == [*sorted(frequent), OTHER]
    ranked = capped.rank([s.state for t in test for s in t.steps], k=10)
    assert all(action_key(action) in frequent for row in ranked for action, _ in row)
    assert any(sum(p for _, p in row) < 0.9 for row in ranked)  # the rarer actions' share stays with OTHER
    with pytest.raises(ValueError, match="max_classes must be at least 1"):
        GradientBoostingBaseline(max_classes=0).fit(train)

    policy = CombinedPolicy(lm=False, gbm_max_classes=3).fit(train)
    assert {"gbm", "gbm_no_timing"} <= set(policy.report_["members"]) and not policy.report_["left_out"]
    assert "classes: the 3 most frequent of 6 distinct actions" in policy.choice_markdown()
    # fix or escalate (what only the case attribute decides) are beyond the GBM's classes: the n-grams answer
    assert _accuracy(policy, test) >= _accuracy(SuffixNGram().fit(train), test) - 0.02


def test_a_chat_process_with_many_actions_leaves_the_gbm_out(toy: tuple[list[Trace], list[Trace]]) -> None:
    train, _ = toy
    hello = ChatMessage(role=ChatRole.CUSTOMER, text="hello")
    chat = [
        t.model_copy(
            update={
                "steps": [s.model_copy(update={"state": s.state.model_copy(update={"chat": [hello]})}) for s in t.steps]
            }
        )
        for t in train
    ]
    assert is_activity_log(train) and not is_activity_log(chat)
    policy = CombinedPolicy(lm=False, gbm_max_classes=3).fit(chat)
    assert policy.report_["left_out"]["gbm"] == "6 distinct actions > gbm_max_classes 3"
    assert not any(name.startswith("gbm") for name in policy.report_["members"])
