"""UIState: everything the policy may see at one step of a case, bound to its content by an etag."""

from __future__ import annotations

import hashlib
import json
from enum import StrEnum

from pydantic import Field, model_validator

from schemas.actions import Action
from schemas.base import Payload, Strict
from schemas.screen import ScreenSchema

FieldValue = str | float | bool | None


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
    def _bind_etag(self) -> UIState:
        expected = self.content_hash()
        if self.etag and self.etag != expected:
            raise ValueError(f"etag: {self.etag!r} does not match the state's content ({expected!r})")
        self.etag = expected
        return self

    def content_hash(self) -> str:
        # Canonical JSON (sorted keys): JSON objects are unordered, so a producer that re-serialises the state
        # through a map type must get the same etag. Schema versions (also the nested screen's) are not content.
        content = self.model_dump(
            mode="json", exclude={"etag": True, "schema_version": True, "screen": {"schema_version"}}
        )
        body = json.dumps(content, sort_keys=True, separators=(",", ":"))
        return hashlib.blake2b(body.encode(), digest_size=10).hexdigest()
