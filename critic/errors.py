"""The critic package's exceptions, in a module of their own so that any critic module may raise them without
importing another (the critics, the feedback readers, the store and the registry all do)."""

from __future__ import annotations


class NotFittedError(RuntimeError):
    """A critic was used before ``fit`` (or ``load``)."""


class FeedbackError(ValueError):
    """A feedback row (a JSONL line or a database row) is missing or invalid; the message says where and why."""


class RegistryError(RuntimeError):
    """The registry's stored state is missing, inconsistent or corrupted, or an operation has nothing to act on."""
