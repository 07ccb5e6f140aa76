"""ScreenSchema: what a BPM screen shows, as typed controls.

The schema is what makes proposals checkable: every action names a control (or a queue / resolution code)
that the screen declares, and values are validated against the control's constraints.
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import Field, StrictBool, field_validator, model_validator

from schemas.base import Payload, Strict

_ID = r"^[A-Za-z0-9_.:\-]+$"


class ControlKind(StrEnum):
    TEXT = "text"
    NUMBER = "number"
    DATE = "date"
    SELECT = "select"
    CHECKBOX = "checkbox"
    TEXTAREA = "textarea"
    BUTTON = "button"
    LINK = "link"
    TOOL = "tool"
    TABLE = "table"
    CHAT = "chat"


class _ControlBase(Strict):
    id: str = Field(pattern=_ID, min_length=1, max_length=120)
    label: str = ""
    required: StrictBool = False
    enabled: StrictBool = True


class TextControl(_ControlBase):
    kind: Literal[ControlKind.TEXT] = ControlKind.TEXT
    pattern: str | None = None
    max_length: int = Field(default=200, ge=1)

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"not a valid regular expression: {exc}") from None
        return value


class TextareaControl(_ControlBase):
    kind: Literal[ControlKind.TEXTAREA] = ControlKind.TEXTAREA
    max_length: int = Field(default=2000, ge=1)


class NumberControl(_ControlBase):
    kind: Literal[ControlKind.NUMBER] = ControlKind.NUMBER
    minimum: float | None = None
    maximum: float | None = None


class DateControl(_ControlBase):
    kind: Literal[ControlKind.DATE] = ControlKind.DATE


class SelectControl(_ControlBase):
    kind: Literal[ControlKind.SELECT] = ControlKind.SELECT
    options: list[str] = Field(min_length=1)


class CheckboxControl(_ControlBase):
    kind: Literal[ControlKind.CHECKBOX] = ControlKind.CHECKBOX


class ButtonControl(_ControlBase):
    kind: Literal[ControlKind.BUTTON] = ControlKind.BUTTON
    submits: StrictBool = Field(default=False, description="Completes the screen's task when clicked.")


class LinkControl(_ControlBase):
    kind: Literal[ControlKind.LINK] = ControlKind.LINK


class ToolControl(_ControlBase):
    """A button that runs a backend lookup and fills a read-only result panel."""

    kind: Literal[ControlKind.TOOL] = ControlKind.TOOL
    result_panel: str = Field(pattern=_ID)


class TableControl(_ControlBase):
    """Read-only tabular data; never the target of an action."""

    kind: Literal[ControlKind.TABLE] = ControlKind.TABLE
    columns: list[str] = Field(default_factory=list)


class ChatControl(_ControlBase):
    """The chat transcript; the target of send_text_to_chat."""

    kind: Literal[ControlKind.CHAT] = ControlKind.CHAT


Control = Annotated[
    TextControl
    | TextareaControl
    | NumberControl
    | DateControl
    | SelectControl
    | CheckboxControl
    | ButtonControl
    | LinkControl
    | ToolControl
    | TableControl
    | ChatControl,
    Field(discriminator="kind"),
]

VALUE_KINDS = frozenset({ControlKind.TEXT, ControlKind.TEXTAREA, ControlKind.NUMBER, ControlKind.DATE})
CLICK_KINDS = frozenset({ControlKind.BUTTON, ControlKind.LINK, ControlKind.TOOL})


class ScreenSchema(Payload):
    """One screen of a process: its controls plus the chat-level actions it allows."""

    screen_id: str = Field(pattern=_ID, min_length=1)
    process_id: str = Field(pattern=_ID, min_length=1)
    version: int = Field(default=1, ge=1)
    title: str = ""
    controls: list[Control] = Field(default_factory=list)
    transfer_queues: list[str] = Field(
        default_factory=list, description="Queues a chat may be transferred to from this screen."
    )
    resolution_codes: list[str] = Field(
        default_factory=list, description="Resolution codes a chat may be closed with from this screen."
    )

    @model_validator(mode="after")
    def _unique_control_ids(self) -> ScreenSchema:
        seen: set[str] = set()
        for control in self.controls:
            if control.id in seen:
                raise ValueError(f"controls: duplicate control id {control.id!r}")
            seen.add(control.id)
        return self

    def control(self, control_id: str) -> Control | None:
        for control in self.controls:
            if control.id == control_id:
                return control
        return None

    @property
    def chat_enabled(self) -> bool:
        return any(c.kind == ControlKind.CHAT and c.enabled for c in self.controls)
