"""validate_action: valid actions pass on generated screens; each kind of misfit names the right action field."""

from __future__ import annotations

import math
import re
from typing import Any

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from schemas import (
    ActionValidationError,
    ButtonControl,
    ChatControl,
    CheckboxControl,
    ClickControl,
    CloseChat,
    ControlKind,
    DateControl,
    FillField,
    LinkControl,
    NumberControl,
    ScreenSchema,
    SelectControl,
    SelectOption,
    SendTextToChat,
    TableControl,
    TextareaControl,
    TextControl,
    ToggleCheckbox,
    ToolControl,
    TransferChat,
    validate_action,
)
from schemas.actions import Action
from schemas.screen import CLICK_KINDS, VALUE_KINDS
from tests.schemas import strategies as s
from tests.schemas.helpers import assert_invalid


def screen_with(
    *controls: BaseModel | dict[str, Any], queues: tuple[str, ...] = (), codes: tuple[str, ...] = ()
) -> ScreenSchema:
    return ScreenSchema.model_validate(
        {
            "screen_id": "s1",
            "process_id": "p1",
            "controls": [c.model_dump() if isinstance(c, BaseModel) else c for c in controls],
            "transfer_queues": list(queues),
            "resolution_codes": list(codes),
        }
    )


def fresh_id(screen: ScreenSchema, base: str = "missing") -> str:
    taken = {c.id for c in screen.controls}
    candidate, n = base, 0
    while candidate in taken:
        n += 1
        candidate = f"{base}{n}"
    return candidate


def actions_on(control_id: str) -> list[Action]:
    return [
        FillField(control_id=control_id, value="1"),
        SelectOption(control_id=control_id, option="x"),
        ToggleCheckbox(control_id=control_id, checked=True),
        ClickControl(control_id=control_id),
    ]


# --- valid actions pass ---------------------------------------------------------------------------------------


@settings(max_examples=100, deadline=None)
@given(screen=s.screens(), data=st.data())
def test_every_valid_action_passes(screen: ScreenSchema, data: st.DataObject) -> None:
    for strategy in s.valid_action_strategies(screen):
        validate_action(data.draw(strategy), screen)  # raises on failure


def test_valid_action_strategies_cover_every_target() -> None:
    screen = screen_with(
        TextControl(id="t", pattern=r"[0-9]{4}"),
        TextareaControl(id="ta"),
        NumberControl(id="n", minimum=0, maximum=10),
        DateControl(id="d"),
        SelectControl(id="sel", options=["a", "b"]),
        CheckboxControl(id="cb"),
        ButtonControl(id="b"),
        LinkControl(id="l"),
        ToolControl(id="tool", result_panel="lookup"),
        TableControl(id="tab"),
        ChatControl(id="chat"),
        queues=("billing",),
        codes=("solved",),
    )
    # 9 actionable controls + chat + queue + resolution; the table and the chat control itself take no action.
    assert len(s.valid_action_strategies(screen)) == 12


@pytest.mark.parametrize(
    ("control", "value"),
    [
        (NumberControl(id="c", minimum=0, maximum=10), "0"),
        (NumberControl(id="c", minimum=0, maximum=10), "10"),
        (NumberControl(id="c", minimum=0, maximum=10), "2.5"),
        (NumberControl(id="c", minimum=-5), "-5"),
        (NumberControl(id="c"), "-1e9"),
        (DateControl(id="c"), "2024-02-29"),
        (TextControl(id="c", pattern=r"[0-9]{4}"), "1234"),
        (TextControl(id="c", pattern=r"[0-9]{4}"), ""),  # an empty value clears the field: the pattern is not applied
        (TextControl(id="c", max_length=3), "abc"),
        (TextareaControl(id="c"), "line 1\nline 2"),
    ],
)
def test_valid_values(control: BaseModel, value: str) -> None:
    validate_action(FillField(control_id="c", value=value), screen_with(control))


# --- control_id ------------------------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(screen=s.screens())
def test_missing_control_names_control_id(screen: ScreenSchema) -> None:
    for action in actions_on(fresh_id(screen)):
        assert_invalid(action, screen, "control_id")


@settings(max_examples=60, deadline=None)
@given(screen=s.screens(), data=st.data())
def test_disabled_control_names_control_id(screen: ScreenSchema, data: st.DataObject) -> None:
    disabled = [c for c in screen.controls if not c.enabled]
    for control in disabled:
        strategy = s.valid_actions_for_control(control)
        actions = actions_on(control.id) if strategy is None else [data.draw(strategy), *actions_on(control.id)]
        for action in actions:
            assert_invalid(action, screen, "control_id")


@settings(max_examples=60, deadline=None)
@given(screen=s.screens())
def test_action_on_control_of_wrong_kind_names_control_id(screen: ScreenSchema) -> None:
    for control in screen.controls:
        if not control.enabled:
            continue
        if control.kind not in VALUE_KINDS:
            assert_invalid(FillField(control_id=control.id, value="1"), screen, "control_id")
        if control.kind != ControlKind.SELECT:
            assert_invalid(SelectOption(control_id=control.id, option="x"), screen, "control_id")
        if control.kind != ControlKind.CHECKBOX:
            assert_invalid(ToggleCheckbox(control_id=control.id, checked=False), screen, "control_id")
        if control.kind not in CLICK_KINDS:
            assert_invalid(ClickControl(control_id=control.id), screen, "control_id")


# --- option ----------------------------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(control=s.controls_of_kind(ControlKind.SELECT, "sel"), option=s.short_text())
def test_unknown_option_names_option(control: SelectControl, option: str) -> None:
    assume(option not in control.options)
    screen = screen_with(control.model_copy(update={"enabled": True}))
    assert_invalid(SelectOption(control_id="sel", option=option), screen, "option")


