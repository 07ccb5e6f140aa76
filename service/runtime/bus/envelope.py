"""The wire format of a bus message: a schemas Payload as JSON, the session id as key, and three headers.

Headers: ``schema-version`` (the writer's SCHEMA_VERSION), ``payload-type`` (the Payload class name) and
``message-id`` (a stable id a reader uses to drop redelivered duplicates). Anything a reader cannot turn back
into the expected Payload raises PoisonMessage, which the consumer parks instead of retrying.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import TypeVar

from pydantic import ValidationError

from schemas.base import SCHEMA_VERSION, Payload

HEADER_SCHEMA_VERSION = "schema-version"
HEADER_PAYLOAD_TYPE = "payload-type"
HEADER_MESSAGE_ID = "message-id"

Headers = list[tuple[str, bytes]]

_MAJOR = SCHEMA_VERSION.split(".")[0]

P = TypeVar("P", bound=Payload)


class PoisonMessage(ValueError):
    """A message that can never be processed as it is: retrying it would only block its partition."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def message_id_for(payload_type: str, key: bytes | None, value: bytes) -> str:
    """A content hash: publishing the same payload twice (a retry) gives the same id, so readers can dedupe."""
    digest = hashlib.sha256()
    digest.update(payload_type.encode())
    digest.update(b"\x00")
    digest.update(key or b"")
    digest.update(b"\x00")
    digest.update(value)
    return digest.hexdigest()[:32]


def encode(payload: Payload, key: str | None, message_id: str | None = None) -> tuple[bytes | None, bytes, Headers]:
    """Serialise a payload: (key bytes, JSON value bytes, headers). ``message_id`` overrides the content hash."""
    if not isinstance(payload, Payload):
        raise ValueError(f"payload: expected a schemas Payload, got {type(payload).__name__}")
    if key is not None and not key:
        raise ValueError("key: must be a non-empty session id or None")
    if message_id is not None and not message_id:
        raise ValueError("message_id: must be non-empty when given")
    key_bytes = key.encode("utf-8") if key is not None else None
    value = payload.model_dump_json().encode("utf-8")
    payload_type = type(payload).__name__
    headers: Headers = [
        (HEADER_SCHEMA_VERSION, SCHEMA_VERSION.encode()),
        (HEADER_PAYLOAD_TYPE, payload_type.encode()),
        (HEADER_MESSAGE_ID, (message_id or message_id_for(payload_type, key_bytes, value)).encode()),
    ]
    return key_bytes, value, headers


def header(headers: Sequence[tuple[str, bytes | None]] | None, name: str) -> str | None:
    """The last value of a header as text, or None when absent (Kafka allows repeated headers; last wins)."""
    found: str | None = None
    for header_name, raw in headers or ():
        if header_name == name and raw is not None:
            found = raw.decode("utf-8", errors="replace")
    return found


def decode(value: bytes | None, headers: Sequence[tuple[str, bytes | None]] | None, expected: type[P]) -> P:
    """Turn a message back into ``expected``; PoisonMessage says why it cannot be (the field, where one is at fault)."""
    payload_type = header(headers, HEADER_PAYLOAD_TYPE)
    if payload_type is None:
        raise PoisonMessage(f"{HEADER_PAYLOAD_TYPE}: header missing")
    if payload_type != expected.__name__:
        raise PoisonMessage(f"{HEADER_PAYLOAD_TYPE}: expected {expected.__name__}, got {payload_type!r}")
    version = header(headers, HEADER_SCHEMA_VERSION)
    if version is None:
        raise PoisonMessage(f"{HEADER_SCHEMA_VERSION}: header missing")
    if version.split(".")[0] != _MAJOR:
        raise PoisonMessage(
            f"{HEADER_SCHEMA_VERSION}: unsupported version {version!r}; this reader understands {_MAJOR}.x"
        )
    if value is None:
        raise PoisonMessage("value: empty (tombstone) message")
    try:
        # Parsed separately so a syntax error is reported as such, not as a pydantic "invalid JSON" field error.
        json.loads(value)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PoisonMessage(f"value: not valid JSON ({exc})") from exc
    try:
        return expected.model_validate_json(value)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "value"
        more = f" (and {exc.error_count() - 1} more errors)" if exc.error_count() > 1 else ""
        raise PoisonMessage(f"{where}: {first['msg']}{more}") from exc
