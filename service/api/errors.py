"""The errors the API's routes and its facade raise on purpose, each answered with one status code (see app.py).

Anything else a route raises is a bug: answered 500 with an error id that the log line carries too."""

from __future__ import annotations

from collections.abc import Sequence


class NotFoundError(LookupError):
    """404: the named thing does not exist."""


class ConflictError(RuntimeError):
    """409: the request names a state that is no longer current (a stale deferral, an ended session)."""


class ForbiddenError(PermissionError):
    """403: the caller may not act on this (another operator's queue)."""


class ServiceBusyError(RuntimeError):
    """503: a request waited past its deadline (the queue was not full, but the policy fell behind)."""

    def __init__(self, timeout_s: float) -> None:
        super().__init__(f"no suggestion within {timeout_s:g} s: the policy is overloaded")
        self.retry_after_s = timeout_s


class InputError(Exception):
    """422: the request is well-formed but breaks a rule checked in the service (a limit, an action the screen
    does not allow). ``loc`` is the field's path in the body, as FastAPI's own validation errors name it.

    Deliberately not a ValueError: an internal ValueError is a bug (500), never the client's fault."""

    def __init__(self, loc: Sequence[str | int], message: str) -> None:
        super().__init__(message)
        self.loc = ["body", *loc]
        self.message = message

    def detail(self) -> list[dict[str, object]]:
        return [{"loc": self.loc, "msg": self.message, "type": "value_error"}]
