"""The BPM adapter over a sandbox platform in the same process (the demo's and the benches' default).

The platform already validates actions and applies each idempotency key once; this adapter adds the contract's
order of checks (replayed key, ended case, stale etag, invalid action) under the platform's lock, so a check and
the change it guards are one atomic step, and it maps the platform's errors to the adapter errors.

The platform does not model time: the simulator (``sandbox.simulate.work_case``) adds up each operator's
seconds per action outside it. For the demo, the adapter can keep the same account per case: give it a
``clock`` (``operator_clock`` builds the simulator's time model for one operator) and/or ``charge`` seconds
spent outside ``apply`` (an operator reviewing a deferral); ``outcome`` then reports ``handling_time_s``.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from SpiffWorkflow.exceptions import SpiffWorkflowException

from sandbox.operators import READ_SECONDS, SimOperator
from sandbox.platform import Case, CaseNotFound, SandboxPlatform
from schemas import Action, ActionValidationError, ButtonControl, ChatRole, ClickControl, UIState, validate_action
from service.runtime.adapters.base import (
    AdapterError,
    CaseEndedError,
    CaseNotFoundError,
    CaseOutcome,
    CaseStatus,
    InvalidActionError,
    StaleStateError,
    check_idempotency_key,
)

# The platform's end statuses (``Case.ended``), with None for a case still open.
_STATUS: dict[str | None, CaseStatus] = {
    None: "open",
    "closed": "closed",
    "transferred": "transferred",
    "stuck": "stuck",
}

# (the action applied, customer messages that appeared since the previous action) -> seconds it took
HandlingClock = Callable[[Action, int], float]


def operator_clock(operator: SimOperator, rng: random.Random) -> HandlingClock:
    """The simulator's time model: the operator's seconds for the action plus reading each new customer message."""

    def seconds(action: Action, new_customer_messages: int) -> float:
        return operator.action_seconds(action, rng) + READ_SECONDS * new_customer_messages

    return seconds


def _customer_messages(case: Case) -> int:
    return sum(1 for m in case.chat if m.role == ChatRole.CUSTOMER)


class SandboxAdapter:
    """``BpmAdapter`` over ``platform``. Thread-safe: every call holds the platform's (re-entrant) lock."""

    def __init__(self, platform: SandboxPlatform, clock: HandlingClock | None = None) -> None:
        self.platform = platform
        self.clock = clock
        self._handling: dict[str, float] = {}  # case id -> simulated seconds so far
        self._read: dict[str, int] = {}  # case id -> customer messages already accounted for by the clock

    def _case(self, case_id: str) -> Case:
        try:
            return self.platform.case(case_id)
        except CaseNotFound:
            raise CaseNotFoundError(case_id) from None

    def open_case(self, process_id: str | None = None, case_index: int | None = None) -> str:
        return self.platform.open_case(process_id, case_index)

    def observe(self, case_id: str) -> UIState:
        with self.platform.lock:
            self._case(case_id)
            return self.platform.observe(case_id)

    def apply(self, case_id: str, action: Action, idempotency_key: str, expected_etag: str | None = None) -> UIState:
        check_idempotency_key(idempotency_key)
        with self.platform.lock:
            case = self._case(case_id)
            if idempotency_key in case.idempotency:
                return self.platform.observe(case_id)
            if case.ended:
                raise CaseEndedError(case_id, case.ended)
            if expected_etag is not None:
                current = self.platform.observe(case_id).etag
                if current != expected_etag:
                    raise StaleStateError(case_id, expected_etag, current)
            screen = case.spec.schemas[case.screen_id]
            try:
                validate_action(action, screen)
            except ActionValidationError as exc:
                raise InvalidActionError.from_validation(exc) from exc
            control = screen.control(action.control_id) if isinstance(action, ClickControl) else None
            if isinstance(control, ButtonControl) and control.submits and not self._screen_task_ready(case):
                # After an engine error the screen's user task is gone; a second submit would crash the platform.
                raise AdapterError(f"case_id: case {case_id!r} has no ready task for screen {case.screen_id!r}")
            customers_before = _customer_messages(case)
            try:
                state = self.platform.apply(case_id, action, idempotency_key)
            except SpiffWorkflowException as exc:
                raise AdapterError(f"case_id: the process engine could not continue case {case_id!r}: {exc}") from exc
            if self.clock is not None:
                new_messages = customers_before - self._read.get(case_id, 0)
                self._read[case_id] = customers_before
                self._handling[case_id] = self._handling.get(case_id, 0.0) + self.clock(action, new_messages)
            return state

    def _screen_task_ready(self, case: Case) -> bool:
        ready = self.platform.open_tasks(case.case_id)
        return bool(ready) and ready[0]["name"] == case.screen_id

    def charge(self, case_id: str, seconds: float) -> None:
        """Add simulated seconds spent on the case outside ``apply`` (e.g. an operator reviewing a deferral)."""
        if not seconds >= 0.0:  # also refuses NaN
            raise ValueError(f"seconds: must be >= 0, got {seconds}")
        with self.platform.lock:
            self._case(case_id)
            self._handling[case_id] = self._handling.get(case_id, 0.0) + seconds

    def ended(self, case_id: str) -> bool:
        with self.platform.lock:
            return self._case(case_id).ended is not None

    def outcome(self, case_id: str) -> CaseOutcome:
        with self.platform.lock:
            case = self._case(case_id)
            result = self.platform.outcome(case_id)
            handling = self._handling.get(case_id, 0.0 if self.clock is not None else None)
            return CaseOutcome(
                case_id=case_id,
                status=_STATUS[case.ended],
                resolution_code=result["code"],
                correct=result["correct"] if case.ended is not None else None,
                fields=result["fields"],
                handling_time_s=None if handling is None else round(handling, 2),
            )

    def forget(self, case_id: str) -> None:
        """Drop a finished case from the platform and from the adapter's time account (keeps memory flat)."""
        with self.platform.lock:
            self.platform.forget(case_id)
            self._handling.pop(case_id, None)
            self._read.pop(case_id, None)

    def close(self) -> None:
        """Nothing to release: the platform belongs to the caller."""
