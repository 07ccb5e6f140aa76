"""Trace generation end to end: deterministic, valid, realistic, and the ceiling means what it says."""

from __future__ import annotations

from collections import Counter, defaultdict
from pathlib import Path

import pytest

from importers.jsonl import read_traces
from sandbox.ceiling import ceiling_table
from sandbox.copilot import run_copilot
from sandbox.generate import generate, iter_traces
from sandbox.operators import operator_pool
from sandbox.platform import SandboxPlatform
from sandbox.scenario import SCENARIOS, Scenario
from sandbox.simulate import step_model, update_posterior
from schemas import Trace, Verdict, action_key, validate_action
from service.cli import main


@pytest.fixture(scope="module")
def traces() -> list[Trace]:
    return iter_traces(400, seed=11)


def test_generation_is_deterministic_for_a_seed(tmp_path: Path) -> None:
    a, b, c = tmp_path / "a.jsonl", tmp_path / "b.jsonl", tmp_path / "c.jsonl"
    generate(30, 7, a, progress=False)
    generate(30, 7, b, progress=False)
    generate(30, 8, c, progress=False)
    assert a.read_bytes() == b.read_bytes()
    assert a.read_bytes() != c.read_bytes()
    assert len(read_traces(a)) == 30


def test_every_step_is_valid_on_its_screen_and_every_case_ends(traces: list[Trace]) -> None:
    for trace in traces:
        assert trace.steps, trace.trace_id
        for step in trace.steps:
            validate_action(step.action, step.state.screen)
            assert step.state.step == step.step
            assert step.bayes_p is not None and step.bayes_type_p is not None
            assert step.bayes_p <= step.bayes_type_p + 1e-9
        assert trace.ground_truth["outcome"]["status"] in ("closed", "transferred"), trace.trace_id
        assert trace.steps[-1].action.type in ("close_chat", "transfer_chat")


def test_mix_covers_every_process_and_the_long_tail_is_rare(traces: list[Trace]) -> None:
    counts = Counter(t.process_id for t in traces)
    assert set(counts) == set(SCENARIOS["default"].mix)
    assert counts["warranty_claim"] < 0.06 * len(traces)


def test_all_manual_quality_and_handling_time_are_realistic(traces: list[Trace]) -> None:
    correct = sum(bool(t.ground_truth["outcome"]["correct"]) for t in traces) / len(traces)
    assert 0.75 < correct < 0.99  # operators guess on ambiguous requests and slip now and then
    ambiguous = [t for t in traces if t.ground_truth["ambiguous"]]
    clear = [t for t in traces if not t.ground_truth["ambiguous"]]
    rate = lambda ts: sum(bool(t.ground_truth["outcome"]["correct"]) for t in ts) / len(ts)  # noqa: E731
    assert rate(ambiguous) < rate(clear)
    seconds = [float(t.attributes["handling_time_s"]) for t in traces]
    assert 40 < sum(seconds) / len(seconds) < 400


def test_held_out_process_never_appears() -> None:
    traces = iter_traces(150, seed=3, scenario=SCENARIOS["new_process"])
    assert "warranty_claim" not in {t.process_id for t in traces}


def test_ceiling_is_the_accuracy_of_the_bayes_optimal_policy() -> None:
    """The mean per-step ceiling must match how often the Bayes-optimal proposal equals what the operator does,
    and each step's recorded hit is whether it did."""
    traces = iter_traces(300, seed=21)
    predicted = 0.0
    hits = 0
    total = 0
    recorded_hits: list[tuple[bool | None, bool | None]] = []
    replayed_hits: list[tuple[bool, bool]] = []
    platform = SandboxPlatform(Scenario(), 21)
    pool = operator_pool(12, 21)
    for trace in traces:
        case_id = platform.open_case(case_index=int(trace.attributes["case_index"]))
        posterior = {op.operator_id: 1 / len(pool) for op in pool}
        for step in trace.steps:
            platform.nudge(case_id)  # the world's own draws, in the order generation made them
            model = step_model(platform, case_id, pool, posterior)
            best = model.best()
            assert best is not None
            hits += int(action_key(best) == action_key(step.action))
            predicted += model.bayes_p
            recorded_hits.append((step.bayes_hit, step.bayes_type_hit))
            replayed_hits.append((action_key(best) == action_key(step.action), model.best_type() == step.action.type))
            total += 1
            posterior = update_posterior(posterior, model, action_key(step.action))
            platform.apply(case_id, step.action)
    assert abs(hits / total - predicted / total) < 0.02, (hits / total, predicted / total)
    # and the recorded per-step ceilings are the same numbers
    recorded = sum(s.bayes_p or 0.0 for t in traces for s in t.steps) / total
    assert abs(recorded - predicted / total) < 1e-3
    assert recorded_hits == replayed_hits
    assert any(not hit for hit, _ in recorded_hits) and any(hit for hit, _ in recorded_hits)
    assert sum(type_hit for _, type_hit in replayed_hits) > hits  # the type is right more often than the action
    rows = {row.group: row for row in ceiling_table(traces)}
    assert rows["all"].best_policy == pytest.approx(hits / total)
    # per the step's own action type the mean bayes_p is not the best policy's accuracy: some type differs
    assert any(abs((row.best_policy or 0.0) - row.action) > 0.02 for row in rows.values())


def test_copilot_acceptance_is_realistic_not_perfect() -> None:
    steps = run_copilot(250, seed=5)
    accepted: dict[str, list[bool]] = defaultdict(list)
    reasons = Counter(s.reason for s in steps if s.reason is not None)
    for s in steps:
        accepted[s.proposed.type.value].append(s.verdict == Verdict.ACCEPT)
    rate = {t: sum(v) / len(v) for t, v in accepted.items()}
    # Even the best possible policy is not always accepted: operators prefer their own wording and order.
    assert rate["send_text_to_chat"] < 0.8
    assert 0.8 < rate["click_control"] < 0.98
    assert 0.8 < rate["transfer_chat"] <= 1.0
    assert {r.value for r in reasons} >= {"acceptable_alternative", "environment", "other"}


def test_cli_generate_and_its_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "t.jsonl"
    assert main(["sandbox", "generate", "--sessions", "5", "--seed", "1", "--out", str(out)]) == 0
    assert len(out.read_text().splitlines()) == 5
    assert "sessions: 5" in capsys.readouterr().out
    assert (
        main(["sandbox", "generate", "--sessions", "5", "--out", str(tmp_path / "x.jsonl"), "--scenario", "nope"]) == 2
    )
    assert "scenario" in capsys.readouterr().err
    assert not (tmp_path / "x.jsonl").exists()
    with pytest.raises(SystemExit) as exit_info:
        main(["sandbox", "generate", "--sessions", "0", "--out", str(tmp_path / "y.jsonl")])
    assert exit_info.value.code == 2
    assert main(["sandbox", "ceiling", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| all |" in printed and "best policy's accuracy" in printed
