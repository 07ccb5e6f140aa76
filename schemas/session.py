"""SessionCommand: start or stop a background session; published on the ``sessions`` topic keyed by session id."""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum

from pydantic import Field

from schemas.base import Payload


class SessionCommandKind(StrEnum):
    START = "start"
    STOP = "stop"


class SessionCommand(Payload):
    """An instruction to the workers about one session. Commands are idempotent by session id: starting a session
    that exists (a redelivery) or stopping one that has ended changes nothing."""

    command: SessionCommandKind
    session_id: str = Field(min_length=1)
    case_id: str = Field(min_length=1, description="The BPM case the session works.")
    process_id: str = Field(min_length=1)
    issued_by: str = Field(min_length=1, description="Who asked: a user, a service or the demo.")
    issued_at: datetime = Field(default_factory=lambda: datetime.now(UTC))