def test_option_match_is_exact() -> None:
    screen = screen_with(SelectControl(id="sel", options=["Gold"]))
    validate_action(SelectOption(control_id="sel", option="Gold"), screen)
    for option in ["gold", "Gold ", "Gol", ""]:
        assert_invalid(SelectOption(control_id="sel", option=option), screen, "option")


# --- value -----------------------------------------------------------------------------------------------------


def _not_a_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return True
    return False


@settings(max_examples=60, deadline=None)
@given(control=s.controls_of_kind(ControlKind.NUMBER, "n"), text=s.short_text().filter(_not_a_float))
def test_non_numeric_value_names_value(control: NumberControl, text: str) -> None:
    screen = screen_with(control.model_copy(update={"enabled": True}))
    assert_invalid(FillField(control_id="n", value=text), screen, "value")


@settings(max_examples=60, deadline=None)
@given(control=s.controls_of_kind(ControlKind.NUMBER, "n"), excess=s.finite_floats(1e-3, 1e6))
def test_out_of_range_value_names_value(control: NumberControl, excess: float) -> None:
    assume(control.minimum is not None or control.maximum is not None)
    screen = screen_with(control.model_copy(update={"enabled": True}))
    if control.maximum is not None:
        above = control.maximum + excess
        assume(above > control.maximum)
        assert_invalid(FillField(control_id="n", value=repr(above)), screen, "value")
    if control.minimum is not None:
        below = control.minimum - excess
        assume(below < control.minimum)
        assert_invalid(FillField(control_id="n", value=repr(below)), screen, "value")


@pytest.mark.parametrize("value", ["nan", "NaN", "inf", "-inf", "Infinity"])
@pytest.mark.parametrize(("minimum", "maximum"), [(0.0, 10.0), (None, None)])
def test_non_finite_numbers_are_rejected(value: str, minimum: float | None, maximum: float | None) -> None:
    assert not math.isfinite(float(value))
    screen = screen_with(NumberControl(id="n", minimum=minimum, maximum=maximum))
    assert_invalid(FillField(control_id="n", value=value), screen, "value")


@pytest.mark.parametrize(
    "value",
    ["", "2024-02-30", "2023-02-29", "2024-13-01", "2024-00-10", "24-01-01", "2024-1-1", "20240101", "2024-W01-1",
     "2024-01-01T00:00", "01/02/2024", "tomorrow", "2024-01-01 ", "２０２４-01-01"],
)  # fmt: skip
def test_bad_date_names_value(value: str) -> None:
    assert_invalid(FillField(control_id="d", value=value), screen_with(DateControl(id="d")), "value")


@settings(max_examples=60, deadline=None)
@given(control=s.controls_of_kind(ControlKind.TEXT, "t"), value=s.short_text(min_size=1, max_size=12))
def test_pattern_mismatch_names_value(control: TextControl, value: str) -> None:
    assume(control.pattern is not None)
    assert control.pattern is not None
    assume(re.fullmatch(control.pattern, value) is None)
    screen = screen_with(control.model_copy(update={"enabled": True, "max_length": 200}))
    assert_invalid(FillField(control_id="t", value=value), screen, "value")


@settings(max_examples=50, deadline=None)
@given(max_length=st.integers(1, 50), extra=st.integers(1, 20), kind=st.sampled_from(["text", "textarea"]))
def test_too_long_value_names_value(max_length: int, extra: int, kind: str) -> None:
    screen = screen_with({"kind": kind, "id": "t", "max_length": max_length})
    validate_action(FillField(control_id="t", value="x" * max_length), screen)
    assert_invalid(FillField(control_id="t", value="x" * (max_length + extra)), screen, "value")


# --- queue / resolution / chat ---------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(screen=s.screens(), name=s.nonempty_text(max_size=12))
def test_unknown_queue_and_resolution(screen: ScreenSchema, name: str) -> None:
    if name not in screen.transfer_queues:
        assert_invalid(TransferChat(queue=name), screen, "queue")
    if name not in screen.resolution_codes:
        assert_invalid(CloseChat(resolution=name), screen, "resolution")
    # a queue is not a resolution code and vice versa
    for queue in screen.transfer_queues:
        if queue not in screen.resolution_codes:
            assert_invalid(CloseChat(resolution=queue), screen, "resolution")
    for code in screen.resolution_codes:
        if code not in screen.transfer_queues:
            assert_invalid(TransferChat(queue=code), screen, "queue")


@settings(max_examples=60, deadline=None)
@given(screen=s.screens(), text=s.nonempty_text())
def test_chat_needs_an_enabled_chat(screen: ScreenSchema, text: str) -> None:
    action = SendTextToChat(text=text)
    if screen.chat_enabled:
        validate_action(action, screen)
        without = screen.model_copy(update={"controls": [c for c in screen.controls if c.kind != ControlKind.CHAT]})
        assert_invalid(action, without, "type")
    else:
        assert_invalid(action, screen, "type")


def test_disabled_chat_is_no_chat() -> None:
    assert_invalid(SendTextToChat(text="hi"), screen_with(ChatControl(id="chat", enabled=False)), "type")
    validate_action(SendTextToChat(text="hi"), screen_with(ChatControl(id="chat")))


def test_error_is_a_value_error_with_reason() -> None:
    with pytest.raises(ValueError, match=r"^queue: 'nowhere' is not a transfer queue") as excinfo:
        validate_action(TransferChat(queue="nowhere"), screen_with())
    assert isinstance(excinfo.value, ActionValidationError)
    assert excinfo.value.reason.startswith("'nowhere'")
