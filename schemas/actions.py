"""The Action union and its validation against the screen it targets.

An action is only ever valid relative to a screen: the control must exist and be enabled, an option must be one
the select offers, a value must fit the control's type and pattern, a queue or resolution code must be one the
screen allows. ``validate_action`` is the single place where that is decided.
"""

from __future__ import annotations

import math
import re
from datetime import date
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import Field, StrictBool, TypeAdapter

from schemas.base import Strict
from schemas.screen import CLICK_KINDS, VALUE_KINDS, ControlKind, ScreenSchema


class ActionType(StrEnum):
    FILL_FIELD = "fill_field"
    SELECT_OPTION = "select_option"
    TOGGLE_CHECKBOX = "toggle_checkbox"
    CLICK_CONTROL = "click_control"
    SEND_TEXT_TO_CHAT = "send_text_to_chat"
    TRANSFER_CHAT = "transfer_chat"
    CLOSE_CHAT = "close_chat"


class FillField(Strict):
    type: Literal[ActionType.FILL_FIELD] = ActionType.FILL_FIELD
    control_id: str = Field(min_length=1)
    value: str = Field(max_length=2000)


class SelectOption(Strict):
    type: Literal[ActionType.SELECT_OPTION] = ActionType.SELECT_OPTION
    control_id: str = Field(min_length=1)
    option: str


class ToggleCheckbox(Strict):
    type: Literal[ActionType.TOGGLE_CHECKBOX] = ActionType.TOGGLE_CHECKBOX
    control_id: str = Field(min_length=1)
    checked: StrictBool


class ClickControl(Strict):
    type: Literal[ActionType.CLICK_CONTROL] = ActionType.CLICK_CONTROL
    control_id: str = Field(min_length=1)


class SendTextToChat(Strict):
    type: Literal[ActionType.SEND_TEXT_TO_CHAT] = ActionType.SEND_TEXT_TO_CHAT
    text: str = Field(min_length=1, max_length=2000)


class TransferChat(Strict):
    type: Literal[ActionType.TRANSFER_CHAT] = ActionType.TRANSFER_CHAT
    queue: str = Field(min_length=1)


class CloseChat(Strict):
    type: Literal[ActionType.CLOSE_CHAT] = ActionType.CLOSE_CHAT
    resolution: str = Field(min_length=1)


Action = Annotated[
    FillField | SelectOption | ToggleCheckbox | ClickControl | SendTextToChat | TransferChat | CloseChat,
    Field(discriminator="type"),
]

_ACTION_ADAPTER: TypeAdapter[Action] = TypeAdapter(Action)


def parse_action(data: object) -> Action:
    """Parse a dict (or JSON string) into an Action; raises pydantic.ValidationError naming the field."""
    if isinstance(data, str | bytes):
        return _ACTION_ADAPTER.validate_json(data)
    return _ACTION_ADAPTER.validate_python(data)


def action_key(action: Action) -> str:
    """A canonical, human-readable identity of an action (type + target + value), used for equality and
    idempotency. Two actions with the same key do the same thing."""
    match action:
        case FillField(control_id=c, value=v):
            return f"fill_field:{c}={v}"
        case SelectOption(control_id=c, option=o):
            return f"select_option:{c}={o}"
        case ToggleCheckbox(control_id=c, checked=b):
            return f"toggle_checkbox:{c}={'true' if b else 'false'}"
        case ClickControl(control_id=c):
            return f"click_control:{c}"
        case SendTextToChat(text=t):
            return f"send_text_to_chat:{t}"
        case TransferChat(queue=q):
            return f"transfer_chat:{q}"
        case CloseChat(resolution=r):
            return f"close_chat:{r}"
    raise TypeError(f"not an action: {action!r}")  # pragma: no cover - the union is closed


