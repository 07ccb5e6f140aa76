"""Why sessions needed a human: the first rule and slice that interrupted each session, ranked
(``service.runtime.blockers``)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated

from fastapi import APIRouter, Query

from service.api.context import AutopilotService
from service.api.deps import ServiceDep, Supervisor
from service.api.qa_models import BlockerInfo, BlockerTable
from service.runtime.blockers import first_blockers, rank, sessions_started

router = APIRouter(prefix="/api/v1/supervisor", tags=["supervisor"])


def blocker_table(service: AutopilotService, hours: float | None = None, limit: int = 20) -> BlockerTable:
    """The ranked blockers of sessions started in the last ``hours`` (the audit window by default)."""
    since = datetime.now(UTC) - timedelta(hours=hours if hours is not None else service.settings.audit_window_h)
    blockers = first_blockers(service.store, since)
    return BlockerTable(
        since=since,
        sessions=sessions_started(service.store, since),
        interrupted=len(blockers),
        blockers=[BlockerInfo(**row.to_dict()) for row in rank(blockers.values(), limit)],
    )


@router.get("/blockers", response_model=BlockerTable)
def blockers(
    service: ServiceDep,
    caller: Supervisor,
    hours: Annotated[float | None, Query(gt=0, le=24 * 365)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 20,
) -> BlockerTable:
    """For every interrupted session, the first thing that made it need a human (a deferral's rule, always-ask,
    blocked, a hand-over), counted by kind, rule and slice, most first: where the next gap in automation is."""
    return blocker_table(service, hours, limit)
