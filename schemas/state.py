"""UIState: everything the policy may see at one step of a case, bound to its content by an etag."""

from __future__ import annotations

import hashlib
import json
from enum import StrEnum

from pydantic import Field, ValidationInfo, model_validator

from schemas.actions import Action
from schemas.base import Payload, Strict
from schemas.screen import ScreenSchema

FieldValue = str | float | bool | None

CANONICAL_SCREENS = "canonical_screens"
"""Validation context key: ``{id(screen): canonical_screen_json(screen)}`` for screen instances a reader validated
once and shares between states, so that their etags need not serialise the same screen again."""


def _canonical(content: object) -> str:
    return json.dumps(content, sort_keys=True, separators=(",", ":"))


def canonical_screen_json(screen: ScreenSchema) -> str:
    """The screen's part of a state's canonical JSON (``UIState.content_hash``): its content, sorted keys, without
    the schema version."""
    return _canonical(screen.model_dump(mode="json", exclude={"schema_version"}))


class ChatRole(StrEnum):
    CUSTOMER = "customer"
    OPERATOR = "operator"
    SYSTEM = "system"


class ChatMessage(Strict):
    role: ChatRole
    text: str = Field(max_length=4000)


class Panel(Strict):
    """A read-only panel: a lookup result, the customer record, or event attributes of an imported log."""

    title: str = ""
    fields: dict[str, str] = Field(default_factory=dict)
    rows: list[dict[str, str]] = Field(default_factory=list)


class UIState(Payload):
    """The screen with its current values, read-only panels, chat and recent actions at one step.

    ``etag`` is a content hash computed on construction. A decision is bound to the etag of the state it was made
    on; a caller that sends an etag that does not match the content gets a validation error.
    """

    session_id: str = Field(min_length=1)
    case_id: str = Field(min_length=1)
    process_id: str = Field(min_length=1)
    screen: ScreenSchema
    values: dict[str, FieldValue] = Field(default_factory=dict)
    panels: dict[str, Panel] = Field(default_factory=dict)
    chat: list[ChatMessage] = Field(default_factory=list)
    recent_actions: list[Action] = Field(default_factory=list, description="The last N actions, oldest first.")
    step: int = Field(default=0, ge=0)
    etag: str = ""

    @model_validator(mode="after")
    def _bind_etag(self, info: ValidationInfo) -> UIState:
        screens = info.context.get(CANONICAL_SCREENS) if isinstance(info.context, dict) else None
        expected = self.content_hash(screens.get(id(self.screen)) if screens else None)
        if self.etag and self.etag != expected:
            raise ValueError(f"etag: {self.etag!r} does not match the state's content ({expected!r})")
        self.etag = expected
        return self

    def content_hash(self, screen_json: str | None = None) -> str:
        """The etag: a hash of the state's canonical JSON (sorted keys), without the etag and the schema versions.

        ``screen_json``: the screen's canonical JSON (``canonical_screen_json``), when the caller already has it.
        The body is then put together around it, byte for byte the same: on an event log with hundreds of
        activities the screen is almost all of a state, and every state of the log shares it."""
        # Canonical JSON: JSON objects are unordered, so a producer that re-serialises the state through a map
        # type must get the same etag. Schema versions (also the nested screen's) are not content. The screen's
        # part goes between the keys that sort before and after "screen", as json.dumps(sort_keys=True) puts it.
        screen = canonical_screen_json(self.screen) if screen_json is None else screen_json
        rest = self.model_dump(mode="json", exclude={"etag", "schema_version", "screen"})
        before = _canonical({k: v for k, v in rest.items() if k < "screen"})[1:-1]
        after = _canonical({k: v for k, v in rest.items() if k > "screen"})[1:-1]
        body = "{" + ",".join(part for part in (before, f'"screen":{screen}', after) if part) + "}"
        return hashlib.blake2b(body.encode(), digest_size=10).hexdigest()