def action_target(action: Action) -> str:
    """The target of an action without its value: the control, queue or resolution it acts on."""
    match action:
        case FillField(control_id=c) | SelectOption(control_id=c) | ToggleCheckbox(control_id=c):
            return c
        case ClickControl(control_id=c):
            return c
        case SendTextToChat():
            return "chat"
        case TransferChat(queue=q):
            return q
        case CloseChat(resolution=r):
            return r
    raise TypeError(f"not an action: {action!r}")  # pragma: no cover


class ActionValidationError(ValueError):
    """An action does not fit the screen it targets. ``field`` names the offending action field."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


_ISO_DATE = re.compile(r"\d{4}-\d{2}-\d{2}", re.ASCII)


def _check_value(kind: ControlKind, control: object, value: str) -> None:
    if kind == ControlKind.NUMBER:
        try:
            number = float(value)
        except ValueError:
            raise ActionValidationError("value", f"{value!r} is not a number") from None
        if not math.isfinite(number):  # "nan" would slip past every range check
            raise ActionValidationError("value", f"{value!r} is not a finite number")
        minimum = getattr(control, "minimum", None)
        maximum = getattr(control, "maximum", None)
        if minimum is not None and number < minimum:
            raise ActionValidationError("value", f"{number} is below the minimum {minimum}")
        if maximum is not None and number > maximum:
            raise ActionValidationError("value", f"{number} is above the maximum {maximum}")
    elif kind == ControlKind.DATE:
        try:
            if _ISO_DATE.fullmatch(value) is None:  # date.fromisoformat also takes 20240101 and 2024-W01-1
                raise ValueError(value)
            date.fromisoformat(value)
        except ValueError:
            raise ActionValidationError("value", f"{value!r} is not an ISO date (YYYY-MM-DD)") from None
    else:
        max_length = getattr(control, "max_length", None)
        if max_length is not None and len(value) > max_length:
            raise ActionValidationError("value", f"longer than {max_length} characters")
        pattern = getattr(control, "pattern", None)
        if pattern and value and re.fullmatch(pattern, value) is None:
            raise ActionValidationError("value", f"{value!r} does not match the pattern {pattern!r}")


def validate_action(action: Action, screen: ScreenSchema) -> None:
    """Raise ActionValidationError when ``action`` cannot be applied to ``screen``; return None otherwise."""
    match action:
        case TransferChat(queue=q):
            if q not in screen.transfer_queues:
                raise ActionValidationError("queue", f"{q!r} is not a transfer queue of screen {screen.screen_id!r}")
            return
        case CloseChat(resolution=r):
            if r not in screen.resolution_codes:
                raise ActionValidationError(
                    "resolution", f"{r!r} is not a resolution code of screen {screen.screen_id!r}"
                )
            return
        case SendTextToChat():
            if not screen.chat_enabled:
                raise ActionValidationError("type", f"screen {screen.screen_id!r} has no enabled chat")
            return
        case _:
            pass

    control_id = action.control_id
    control = screen.control(control_id)
    if control is None:
        raise ActionValidationError("control_id", f"{control_id!r} is not a control of screen {screen.screen_id!r}")
    if not control.enabled:
        raise ActionValidationError("control_id", f"control {control_id!r} is disabled")
    kind = control.kind
    match action:
        case FillField(value=value):
            if kind not in VALUE_KINDS:
                raise ActionValidationError("control_id", f"control {control_id!r} ({kind}) takes no typed value")
            _check_value(kind, control, value)
        case SelectOption(option=option):
            if kind != ControlKind.SELECT:
                raise ActionValidationError("control_id", f"control {control_id!r} ({kind}) is not a select")
            if option not in getattr(control, "options", ()):
                raise ActionValidationError("option", f"{option!r} is not an option of {control_id!r}")
        case ToggleCheckbox():
            if kind != ControlKind.CHECKBOX:
                raise ActionValidationError("control_id", f"control {control_id!r} ({kind}) is not a checkbox")
        case ClickControl():
            if kind not in CLICK_KINDS:
                raise ActionValidationError("control_id", f"control {control_id!r} ({kind}) is not clickable")
