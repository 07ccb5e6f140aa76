"""The UIState etag: a content hash that changes with any content and with nothing else."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas import UIState
from schemas.state import CANONICAL_SCREENS, canonical_screen_json
from tests.schemas import strategies as s

Change = Callable[[dict[str, Any], st.DataObject], None]


def rebuilt(data: dict[str, Any]) -> UIState:
    """Validate ``data`` with its etag dropped, so that the etag is recomputed from the content."""
    return UIState.model_validate({k: v for k, v in data.items() if k != "etag"})


def _change_value(d: dict[str, Any], data: st.DataObject) -> None:
    key = data.draw(s.ids())
    missing = object()
    old = d["values"].get(key, missing)
    d["values"][key] = data.draw(s.field_values().filter(lambda v: type(v) is not type(old) or v != old))


def _drop_value(d: dict[str, Any], data: st.DataObject) -> None:
    if d["values"]:
        del d["values"][data.draw(st.sampled_from(sorted(d["values"])))]
    else:
        d["values"]["x"] = None


def _add_chat(d: dict[str, Any], data: st.DataObject) -> None:
    d["chat"].append(data.draw(s.chat_messages()).model_dump())


def _edit_chat(d: dict[str, Any], data: st.DataObject) -> None:
    if not d["chat"]:
        d["chat"].append({"role": "customer", "text": ""})
    else:
        d["chat"][-1]["text"] += "!"


def _add_panel(d: dict[str, Any], data: st.DataObject) -> None:
    key = data.draw(s.ids().filter(lambda k: k not in d["panels"]))
    d["panels"][key] = data.draw(s.panels()).model_dump()


def _edit_panel(d: dict[str, Any], data: st.DataObject) -> None:
    if not d["panels"]:
        d["panels"]["p"] = {"title": "", "fields": {}, "rows": []}
    else:
        panel = d["panels"][sorted(d["panels"])[0]]
        panel["fields"]["k"] = panel["fields"].get("k", "") + "x"


def _step(d: dict[str, Any], data: st.DataObject) -> None:
    d["step"] += data.draw(st.integers(1, 5))


def _screen_title(d: dict[str, Any], data: st.DataObject) -> None:
    d["screen"]["title"] += "*"


def _screen_control(d: dict[str, Any], data: st.DataObject) -> None:
    taken = {c["id"] for c in d["screen"]["controls"]}
    new_id = data.draw(s.ids().filter(lambda i: i not in taken))
    d["screen"]["controls"].append(data.draw(s.controls(new_id)).model_dump())


def _screen_enabled(d: dict[str, Any], data: st.DataObject) -> None:
    if d["screen"]["controls"]:
        control = d["screen"]["controls"][0]
        control["enabled"] = not control["enabled"]
    else:
        d["screen"]["version"] += 1


def _recent_action(d: dict[str, Any], data: st.DataObject) -> None:
    d["recent_actions"].append(data.draw(s.actions()).model_dump())


def _session(d: dict[str, Any], data: st.DataObject) -> None:
    d["session_id"] += "x"


def _case(d: dict[str, Any], data: st.DataObject) -> None:
    d["case_id"] += "x"


CHANGES: list[Change] = [
    _change_value,
    _drop_value,
    _add_chat,
    _edit_chat,
    _add_panel,
    _edit_panel,
    _step,
    _screen_title,
    _screen_control,
    _screen_enabled,
    _recent_action,
    _session,
    _case,
]


@settings(max_examples=100, deadline=None)
@given(state=s.ui_states(), change=st.sampled_from(CHANGES), data=st.data())
def test_etag_changes_with_content(state: UIState, change: Change, data: st.DataObject) -> None:
    dumped = state.model_dump(mode="json")
    change(dumped, data)
    changed = rebuilt(dumped)
    assert changed != state
    assert changed.etag != state.etag
    # the state's own etag no longer matches the changed content
    with pytest.raises(ValueError, match="etag"):
        UIState.model_validate({**dumped, "etag": state.etag})


@settings(max_examples=50, deadline=None)
@given(state=s.ui_states(), minor=st.integers(0, 99), screen_minor=st.integers(0, 99))
def test_etag_ignores_restated_schema_version(state: UIState, minor: int, screen_minor: int) -> None:
    dumped = state.model_dump(mode="json")
    dumped["schema_version"] = f"1.{minor}"
    dumped["screen"]["schema_version"] = f"1.{screen_minor}"
    restated = UIState.model_validate(dumped)  # the supplied etag still matches
    assert restated.etag == state.etag
    assert rebuilt(dumped).etag == state.etag


@settings(max_examples=50, deadline=None)
@given(state=s.ui_states())
def test_etag_is_deterministic(state: UIState) -> None:
    assert state.etag == state.content_hash()
    assert len(state.etag) == 20
    assert int(state.etag, 16) >= 0
    assert rebuilt(state.model_dump()).etag == state.etag
    assert rebuilt(json.loads(state.model_dump_json())).etag == state.etag


@settings(max_examples=100, deadline=None)
@given(state=s.ui_states())
def test_etag_around_a_shared_screen_is_the_same(state: UIState) -> None:
    """A reader that validated the screen once hands its canonical JSON over: the etag is the same, byte for
    byte, and a wrong etag is still refused."""
    screen_json = canonical_screen_json(state.screen)
    assert state.content_hash(screen_json) == state.content_hash() == state.etag
    # ... and the hash of the whole state's canonical JSON, the etag's definition
    content = state.model_dump(
        mode="json", exclude={"etag": True, "schema_version": True, "screen": {"schema_version"}}
    )
    body = json.dumps(content, sort_keys=True, separators=(",", ":"))
    assert state.etag == hashlib.blake2b(body.encode(), digest_size=10).hexdigest()
    data = state.model_dump()
    data["screen"] = state.screen
    context = {CANONICAL_SCREENS: {id(state.screen): screen_json}}
    assert UIState.model_validate(data, context=context).etag == state.etag
    data["etag"] = "0" * 20
    with pytest.raises(ValueError, match="does not match the state's content"):
        UIState.model_validate(data, context=context)


@settings(max_examples=50, deadline=None)
@given(state=s.ui_states())
def test_etag_does_not_depend_on_key_order(state: UIState) -> None:
    """JSON objects are unordered: a producer that re-serialises the state with other key order (a map type,
    ``sort_keys``) must still have its etag accepted."""
    text = json.dumps(json.loads(state.model_dump_json()), sort_keys=True)
    assert UIState.model_validate_json(text).etag == state.etag
    reordered = state.model_dump()
    reordered["values"] = dict(reversed(list(reordered["values"].items())))
    reordered["panels"] = {
        name: {**panel, "fields": dict(reversed(list(panel["fields"].items())))}
        for name, panel in reversed(list(reordered["panels"].items()))
    }
    assert UIState.model_validate(reordered).etag == state.etag


def test_etag_of_a_known_state_is_stable() -> None:
    """Equal content built twice has the same etag; content that differs only in a value's type does not."""
    screen = {"screen_id": "s", "process_id": "p", "controls": [{"kind": "number", "id": "n"}]}
    base = {"session_id": "a", "case_id": "b", "process_id": "p", "screen": screen}
    one = UIState.model_validate({**base, "values": {"n": 1.0}})
    assert UIState.model_validate({**base, "values": {"n": 1.0}}).etag == one.etag
    assert UIState.model_validate({**base, "values": {"n": "1.0"}}).etag != one.etag
    assert UIState.model_validate({**base, "values": {"n": True}}).etag != one.etag
    assert UIState.model_validate({**base, "values": {"n": None}}).etag != one.etag
    assert (
        UIState.model_validate({**base, "values": {}}).etag
        != UIState.model_validate({**base, "values": {"n": None}}).etag
    )
