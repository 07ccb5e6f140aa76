"""Cases (process instances): start one, list the open ones, read one's summary, UI state and outcome."""

from __future__ import annotations

from fastapi import APIRouter, status

from sandbox.api.deps import Platform, transaction
from sandbox.api.errors import NOT_FOUND
from sandbox.api.models import CaseCreated, CaseStatus, CaseSummary, CreateCase, Outcome
from sandbox.platform import Case
from schemas import UIState

router = APIRouter(prefix="/cases", tags=["cases"])


# The platform's end statuses (``Case.ended``), with None for a case still open.
_STATUS: dict[str | None, CaseStatus] = {
    None: "open",
    "closed": "closed",
    "transferred": "transferred",
    "stuck": "stuck",
}


def _status(case: Case) -> CaseStatus:
    return _STATUS[case.ended]


def summarize(case: Case) -> CaseSummary:
    return CaseSummary(
        case_id=case.case_id,
        session_id=case.session_id,
        process_id=case.spec.process_id,
        screen_id=case.screen_id,
        step=case.step,
        status=_status(case),
    )


@router.post(
    "",
    response_model=CaseCreated,
    status_code=status.HTTP_201_CREATED,
    summary="Start a case",
    description="Starts a process instance with a new customer whose first chat message is waiting. Without a "
    "body (or with a null `process_id`) the process is drawn from the scenario's mix.",
)
def create_case(platform: Platform, body: CreateCase | None = None) -> CaseCreated:
    with transaction(platform):
        case_id = platform.open_case(body.process_id if body is not None else None)
        case = platform.case(case_id)
        return CaseCreated(case_id=case.case_id, session_id=case.session_id, process_id=case.spec.process_id)


@router.get("", response_model=list[CaseSummary], summary="List the open cases")
def list_cases(platform: Platform) -> list[CaseSummary]:
    with transaction(platform):  # open_case may add a case while we iterate
        return [summarize(case) for case in platform.cases.values() if case.ended is None]


@router.get("/{case_id}", response_model=CaseSummary, summary="Read a case's summary", responses=NOT_FOUND)
def get_case(case_id: str, platform: Platform) -> CaseSummary:
    with transaction(platform):
        return summarize(platform.case(case_id))


@router.get(
    "/{case_id}/state",
    response_model=UIState,
    summary="Read the case's UI state",
    description="The current screen with its values, the panels, the chat and the recent actions: what the "
    "adapter's `observe` returns.",
    responses=NOT_FOUND,
)
def get_state(case_id: str, platform: Platform) -> UIState:
    return platform.observe(case_id)


@router.get(
    "/{case_id}/outcome",
    response_model=Outcome,
    summary="Read the case's outcome (sandbox only)",
    description="How the case ended and whether that matches the case's hidden truth. **Sandbox only**: a real "
    "BPM platform has no such route, since it does not know the right answer; the sandbox exposes it to score "
    "runs. An open case has status `open` and is not correct.",
    responses=NOT_FOUND,
)
def get_outcome(case_id: str, platform: Platform) -> Outcome:
    with transaction(platform):
        case = platform.case(case_id)
        result = platform.outcome(case_id)
        return Outcome(
            case_id=case.case_id,
            status=_status(case),
            resolution_code=result["code"],
            correct=result["correct"],
            fields=result["fields"],
        )
