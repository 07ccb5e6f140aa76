"""Copilot: suggest for a UI state (proposal, critic score, the router's decision); record accept / correct."""

from __future__ import annotations

from fastapi import APIRouter, status
from starlette.concurrency import run_in_threadpool

from service.api.deps import AnyRole, OperatorOrSupervisor, ServiceDep
from service.api.limits import check_state, limits_of
from service.api.models import ErrorDetail, FeedbackRequest, FeedbackResponse, SuggestRequest, SuggestResponse

router = APIRouter(prefix="/api/v1/copilot", tags=["copilot"])


@router.post(
    "/suggest",
    response_model=SuggestResponse,
    responses={
        429: {
            "model": ErrorDetail,
            "description": "the policy's queue is full: retry after the seconds in the Retry-After header",
        },
        503: {
            "model": ErrorDetail,
            "description": "no suggestion within the policy timeout: retry after the seconds in Retry-After",
        },
    },
)
async def suggest(body: SuggestRequest, service: ServiceDep, caller: AnyRole) -> SuggestResponse:
    """The policy's next action for ``state`` with its critic score, and what the router would decide for it in
    a background session (execute, defer and why). A state over a limit (chat messages, controls, prompt
    characters) is refused with a 422 naming the field and the limit. Concurrent requests are gathered for a few
    milliseconds and answered in one batch; when too many wait, the answer is 429 with ``Retry-After`` (seconds)
    at once."""
    check_state(body.state, limits_of(service.settings))
    suggestion = await service.suggest_async(body.state, k=body.k)
    if suggestion is None:
        return SuggestResponse(proposal=None, latency_ms=0.0)
    # feedback is accepted for issued proposals only; a store write: off the event loop
    await run_in_threadpool(service.record_issued, caller, suggestion.proposal)
    return SuggestResponse(
        proposal=suggestion.proposal,
        score=suggestion.score,
        decision=suggestion.decision,
        latency_ms=round(suggestion.latency_ms, 3),
    )


@router.post("/feedback", response_model=FeedbackResponse, status_code=status.HTTP_201_CREATED)
def feedback(body: FeedbackRequest, service: ServiceDep, caller: OperatorOrSupervisor) -> FeedbackResponse:
    """The operator accepted the suggestion, or corrected it (with the action taken and a graded reason). Stored
    as a critic training row through the ``feedback`` topic. Only for a proposal this service suggested to the
    caller (unchanged, for that state, in one of the caller's queues), once; see docs/operations.md."""
    check_state(body.state, limits_of(service.settings))
    record = service.record_feedback(
        caller, body.state, body.proposal, body.verdict, body.corrected_action, body.reason
    )
    return FeedbackResponse(record_id=record.record_id)
