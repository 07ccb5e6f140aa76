"""The BPM adapter over the sandbox's REST task API (``sandbox.api``), as a real BPM integration would talk to it.

``base_url`` is the task API's root (``http://host:port/api/v1``). HTTP answers map to adapter errors: 404 ->
CaseNotFoundError, 409 -> CaseEndedError when the case has ended (else AdapterError: the engine could not
continue), 422 -> InvalidActionError naming the field, transport errors and 5xx -> BpmUnavailableError.

Reads are retried a few times with backoff; an apply is retried too, because the API applies an idempotency key
at most once per case (``ActionRequest.idempotency_key``), so a retry after a lost answer never acts twice.
Starting a case carries no key: it is retried only when the connection was never made.

The API has no conditional update (no If-Match), so the stale-etag check is made on the state read just before
the action is sent: a concurrent writer between that read and the POST is not detected. The runtime's sessions
are owned by one worker each, which is what makes that window harmless.
"""

from __future__ import annotations

import time
from typing import Any, Literal

import httpx

from schemas import Action, ActionValidationError, FillField, UIState, validate_action
from service.runtime.adapters.base import (
    AdapterError,
    BpmUnavailableError,
    CaseEndedError,
    CaseNotFoundError,
    CaseOutcome,
    InvalidActionError,
    StaleStateError,
    check_idempotency_key,
)

Retry = Literal["all", "connect"]  # "connect": only when the request cannot have reached the server

# An action no screen accepts (no control has this id): sent with a key to ask whether the key was applied before.
# The API answers a known key with the current state whatever the action, and an unknown one with a 422 that
# changes nothing (the key is recorded only when an action is applied).
_PROBE = FillField(control_id="__adapter_idempotency_probe__", value="")


