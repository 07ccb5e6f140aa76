"""Background sessions: start (one per case), list, inspect, stop."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, status

from service.api.deps import AnyRole, ServiceDep, SessionsCaller
from service.api.errors import InputError
from service.api.models import (
    ErrorDetail,
    SessionDetail,
    SessionInfo,
    SessionList,
    StartSessionsRequest,
    StartSessionsResponse,
)
from service.runtime.store import SessionRow, SessionStatus

router = APIRouter(prefix="/api/v1/sessions", tags=["sessions"])


def _info(row: SessionRow) -> SessionInfo:
    return SessionInfo(
        session_id=row.session_id,
        case_id=row.case_id,
        process_id=row.process_id,
        status=row.status.value,
        owner=row.owner,
        step=row.step,
        actions_applied=row.actions_applied,
        actions_deferred=row.actions_deferred,
        automated=row.automated,
        started_at=row.started_at,
        updated_at=row.updated_at,
        outcome=row.outcome,
    )


@router.post(
    "",
    response_model=StartSessionsResponse,
    status_code=status.HTTP_202_ACCEPTED,
    responses={404: {"model": ErrorDetail, "description": "a case the BPM does not know"}},
)
def start(body: StartSessionsRequest, service: ServiceDep, caller: SessionsCaller) -> StartSessionsResponse:
    """Start a background session per case (a repeated start of a case is the same session). Accepted: a worker
    picks each one up from the ``sessions`` topic."""
    if len(set(body.case_ids)) != len(body.case_ids):
        raise InputError(("case_ids",), "contains duplicates")
    return StartSessionsResponse(session_ids=service.start_sessions(caller, body.case_ids))


@router.get("", response_model=SessionList)
def list_sessions(
    service: ServiceDep,
    caller: AnyRole,
    status_: Annotated[SessionStatus | None, Query(alias="status")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> SessionList:
    """Sessions, newest first, optionally of one status, with the counts per status."""
    rows = service.store.sessions(status_, limit=limit)
    return SessionList(sessions=[_info(r) for r in rows], counts=service.store.counts_by_status())


@router.get(
    "/{session_id}",
    response_model=SessionDetail,
    responses={404: {"model": ErrorDetail, "description": "unknown session"}},
)
def inspect(session_id: str, service: ServiceDep, caller: AnyRole) -> SessionDetail:
    """One session with its decisions and deferrals."""
    row = service.store.get_session(session_id)
    if row is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"session_id: no session {session_id!r}")
    deferrals = [
        {
            "deferral_id": d.deferral.deferral_id,
            "queue": d.deferral.queue,
            "status": d.status.value,
            "proposal_id": d.deferral.proposal.proposal_id,
            "created_at": d.created_at.isoformat(),
            "answered_at": d.answered_at.isoformat() if d.answered_at else None,
            "operator_id": d.operator_id,
            "verdict": d.answer.verdict.value if d.answer else None,
        }
        for d in service.store.session_deferrals(session_id)
    ]
    return SessionDetail(**_info(row).model_dump(), decisions=service.store.decisions(session_id), deferrals=deferrals)


@router.post(
    "/{session_id}/stop",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=SessionInfo,
    responses={
        404: {"model": ErrorDetail, "description": "unknown session"},
        409: {"model": ErrorDetail, "description": "already ended"},
    },
)
def stop(session_id: str, service: ServiceDep, caller: SessionsCaller) -> SessionInfo:
    """Stop a running or parked session (its pending deferral is cancelled; nothing more is executed)."""
    service.stop_session(caller, session_id)
    row = service.store.get_session(session_id)
    assert row is not None
    return _info(row)
