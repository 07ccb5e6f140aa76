"""The BPM adapter contract: how the runtime drives a case on a BPM platform, and the errors it can raise.

One interface, several implementations (the in-process sandbox, the sandbox's REST task API). Every
implementation validates an action against the screen that is current when it is applied, refuses it when the
caller's etag is stale, and applies a given idempotency key at most once per case, so a retried or redelivered
step never acts twice.
"""

from __future__ import annotations

from typing import ClassVar, Literal, Protocol, TypedDict, runtime_checkable

from schemas import Action, ActionValidationError, UIState
from schemas.state import FieldValue

CaseStatus = Literal["open", "closed", "transferred", "stuck"]
IDEMPOTENCY_KEY_MAX = 200  # the task API's limit; the in-process adapter enforces the same so both agree


class CaseOutcome(TypedDict):
    """What the BPM knows about how a case ended. ``correct`` is None where the BPM cannot judge (a real BPM, or
    a case still open); ``handling_time_s`` is None where handling time is not simulated."""

    case_id: str
    status: CaseStatus
    resolution_code: str | None  # the resolution code or the transfer queue the case ended with
    correct: bool | None
    fields: dict[str, FieldValue]  # the decisive form values, as submitted
    handling_time_s: float | None


class AdapterError(Exception):
    """Base of every adapter error. ``retryable`` says whether the same call may simply be tried again."""

    retryable: ClassVar[bool] = False


class CaseNotFoundError(AdapterError, LookupError):
    def __init__(self, case_id: str) -> None:
        super().__init__(f"case_id: case {case_id!r} not found")
        self.case_id = case_id


class CaseEndedError(AdapterError):
    def __init__(self, case_id: str, detail: str = "") -> None:
        super().__init__(f"case_id: case {case_id!r} has ended" + (f" ({detail})" if detail else ""))
        self.case_id = case_id


class InvalidActionError(AdapterError, ValueError):
    """The action does not fit the current screen. ``field`` names the offending action field (``control_id``,
    ``value``, ``option``, ``queue``, ``resolution`` or ``type``)."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason

    @classmethod
    def from_validation(cls, exc: ActionValidationError) -> InvalidActionError:
        error = cls(exc.field, exc.reason)
        error.__cause__ = exc
        return error


class StaleStateError(AdapterError):
    """The caller decided on a state that is no longer current: re-observe before deciding again."""

    def __init__(self, case_id: str, expected_etag: str, current_etag: str) -> None:
        super().__init__(f"expected_etag: {expected_etag!r} is stale, case {case_id!r} is now at etag {current_etag!r}")
        self.case_id = case_id
        self.expected_etag = expected_etag
        self.current_etag = current_etag


class BpmUnavailableError(AdapterError):
    """The BPM could not be reached or failed on its side (transport error, 5xx). Safe to retry later: an apply
    carries its idempotency key, so a retry never applies the action twice."""

    retryable: ClassVar[bool] = True


def check_idempotency_key(key: str) -> None:
    """Refuse a key the task API would refuse, so both adapters accept the same keys."""
    if not isinstance(key, str) or not key or len(key) > IDEMPOTENCY_KEY_MAX:
        raise ValueError(f"idempotency_key: must be a non-empty string of at most {IDEMPOTENCY_KEY_MAX} characters")


@runtime_checkable
class BpmAdapter(Protocol):
    """A BPM platform as the runtime sees it. Implementations are thread-safe."""

    def open_case(self, process_id: str | None = None, case_index: int | None = None) -> str:
        """Start a case (demo and benches); return its case id. ``process_id`` None: the platform's mix."""
        ...

    def observe(self, case_id: str) -> UIState:
        """The case's current UI state, with its etag."""
        ...

    def apply(self, case_id: str, action: Action, idempotency_key: str, expected_etag: str | None = None) -> UIState:
        """Validate ``action`` against the current screen and apply it; return the new state.

        A key already applied on this case returns the current state and applies nothing (checked first, so a
        retry after a lost answer succeeds). Otherwise: CaseEndedError on an ended case, StaleStateError when
        ``expected_etag`` is given and differs from the current etag, InvalidActionError (naming the field)
        when the action does not fit the screen; nothing is applied in each of these cases."""
        ...

    def ended(self, case_id: str) -> bool: ...

    def outcome(self, case_id: str) -> CaseOutcome: ...

    def close(self) -> None: ...
