"""Operator inbox: pending deferrals of the caller's queues (a list, or live over server-sent events), and the
answer to one deferral, bound to its proposal id and state etag."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import StreamingResponse

from service.api.context import AutopilotService
from service.api.deps import OperatorOrSupervisor, ServiceDep, get_hub
from service.api.models import AnswerRequest, AnswerResponse, ErrorDetail, InboxItem, InboxResponse
from service.runtime.store import AnswerStatus

router = APIRouter(prefix="/api/v1/inbox", tags=["inbox"])

Limit = Annotated[int, Query(ge=1, le=500)]
PING_S = 15.0  # a keep-alive comment after this long without an event (proxies close silent connections)


def inbox_items(service: AutopilotService, queues: list[str] | None, limit: int) -> list[InboxItem]:
    now = datetime.now(UTC)
    return [
        InboxItem(deferral=d, age_s=round(max(0.0, (now - d.created_at).total_seconds()), 3))
        for d in service.store.pending_deferrals(queues, limit=limit)
    ]


@router.get("", response_model=InboxResponse)
def inbox(service: ServiceDep, caller: OperatorOrSupervisor, limit: Limit = 100) -> InboxResponse:
    """Pending deferrals, oldest first: the caller's queues (an operator) or every queue (a supervisor)."""
    queues = service.visible_queues(caller)
    return InboxResponse(queues=queues, items=inbox_items(service, queues, limit))


@router.get(
    "/stream",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}, "description": "server-sent events"}},
)
async def stream(
    request: Request, service: ServiceDep, caller: OperatorOrSupervisor, limit: Limit = 100
) -> StreamingResponse:
    """Server-sent events: ``inbox`` with the whole pending list whenever it changes (a deferral arrived, was
    answered or went stale), and a ``ping`` comment every 15 s. The store is the source, so every API replica
    shows the same inbox whichever worker parked the step; the stream waits for events, not on a timer
    (``service.api.inbox_hub``). When the token is revoked or expires the stream ends within seconds with a
    ``closed`` event."""
    queues = service.visible_queues(caller)
    hub = get_hub(request)
    token = request.headers.get("authorization", "").partition(" ")[2].strip()

    async def events() -> AsyncIterator[str]:
        subscription = await hub.subscribe(caller, token, queues, limit)
        try:
            while True:
                message = await subscription.next(PING_S)
                if message is None:
                    yield ": ping\n\n"
                    continue
                yield message
                if subscription.closed is not None:
                    return  # revoked or expired: the last event said why
        finally:
            hub.unsubscribe(subscription)

    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return StreamingResponse(events(), media_type="text/event-stream", headers=headers)


@router.post(
    "/{deferral_id}/answer",
    response_model=AnswerResponse,
    responses={
        404: {"model": ErrorDetail, "description": "unknown deferral"},
        409: {"model": ErrorDetail, "description": "stale: answered or moved on"},
    },
)
def answer(deferral_id: str, body: AnswerRequest, service: ServiceDep, caller: OperatorOrSupervisor) -> AnswerResponse:
    """Accept, correct (with the action taken instead) or reject (take the case over) a deferred step. Only the
    pending proposal at its state etag can be answered, once; the session then re-observes the UI and goes on."""
    result = service.answer(
        caller, deferral_id, body.proposal_id, body.state_etag, body.verdict, body.corrected_action, body.reason
    )
    assert result.session_id is not None
    kind = "accepted" if result.result == AnswerStatus.ACCEPTED else "duplicate"
    return AnswerResponse(result=kind, session_id=result.session_id)
