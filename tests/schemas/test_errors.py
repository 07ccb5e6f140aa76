"""Validation errors name the offending field (in the error's loc or its message)."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError

from schemas import (
    SCHEMA_VERSION,
    Decision,
    Deferral,
    FeedbackRecord,
    OperatorDecision,
    Payload,
    Proposal,
    QAAnswer,
    QAItem,
    RejectReason,
    RiskPolicy,
    ScreenSchema,
    Trace,
    TraceStep,
    UIState,
    Verdict,
    parse_action,
)
from schemas.export import EXPORTED
from schemas.session import SessionCommand
from tests.schemas import strategies as s
from tests.schemas.helpers import assert_error_names, validation_error

SCREEN: dict[str, Any] = {
    "screen_id": "verify",
    "process_id": "refund",
    "controls": [
        {"kind": "text", "id": "order_id", "pattern": "[0-9]{4}"},
        {"kind": "select", "id": "reason", "options": ["damaged", "late"]},
        {"kind": "button", "id": "submit", "submits": True},
        {"kind": "chat", "id": "chat"},
    ],
    "transfer_queues": ["billing"],
    "resolution_codes": ["refunded"],
}
STATE: dict[str, Any] = {
    "session_id": "sess-1",
    "case_id": "case-1",
    "process_id": "refund",
    "screen": SCREEN,
    "values": {"order_id": "1234", "reason": None},
    "chat": [{"role": "customer", "text": "my parcel is broken"}],
    "recent_actions": [{"type": "fill_field", "control_id": "order_id", "value": "1234"}],
    "step": 2,
}
FEATURES: dict[str, Any] = {"logprob": -0.1, "margin": 0.5, "entropy": 0.3, "probability": 0.9}


def state() -> UIState:
    return UIState.model_validate(STATE)


def proposal(etag: str | None = None) -> dict[str, Any]:
    return {
        "proposal_id": "prop-1",
        "session_id": "sess-1",
        "case_id": "case-1",
        "process_id": "refund",
        "step": 2,
        "state_etag": state().etag if etag is None else etag,
        "action": {"type": "select_option", "control_id": "reason", "option": "damaged"},
        "features": FEATURES,
        "alternatives": [{"action": {"type": "click_control", "control_id": "submit"}, "features": FEATURES}],
    }


def decision(proposal_id: str = "prop-1") -> dict[str, Any]:
    return {
        "decision_id": "dec-1",
        "proposal_id": proposal_id,
        "session_id": "sess-1",
        "state_etag": state().etag,
        "outcome": "defer",
        "slice": {"process_id": "refund", "action_type": "select_option"},
        "stage": "autopilot",
        "tier": "critical",
        "score": 0.4,
        "threshold": 0.8,
        "reason": "below threshold",
    }


def deferral(**changes: Any) -> dict[str, Any]:
    base = {
        "deferral_id": "def-1",
        "session_id": "sess-1",
        "queue": "operators",
        "proposal": proposal(),
        "decision": decision(),
        "state": STATE,
    }
    return {**base, **changes}


def answer(**changes: Any) -> dict[str, Any]:
    base = {"proposal_id": "prop-1", "session_id": "sess-1", "state_etag": state().etag, "operator_id": "op-7"}
    return {**base, **changes}


def feedback(**changes: Any) -> dict[str, Any]:
    base = {
        "record_id": "fb-1",
        "source": "copilot",
        "state": STATE,
        "proposal": proposal(),
        "accepted": True,
        "operator_id": "op-7",
        "slice": {"process_id": "refund", "action_type": "select_option"},
    }
    return {**base, **changes}


def step(n: int) -> dict[str, Any]:
    return {"step": n, "state": STATE, "action": {"type": "click_control", "control_id": "submit"}}


def trace(steps: list[dict[str, Any]]) -> dict[str, Any]:
    return {"trace_id": "t-1", "source": "sandbox", "case_id": "case-1", "process_id": "refund", "steps": steps}


VALID: dict[type[BaseModel], dict[str, Any]] = {
    ScreenSchema: SCREEN,
    UIState: STATE,
    RiskPolicy: {"overrides": [{"action_type": "close_chat", "tier": "always_ask"}]},
    Proposal: proposal(),
    Decision: decision(),
    Deferral: deferral(),
    OperatorDecision: answer(verdict="accept"),
    FeedbackRecord: feedback(),
    TraceStep: step(0),
    Trace: trace([step(0), step(1)]),
    SessionCommand: {
        "command": "start",
        "session_id": "s-1",
        "case_id": "case-1",
        "process_id": "refund",
        "issued_by": "demo",
    },
    QAItem: {
        "qa_id": "qa-1",
        "session_id": "sess-1",
        "queue": "refund",
        "proposal": proposal(),
        "decision": decision(),
        "state": STATE,
    },
    QAAnswer: {
        "qa_id": "qa-1",
        "proposal_id": "prop-1",
        "session_id": "sess-1",
        "verdict": "reject",
        "reason": "model_error",
        "operator_id": "op-7",
    },
}


# TraceStep is exported but is a nested model (no schema_version of its own).
VERSIONED: list[type[Payload]] = [model for model in VALID if issubclass(model, Payload)]


def test_fixtures_are_valid() -> None:
    assert set(VALID) == set(EXPORTED.values())
    for model, data in VALID.items():
        model.model_validate(data)


# --- UIState / ScreenSchema ------------------------------------------------------------------------------------


def test_wrong_etag_names_etag() -> None:
    good = state().etag
    UIState.model_validate({**STATE, "etag": good})
    validation_error(lambda: UIState.model_validate({**STATE, "etag": "0" * 20}), "etag")
    validation_error(lambda: UIState.model_validate({**STATE, "step": 3, "etag": good}), "etag")


@settings(max_examples=50, deadline=None)
@given(ui_state=s.ui_states(), etag=s.etags())
def test_any_foreign_etag_is_rejected(ui_state: UIState, etag: str) -> None:
    data = ui_state.model_dump()
    if etag == ui_state.etag:
        assert UIState.model_validate({**data, "etag": etag}) == ui_state
    else:
        validation_error(lambda: UIState.model_validate({**data, "etag": etag}), "etag")


def test_duplicate_control_ids_name_controls_and_the_id() -> None:
    controls = [*SCREEN["controls"], {"kind": "checkbox", "id": "reason"}]
    with pytest.raises(ValidationError) as excinfo:
        ScreenSchema.model_validate({**SCREEN, "controls": controls})
    assert_error_names(excinfo, "controls")
    assert_error_names(excinfo, "'reason'")


@settings(max_examples=50, deadline=None)
@given(screen=s.screens(), data=st.data())
def test_duplicate_ids_are_rejected_in_generated_screens(screen: ScreenSchema, data: st.DataObject) -> None:
    if not screen.controls:
        return
    dup = data.draw(st.sampled_from(screen.controls))
    clone = data.draw(s.controls(dup.id))
    dumped = screen.model_dump()
    dumped["controls"].insert(data.draw(st.integers(0, len(screen.controls))), clone.model_dump())
    validation_error(lambda: ScreenSchema.model_validate(dumped), "duplicate control id")


@pytest.mark.parametrize(
    ("control", "field"),
    [
        ({"kind": "text", "id": "has space"}, "id"),
        ({"kind": "text", "id": ""}, "id"),
        ({"kind": "text", "id": "t", "pattern": "[0-9"}, "pattern"),
        ({"kind": "text", "id": "t", "max_length": 0}, "max_length"),
        ({"kind": "select", "id": "sel", "options": []}, "options"),
        ({"kind": "tool", "id": "tool", "result_panel": "bad panel"}, "result_panel"),
        ({"kind": "radio", "id": "r"}, "kind"),
        ({"kind": "text", "id": "t", "placeholder": "x"}, "placeholder"),
    ],
)
def test_bad_control_names_field(control: dict[str, Any], field: str) -> None:
    validation_error(lambda: ScreenSchema.model_validate({**SCREEN, "controls": [control]}), field)


def test_bad_screen_ids_name_field() -> None:
    validation_error(lambda: ScreenSchema.model_validate({**SCREEN, "screen_id": "a/b"}), "screen_id")
    validation_error(lambda: ScreenSchema.model_validate({**SCREEN, "process_id": ""}), "process_id")
    validation_error(lambda: ScreenSchema.model_validate({**SCREEN, "version": 0}), "version")


def test_nested_errors_have_full_location() -> None:
    with pytest.raises(ValidationError) as excinfo:
        UIState.model_validate({**STATE, "chat": [{"role": "bot", "text": "hi"}]})
    assert [e["loc"] for e in excinfo.value.errors()] == [("chat", 0, "role")]
    with pytest.raises(ValidationError) as excinfo:
        UIState.model_validate({**STATE, "recent_actions": [{"type": "fill_field", "control_id": "x"}]})
    assert [e["loc"] for e in excinfo.value.errors()] == [("recent_actions", 0, "fill_field", "value")]


# --- OperatorDecision ------------------------------------------------------------------------------------------

CORRECTION = {"type": "transfer_chat", "queue": "billing"}


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"verdict": "correct", "reason": "model_error"}, "corrected_action"),
        ({"verdict": "correct", "corrected_action": CORRECTION}, "reason"),
        ({"verdict": "accept", "reason": "other"}, "reason"),
        ({"verdict": "accept", "corrected_action": CORRECTION}, "corrected_action"),
        ({"verdict": "reject"}, "reason"),
        ({"verdict": "reject", "reason": "environment", "corrected_action": CORRECTION}, "corrected_action"),
        ({"verdict": "maybe"}, "verdict"),
        ({"verdict": "reject", "reason": "tired"}, "reason"),
        ({"verdict": "accept", "operator_id": ""}, "operator_id"),
        ({"verdict": "accept", "state_etag": ""}, "state_etag"),
        ({"verdict": "correct", "reason": "other", "corrected_action": {"type": "transfer_chat"}}, "queue"),
    ],
)
def test_inconsistent_operator_decision_names_field(changes: dict[str, Any], field: str) -> None:
    validation_error(lambda: OperatorDecision.model_validate(answer(**changes)), field)


@pytest.mark.parametrize("verdict", list(Verdict))
def test_consistent_operator_decisions(verdict: Verdict) -> None:
    changes: dict[str, Any] = {"verdict": verdict}
    if verdict != Verdict.ACCEPT:
        changes["reason"] = RejectReason.MODEL_ERROR
    if verdict == Verdict.CORRECT:
        changes["corrected_action"] = CORRECTION
    decided = OperatorDecision.model_validate(answer(**changes))
    assert decided.verdict == verdict


# --- Deferral / FeedbackRecord ---------------------------------------------------------------------------------


def test_deferral_bound_to_one_state() -> None:
    other = {**STATE, "step": 3}
    validation_error(lambda: Deferral.model_validate(deferral(state=other)), "proposal.state_etag")
    validation_error(lambda: Deferral.model_validate(deferral(proposal=proposal("f" * 20))), "proposal.state_etag")
    validation_error(lambda: Deferral.model_validate(deferral(decision=decision("prop-2"))), "decision.proposal_id")


def test_feedback_proposal_etag_must_match_state() -> None:
    validation_error(lambda: FeedbackRecord.model_validate(feedback(state={**STATE, "step": 9})), "state_etag")
    validation_error(lambda: FeedbackRecord.model_validate(feedback(proposal=proposal("a" * 20))), "state_etag")


def test_feedback_reason_consistency() -> None:
    validation_error(lambda: FeedbackRecord.model_validate(feedback(reason="other")), "reason")
    validation_error(lambda: FeedbackRecord.model_validate(feedback(accepted=False)), "reason")
    FeedbackRecord.model_validate(feedback(accepted=False, reason="other", operator_action=CORRECTION))


# --- Trace -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("numbers", "field"),
    [([1], "steps.0.step"), ([0, 2], "steps.1.step"), ([0, 0], "steps.1.step"), ([1, 0], "steps.0.step")],
)
def test_misnumbered_steps_name_the_step(numbers: list[int], field: str) -> None:
    validation_error(lambda: Trace.model_validate(trace([step(n) for n in numbers])), field)


def test_negative_step_names_field() -> None:
    validation_error(lambda: Trace.model_validate(trace([step(-1)])), "step")


@settings(max_examples=30, deadline=None)
@given(t=s.traces(max_steps=4), data=st.data())
def test_any_renumbering_is_rejected(t: Trace, data: st.DataObject) -> None:
    if not t.steps:
        return
    i = data.draw(st.integers(0, len(t.steps) - 1))
    wrong = data.draw(st.integers(0, 10).filter(lambda n: n != i))
    dumped = t.model_dump()
    dumped["steps"][i]["step"] = wrong
    validation_error(lambda: Trace.model_validate(dumped), "steps.")


# --- schema_version and unknown fields -------------------------------------------------------------------------


@pytest.mark.parametrize("model", VERSIONED)
@pytest.mark.parametrize("version", ["2.0", "0.9", "10.0", "", "v1.0", "2"])
def test_unknown_major_version_names_schema_version(model: type[Payload], version: str) -> None:
    with pytest.raises(ValidationError) as excinfo:
        model.model_validate({**VALID[model], "schema_version": version})
    assert [e["loc"] for e in excinfo.value.errors()] == [("schema_version",)]
    assert version in excinfo.value.errors()[0]["msg"]


@pytest.mark.parametrize("model", VERSIONED)
@pytest.mark.parametrize("version", [SCHEMA_VERSION, "1.7", "1"])
def test_same_major_version_is_accepted(model: type[Payload], version: str) -> None:
    assert model.model_validate({**VALID[model], "schema_version": version}).schema_version == version


def test_nested_payload_version_is_checked() -> None:
    with pytest.raises(ValidationError) as excinfo:
        UIState.model_validate({**STATE, "screen": {**SCREEN, "schema_version": "2.0"}})
    assert [e["loc"] for e in excinfo.value.errors()] == [("screen", "schema_version")]


@pytest.mark.parametrize("model", list(VALID))
def test_unknown_field_is_named(model: type[BaseModel]) -> None:
    with pytest.raises(ValidationError) as excinfo:
        model.model_validate({**VALID[model], "colour": "blue"})
    errors = excinfo.value.errors()
    assert [(e["loc"], e["type"]) for e in errors] == [(("colour",), "extra_forbidden")]


@pytest.mark.parametrize(
    ("path", "loc"),
    [
        (("screen", "controls", 0), ("screen", "controls", 0, "text", "colour")),
        (("panels", "crm"), ("panels", "crm", "colour")),
        (("chat", 0), ("chat", 0, "colour")),
        (("recent_actions", 0), ("recent_actions", 0, "fill_field", "colour")),
    ],
)
def test_unknown_nested_field_is_located(path: tuple[str | int, ...], loc: tuple[str | int, ...]) -> None:
    data: Any = copy.deepcopy({**STATE, "panels": {"crm": {"title": "CRM"}}})
    target = data
    for part in path:
        target = target[part]
    target["colour"] = "blue"
    with pytest.raises(ValidationError) as excinfo:
        UIState.model_validate(data)
    assert [e["loc"] for e in excinfo.value.errors()] == [loc]


def test_action_errors_name_field() -> None:
    with pytest.raises(ValidationError) as excinfo:
        parse_action({"type": "fill_field", "control_id": "a", "value": "b", "extra": 1})
    assert [e["loc"] for e in excinfo.value.errors()] == [("fill_field", "extra")]
    with pytest.raises(ValidationError) as excinfo:
        parse_action({"type": "teleport"})
    assert excinfo.value.errors()[0]["type"] == "union_tag_invalid"
    assert_error_names(excinfo, "type")
    validation_error(lambda: parse_action({"type": "send_text_to_chat", "text": ""}), "text")
    validation_error(lambda: parse_action({"type": "close_chat", "resolution": ""}), "resolution")
    validation_error(lambda: parse_action('{"type": "toggle_checkbox", "control_id": "c"}'), "checked")


@pytest.mark.parametrize(
    ("changes", "loc"),
    [
        ({"logprob": 0.5}, ("features", "logprob")),
        ({"margin": -1}, ("features", "margin")),
        ({"entropy": -0.1}, ("features", "entropy")),
        ({"probability": 1.5}, ("features", "probability")),
        ({"rank": -1}, ("features", "rank")),
    ],
)
def test_bad_features_are_located(changes: dict[str, Any], loc: tuple[str, ...]) -> None:
    with pytest.raises(ValidationError) as excinfo:
        Proposal.model_validate({**proposal(), "features": {**FEATURES, **changes}})
    assert [e["loc"] for e in excinfo.value.errors()] == [loc]


@pytest.mark.parametrize(("field", "value"), [("score", 1.5), ("threshold", -0.1), ("reason", ""), ("tier", "low")])
def test_bad_decision_field_is_located(field: str, value: object) -> None:
    with pytest.raises(ValidationError) as excinfo:
        Decision.model_validate({**decision(), field: value})
    assert [e["loc"] for e in excinfo.value.errors()] == [(field,)]