class HttpBpmAdapter:
    """``BpmAdapter`` over the task API at ``base_url``. Thread-safe (httpx.Client is; no other mutable state)."""

    def __init__(
        self,
        base_url: str,
        timeout_s: float = 5.0,
        client: httpx.Client | None = None,
        retries: int = 3,
        backoff_s: float = 0.1,
    ) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url: must be an http(s) URL, got {base_url!r}")
        if not timeout_s > 0:
            raise ValueError(f"timeout_s: must be > 0, got {timeout_s}")
        if retries < 0:
            raise ValueError(f"retries: must be >= 0, got {retries}")
        if not backoff_s >= 0:
            raise ValueError(f"backoff_s: must be >= 0, got {backoff_s}")
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s
        self.retries = retries
        self.backoff_s = backoff_s
        self._owns_client = client is None
        self._client = client if client is not None else httpx.Client()

    # --- transport -------------------------------------------------------------------------------------

    def _request(self, method: str, path: str, retry: Retry, body: Any = None) -> httpx.Response:
        """Send; return any answer below 500. Transport errors and 5xx are retried (per ``retry``), then raised
        as BpmUnavailableError."""
        url = self.base_url + path
        failure = ""
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff_s * 2 ** (attempt - 1))
            try:
                response = self._client.request(method, url, json=body, timeout=self.timeout_s)
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                failure = f"{type(exc).__name__}: {exc}"
                continue
            except httpx.TransportError as exc:
                failure = f"{type(exc).__name__}: {exc}"
                if retry == "all":
                    continue
                break
            if response.status_code < 500:
                return response
            failure = f"HTTP {response.status_code}: {response.text[:200]}"
            if retry != "all":
                break
        raise BpmUnavailableError(f"{method} {url} failed: {failure}")

    def _error(self, response: httpx.Response, case_id: str) -> AdapterError:
        """The adapter error for a 4xx answer about ``case_id``."""
        status = response.status_code
        detail = _detail(response)
        if status == 404:
            return CaseNotFoundError(case_id)
        if status == 409:
            # A 409 is either an ended case or an engine that could not route it; the case's status tells which.
            summary = self._request("GET", f"/cases/{case_id}", "all")
            if summary.status_code == 200 and summary.json()["status"] != "open":
                return CaseEndedError(case_id, summary.json()["status"])
            return AdapterError(f"case_id: conflict with the state of case {case_id!r}: {detail}")
        if status == 422:
            return _invalid(detail)
        return AdapterError(f"unexpected HTTP {status} for case {case_id!r}: {detail}")

    def _state(self, response: httpx.Response, case_id: str) -> UIState:
        if response.status_code != 200:
            raise self._error(response, case_id)
        return UIState.model_validate(response.json())  # re-checks the etag the server computed

    # --- the contract ----------------------------------------------------------------------------------

    def open_case(self, process_id: str | None = None, case_index: int | None = None) -> str:
        if case_index is not None:
            raise ValueError("case_index: the task API numbers cases itself; it cannot start a chosen index")
        response = self._request("POST", "/cases", "connect", {"process_id": process_id})
        if response.status_code == 422:
            raise ValueError(f"process_id: {_detail(response)}")
        if response.status_code != 201:
            raise AdapterError(f"starting a case failed with HTTP {response.status_code}: {_detail(response)}")
        case_id: str = response.json()["case_id"]
        return case_id

    def observe(self, case_id: str) -> UIState:
        return self._state(self._request("GET", f"/cases/{case_id}/state", "all"), case_id)

    def apply(self, case_id: str, action: Action, idempotency_key: str, expected_etag: str | None = None) -> UIState:
        check_idempotency_key(idempotency_key)
        current = self.observe(case_id)
        problem: AdapterError | None = None
        if expected_etag is not None and current.etag != expected_etag:
            problem = StaleStateError(case_id, expected_etag, current.etag)
        else:
            try:
                validate_action(action, current.screen)
            except ActionValidationError as exc:
                problem = InvalidActionError.from_validation(exc)
        if problem is not None:
            # The state may have moved because this very key was applied before (a redelivered step whose first
            # answer was lost): then the contract is to return the current state, not an error.
            replayed = self._replayed(case_id, idempotency_key)
            if replayed is not None:
                return replayed
            raise problem
        body = {"action": action.model_dump(mode="json"), "idempotency_key": idempotency_key}
        return self._state(self._request("POST", f"/cases/{case_id}/actions", "all", body), case_id)

    def _replayed(self, case_id: str, idempotency_key: str) -> UIState | None:
        """The current state when ``idempotency_key`` was applied on the case before; None when it was not.
        Raises CaseEndedError when it was not and the case has ended (the contract's next check)."""
        body = {"action": _PROBE.model_dump(mode="json"), "idempotency_key": idempotency_key}
        response = self._request("POST", f"/cases/{case_id}/actions", "all", body)
        if response.status_code == 422:
            return None
        return self._state(response, case_id)

    def ended(self, case_id: str) -> bool:
        response = self._request("GET", f"/cases/{case_id}", "all")
        if response.status_code != 200:
            raise self._error(response, case_id)
        status: str = response.json()["status"]
        return status != "open"

    def outcome(self, case_id: str) -> CaseOutcome:
        response = self._request("GET", f"/cases/{case_id}/outcome", "all")
        if response.status_code != 200:
            raise self._error(response, case_id)
        body = response.json()
        return CaseOutcome(
            case_id=body["case_id"],
            status=body["status"],
            resolution_code=body["resolution_code"],
            # The API says "not correct" for an open case; the contract says "not judged yet".
            correct=None if body["status"] == "open" else body["correct"],
            fields=body["fields"],
            handling_time_s=None,  # the API does not simulate time
        )

    def close(self) -> None:
        if self._owns_client:
            self._client.close()


def _detail(response: httpx.Response) -> Any:
    try:
        return response.json().get("detail", response.text)
    except ValueError:
        return response.text


def _invalid(detail: Any) -> InvalidActionError:
    """A 422's detail (FastAPI's list of ``{loc, msg, ...}``) as InvalidActionError naming the action field."""
    if isinstance(detail, list) and detail and isinstance(detail[0], dict):
        error = detail[0]
        loc = [str(part) for part in error.get("loc", ())]
        # ["body", "action", <field>] for an action that does not fit the screen; anything else names its path.
        field = loc[2] if loc[:2] == ["body", "action"] and len(loc) > 2 else ".".join(loc[1:]) or "action"
        return InvalidActionError(field, str(error.get("msg", "invalid")))
    return InvalidActionError("action", str(detail))
