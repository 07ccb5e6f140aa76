"""action_key is injective, parse_action inverts model_dump, action_target names the target."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from schemas import (
    Action,
    ActionType,
    ClickControl,
    CloseChat,
    FillField,
    SelectOption,
    SendTextToChat,
    ToggleCheckbox,
    TransferChat,
    action_key,
    parse_action,
)
from schemas.actions import action_target
from tests.schemas import strategies as s

# A small alphabet makes near-collisions (shared prefixes, separators inside values) likely.
TIGHT_IDS = st.sampled_from(["a", "b", "a:b", "a.b", "a-b", "b:a", "fill_field", "a_", "true"])
TIGHT_TEXT = st.text(alphabet="ab:=_ ", max_size=5)


def tight_actions() -> st.SearchStrategy[Action]:
    return st.one_of(
        st.builds(FillField, control_id=TIGHT_IDS, value=TIGHT_TEXT),
        st.builds(SelectOption, control_id=TIGHT_IDS, option=TIGHT_TEXT),
        st.builds(ToggleCheckbox, control_id=TIGHT_IDS, checked=st.booleans()),
        st.builds(ClickControl, control_id=TIGHT_IDS),
        st.builds(SendTextToChat, text=TIGHT_TEXT.filter(bool)),
        st.builds(TransferChat, queue=TIGHT_TEXT.filter(bool)),
        st.builds(CloseChat, resolution=TIGHT_TEXT.filter(bool)),
    )


def assert_injective(actions: list[Action]) -> None:
    by_key: dict[str, Action] = {}
    for action in actions:
        key = action_key(action)
        if key in by_key:
            assert by_key[key] == action, (key, by_key[key], action)
        by_key[key] = action


@settings(max_examples=100, deadline=None)
@given(actions=st.lists(tight_actions(), min_size=2, max_size=30))
def test_action_key_is_injective_on_near_collisions(actions: list[Action]) -> None:
    assert_injective(actions)


@settings(max_examples=100, deadline=None)
@given(actions=st.lists(s.actions(), min_size=2, max_size=20))
def test_action_key_is_injective(actions: list[Action]) -> None:
    assert_injective(actions)


@settings(max_examples=100, deadline=None)
@given(action=st.one_of(s.actions(), tight_actions()))
def test_action_key_is_a_function_of_content(action: Action) -> None:
    again = parse_action(action.model_dump())
    assert again == action
    assert type(again) is type(action)
    assert action_key(again) == action_key(action)
    assert action_key(action).startswith(f"{action.type.value}:")


@settings(max_examples=100, deadline=None)
@given(action=s.actions())
def test_action_target(action: Action) -> None:
    target = action_target(action)
    match action:
        case FillField() | SelectOption() | ToggleCheckbox() | ClickControl():
            assert target == action.control_id
        case SendTextToChat():
            assert target == "chat"
        case TransferChat():
            assert target == action.queue
        case CloseChat():
            assert target == action.resolution
    assert target in action_key(action)


def test_action_keys_are_readable() -> None:
    assert action_key(FillField(control_id="amount", value="12.5")) == "fill_field:amount=12.5"
    assert action_key(SelectOption(control_id="reason", option="late")) == "select_option:reason=late"
    assert action_key(ToggleCheckbox(control_id="vip", checked=False)) == "toggle_checkbox:vip=false"
    assert action_key(ClickControl(control_id="submit")) == "click_control:submit"
    assert action_key(SendTextToChat(text="hello")) == "send_text_to_chat:hello"
    assert action_key(TransferChat(queue="billing")) == "transfer_chat:billing"
    assert action_key(CloseChat(resolution="solved")) == "close_chat:solved"


def test_every_action_type_has_a_model() -> None:
    seen = {type(parse_action(a.model_dump())).model_fields["type"].default for a in _one_of_each()}
    assert seen == set(ActionType)


def _one_of_each() -> list[Action]:
    return [
        FillField(control_id="c", value="v"),
        SelectOption(control_id="c", option="o"),
        ToggleCheckbox(control_id="c", checked=True),
        ClickControl(control_id="c"),
        SendTextToChat(text="t"),
        TransferChat(queue="q"),
        CloseChat(resolution="r"),
    ]
