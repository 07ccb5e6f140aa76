"""Every payload survives JSON (and python-mode) dump -> validate unchanged, nested Action unions and etag included."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from schemas import (
    Deferral,
    FeedbackRecord,
    OperatorDecision,
    ScreenSchema,
    Trace,
    UIState,
    parse_action,
)
from schemas.export import EXPORTED
from tests.schemas import strategies as s


def assert_round_trips(obj: BaseModel) -> None:
    model = type(obj)
    via_json = model.model_validate_json(obj.model_dump_json())
    assert via_json == obj
    assert via_json.model_dump_json() == obj.model_dump_json()
    assert model.model_validate(obj.model_dump()) == obj
    assert model.model_validate(obj.model_dump(mode="json")) == obj


def test_every_exported_payload_has_a_strategy() -> None:
    assert set(EXPORTED.values()) == set(s.PAYLOADS)


@settings(max_examples=60, deadline=None)
@given(payload=st.one_of(*s.PAYLOADS.values()))
def test_payload_round_trip(payload: BaseModel) -> None:
    assert_round_trips(payload)


@settings(max_examples=40, deadline=None)
@given(screen=s.screens())
def test_screen_round_trip(screen: ScreenSchema) -> None:
    assert_round_trips(screen)


@settings(max_examples=40, deadline=None)
@given(state=s.ui_states())
def test_state_round_trip_keeps_etag_and_actions(state: UIState) -> None:
    back = UIState.model_validate_json(state.model_dump_json())
    assert back.etag == state.etag == state.content_hash()
    assert back.recent_actions == state.recent_actions
    assert [type(a) for a in back.recent_actions] == [type(a) for a in state.recent_actions]
    assert_round_trips(state)


@settings(max_examples=40, deadline=None)
@given(deferral=s.deferrals())
def test_deferral_round_trip(deferral: Deferral) -> None:
    assert_round_trips(deferral)
    assert Deferral.model_validate_json(deferral.model_dump_json()).state.etag == deferral.proposal.state_etag


@settings(max_examples=40, deadline=None)
@given(record=s.feedback_records())
def test_feedback_round_trip(record: FeedbackRecord) -> None:
    assert_round_trips(record)


@settings(max_examples=40, deadline=None)
@given(answer=s.operator_decisions())
def test_operator_decision_round_trip(answer: OperatorDecision) -> None:
    assert_round_trips(answer)


@settings(max_examples=30, deadline=None)
@given(trace=s.traces())
def test_trace_round_trip(trace: Trace) -> None:
    assert_round_trips(trace)


@settings(max_examples=100, deadline=None)
@given(action=s.actions())
def test_action_round_trip(action: Any) -> None:
    assert parse_action(action.model_dump()) == action
    assert parse_action(action.model_dump(mode="json")) == action
    assert parse_action(action.model_dump_json()) == action
    assert parse_action(action.model_dump_json().encode()) == action
    assert type(parse_action(action.model_dump())) is type(action)
