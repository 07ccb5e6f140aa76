"""The critic package's exceptions, in a module of their own so that any critic module may raise them without
importing another (the critics, the feedback readers, the store and the registry all do)."""

from __future__ import annotations

from pydantic import ValidationError


class NotFittedError(RuntimeError):
    """A critic was used before ``fit`` (or ``load``)."""


class FeedbackError(ValueError):
    """A feedback row (a JSONL line or a database row) is missing or invalid; the message says where and why."""


class RegistryError(RuntimeError):
    """The registry's stored state is missing, inconsistent or corrupted, or an operation has nothing to act on."""


def validation_message(error: ValidationError) -> str:
    """``field: message`` of the first error: what a reader needs to fix the producer."""
    first = error.errors()[0]
    loc = ".".join(str(part) for part in first["loc"]) or "(record)"
    return f"{loc}: {first['msg']}"
