"""Offline evaluation on hand-built traces and a fake predictor whose every prediction is known."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Self

import pytest

from policy.evaluate import (
    EvalResult,
    StepScore,
    action_value,
    evaluate,
    normalise_value,
    render_table,
    selective_accuracy,
    step_success,
    token_f1,
)
from policy.predictor import Prediction
from schemas.actions import (
    Action,
    ClickControl,
    CloseChat,
    FillField,
    SelectOption,
    SendTextToChat,
    ToggleCheckbox,
    TransferChat,
)
from schemas.screen import ButtonControl, ChatControl, ScreenSchema, TextControl
from schemas.state import UIState
from schemas.trace import Trace, TraceSource, TraceStep

Row = tuple[Action, Action, float, float | None]  # gold, predicted, confidence, bayes_p


def _trace(case: str, process: str, rows: Sequence[Action | Row]) -> Trace:
    screen = ScreenSchema(
        screen_id="s",
        process_id=process,
        controls=[ChatControl(id="chat"), TextControl(id="email"), ButtonControl(id="a"), ButtonControl(id="b")],
        resolution_codes=["done"],
    )
    golds = [row[0] if isinstance(row, tuple) else row for row in rows]
    steps = []
    for i, row in enumerate(rows):
        bayes = row[3] if isinstance(row, tuple) else None
        state = UIState(
            session_id=case, case_id=case, process_id=process, screen=screen, recent_actions=golds[:i], step=i
        )
        steps.append(
            TraceStep(
                step=i,
                state=state,
                action=golds[i],
                bayes_p=bayes,
                bayes_type_p=None if bayes is None else 1.0,
            )
        )
    return Trace(trace_id=case, source=TraceSource.SANDBOX, case_id=case, process_id=process, steps=steps)


A, B = ClickControl(control_id="a"), ClickControl(control_id="b")
DONE = CloseChat(resolution="done")

# case -> process, rows of (gold, predicted, confidence, bayes_p); the expected numbers are worked out in the tests
CASES: dict[str, tuple[str, list[Row]]] = {
    "t1": (
        "p1",
        [
            (A, A, 0.9, 0.5),  # all right
            (SendTextToChat(text="Hello, Ann!"), SendTextToChat(text="hello ann"), 0.8, 0.7),  # step success only
            (FillField(control_id="email", value="a@b.com"), FillField(control_id="email", value="x@y.com"), 0.3, 0.9),
            (DONE, DONE, 0.7, 1.0),
        ],
    ),
    "t2": (
        "p2",
        [
            (A, B, 0.6, None),  # right type, wrong target
            (SendTextToChat(text="your order is late"), A, 0.2, None),  # wrong type: value F1 0
            (SendTextToChat(text="the order shipped today"), SendTextToChat(text="your order shipped"), 0.5, None),
        ],
    ),
    "t3": ("p1", [(A, A, 0.9, None)]),
}
TEST = [_trace(case, process, rows) for case, (process, rows) in CASES.items()]
PREDICTED = {(case, i): (row[1], row[2]) for case, (_, rows) in CASES.items() for i, row in enumerate(rows)}
# training: p1 traces open "click a, send", never followed by a fill; p2 never seen
TRAIN = [_trace("r1", "p1", [A, SendTextToChat(text="hi"), B])]


class Fake:
    """Predicts the table above; records the size of every predict call."""

    name = "fake"

    def __init__(self, extra: int = 0) -> None:
        self.batches: list[int] = []
        self.extra = extra

    def fit(self, traces: Sequence[Trace]) -> Self:
        return self

    def predict(self, states: Sequence[UIState]) -> list[Prediction]:
        self.batches.append(len(states))
        out = [Prediction(*PREDICTED[s.case_id, s.step]) for s in states]
        return out + out[: self.extra]


def test_metrics_on_known_predictions() -> None:
    result = evaluate(Fake(), TEST, TRAIN)
    o = result.overall
    assert (o.steps, result.sessions) == (8, 3)
    assert o.tool_accuracy == pytest.approx(7 / 8)
    assert o.action_accuracy == pytest.approx(3 / 8)
    assert o.step_success == pytest.approx(4 / 8)
    assert result.session_success == pytest.approx(1 / 3)  # only t3 has every step right
    # sends: exact tokens (1), not a send (0), "your order shipped" vs "the order shipped today" (P 2/3, R 1/2)
    assert o.send_steps == 3
    assert o.value_f1 == pytest.approx((1 + 0 + 4 / 7) / 3)
    # the ceiling over the steps that carry it (t1's)
    assert (o.ceiling_steps, o.ceiling_action, o.ceiling_type) == (4, pytest.approx(3.1 / 4), pytest.approx(1.0))


def test_breakdowns_per_process_type_and_prefix() -> None:
    result = evaluate(Fake(), TEST, TRAIN)
    assert {p: (m.steps, m.action_accuracy) for p, m in result.per_process.items()} == {
        "p1": (5, pytest.approx(3 / 5)),
        "p2": (3, 0.0),
    }
    assert {t: (m.steps, m.action_accuracy) for t, m in result.per_action_type.items()} == {
        "click_control": (3, pytest.approx(2 / 3)),
        "close_chat": (1, 1.0),
        "fill_field": (1, 0.0),
        "send_text_to_chat": (3, 0.0),
    }
    assert result.per_process["p2"].ceiling_action is None and result.per_process["p2"].value_f1 is not None
    assert result.per_action_type["click_control"].value_f1 is None
    # seen: t1 steps 0-2 (prefixes (), "a", "a chat") and t3 step 0; unseen: t1 step 3 (after a fill) and all
    # of p2 (no training trace of that process)
    assert result.seen_prefix is not None and result.unseen_prefix is not None
    assert (result.seen_prefix.steps, result.seen_prefix.action_accuracy) == (4, pytest.approx(2 / 4))
    assert (result.unseen_prefix.steps, result.unseen_prefix.action_accuracy) == (4, pytest.approx(1 / 4))
    assert evaluate(Fake(), TEST).seen_prefix is None  # no training traces, no split


def test_selective_accuracy_takes_the_most_confident_steps() -> None:
    result = evaluate(Fake(), TEST, coverages=(0.25, 0.5, 1.0))
    points = {p.coverage: (p.steps, p.threshold, p.action_accuracy) for p in result.selective}
    # confidences: 0.9 right, 0.9 right, 0.8 wrong, 0.7 right, then only wrong ones
    assert points == {
        0.25: (2, 0.9, 1.0),
        0.5: (4, 0.7, pytest.approx(3 / 4)),
        1.0: (8, 0.2, pytest.approx(3 / 8)),
    }


def test_selective_accuracy_counts_ties_at_their_mean() -> None:
    def score(ok: bool, confidence: float) -> StepScore:
        return StepScore("t", 0, "p", "click_control", ok, ok, ok, None, confidence, None, None, None)

    scores = [score(True, 0.5), score(False, 0.5), score(False, 0.5), score(False, 0.5), score(True, 0.9)]
    assert selective_accuracy(scores, 0.2).action_accuracy == 1.0  # the 0.9 step
    # k = round(0.6 * 5) = 3: the 0.9 step and 2 of the 4 tied steps, which are right a quarter of the time
    assert selective_accuracy(scores, 0.6).action_accuracy == pytest.approx((1 + 2 * 0.25) / 3)
    assert selective_accuracy(list(reversed(scores)), 0.6) == selective_accuracy(scores, 0.6)
    with pytest.raises(ValueError, match="coverage"):
        selective_accuracy(scores, 0.0)


def test_predict_is_called_in_batches_and_must_answer_each_state() -> None:
    fake = Fake()
    evaluate(fake, TEST, batch_size=3)
    assert fake.batches == [3, 3, 2]
    with pytest.raises(ValueError, match="9 predictions for 8 states"):
        evaluate(Fake(extra=1), TEST, batch_size=100)


def test_min_prefix_skips_the_first_steps() -> None:
    result = evaluate(Fake(), TEST, min_prefix=1)
    assert (result.overall.steps, result.sessions, result.min_prefix) == (5, 2, 1)  # t3 has no step left
    assert result.overall.action_accuracy == pytest.approx(1 / 5)
    with pytest.raises(ValueError, match="no test steps"):
        evaluate(Fake(), TEST, min_prefix=10)


def test_result_is_json_and_renders_side_by_side() -> None:
    result = evaluate(Fake(), TEST, TRAIN)
    data = json.loads(result.model_dump_json())
    assert data["overall"]["steps"] == 8 and data["per_action_type"]["close_chat"]["action_accuracy"] == 1.0
    assert EvalResult.model_validate_json(result.model_dump_json()) == result
    other = result.model_copy(update={"predictor": "other"})
    table = render_table({"fake": result, "other": other})
    lines = table.splitlines()
    assert lines[0].startswith("| predictor | steps | tool acc | action acc | step success | session success |")
    assert "| fake | 8 | 0.8750 | 0.3750 | 0.5000 | 0.3333 | 0.5238 |" in table
    assert "| other | 8 |" in table
    assert "| ceiling (sandbox Bayes) | 4 | 1.0000 | 0.7750 |" in table
    assert "| send_text_to_chat | 3 | 0.0000 | 0.0000 | 0.7000 |" in table  # the ceiling of the one send that has it
    assert "| click_control | 3 | 0.6667 | 0.6667 | 0.5000 |" in table
    assert "| p2 | 3 | 0.0000 | 0.0000 | – |" in table  # per process: two processes
    assert "| **all** | 8 | 0.3750 | 0.3750 | 0.7750 |" in table
    assert render_table({}) == ""


def test_values_normalise_and_token_f1() -> None:
    assert normalise_value("  Hello,\n  WORLD!! ") == "hello world"
    assert token_f1("Your order SHIPPED", "the order shipped today") == pytest.approx(4 / 7)
    assert token_f1("", "") == 1.0 and token_f1("a", "") == 0.0 and token_f1("x y", "z") == 0.0
    assert [
        action_value(a)
        for a in (A, ToggleCheckbox(control_id="c", checked=False), SelectOption(control_id="s", option="Plus"))
    ] == ["", "off", "Plus"]
    assert step_success(SelectOption(control_id="s", option="plus"), SelectOption(control_id="s", option="Plus."))
    assert not step_success(SelectOption(control_id="t", option="plus"), SelectOption(control_id="s", option="plus"))
    assert not step_success(TransferChat(queue="billing"), TransferChat(queue="tier2"))
    assert not step_success(ClickControl(control_id="done"), CloseChat(resolution="done"))


def test_best_policy_accuracy_per_gold_type_counts_its_hits_not_its_probabilities() -> None:
    """At both steps the best possible policy says "click a" with 0.8: it is right where the operator clicked and
    wrong where they closed. Per gold type the mean bayes_p says 0.8 for both; the hits say 1 and 0."""
    trace = _trace("h", "p1", [(A, A, 0.9, 0.8), (DONE, A, 0.9, 0.8)])
    steps = [
        step.model_copy(update={"bayes_hit": hit, "bayes_type_hit": hit})
        for step, hit in zip(trace.steps, (True, False), strict=True)
    ]
    trace = trace.model_copy(update={"steps": steps})

    class Clicks(Fake):
        def predict(self, states: Sequence[UIState]) -> list[Prediction]:
            return [Prediction(A, 0.9) for _ in states]

    result = evaluate(Clicks(), [trace])
    click, close = result.per_action_type["click_control"], result.per_action_type["close_chat"]
    assert (click.ceiling_action, click.bayes_action_accuracy) == (pytest.approx(0.8), 1.0)
    assert (close.ceiling_action, close.bayes_action_accuracy) == (pytest.approx(0.8), 0.0)
    assert (result.overall.ceiling_action, result.overall.bayes_steps) == (pytest.approx(0.8), 2)
    assert result.overall.bayes_action_accuracy == pytest.approx(0.5)
    table = render_table({"clicks": result})
    assert "| gold action type | steps | clicks action acc | ceiling | best policy |" in table
    assert "| close_chat | 1 | 0.0000 | 0.8000 | 0.0000 |" in table
    # traces without the hits (older ones, other sources) keep the table as it was
    assert "best policy |" not in render_table({"fake": evaluate(Fake(), TEST, TRAIN)})
