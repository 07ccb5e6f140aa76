"""QA queue: executed background steps sampled for review after the fact (the caller's queues), the review of one,
and the realised-error estimate the reviews give (``service.runtime.qa``, ``service.runtime.realised_error``)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Literal

from fastapi import APIRouter, Path, Query

from schemas.decision import Verdict
from schemas.qa import QAAnswer, QALabel
from service.api.context import AutopilotService, check_action
from service.api.deps import OperatorOrSupervisor, ServiceDep, Supervisor
from service.api.errors import ConflictError, ForbiddenError, InputError, NotFoundError
from service.api.models import ErrorDetail
from service.api.qa_models import (
    QAAnswerRequest,
    QAAnswerResponse,
    QAItemInfo,
    QAList,
    QASliceSummary,
    QASummary,
    RealisedErrorInfo,
)
from service.runtime.qa_store import QARow, QAStatus
from service.runtime.realised_error import realised_error
from service.runtime.store import AnswerStatus

router = APIRouter(prefix="/api/v1/qa", tags=["qa"])

QAId = Annotated[str, Path(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9_.:-]+$")]
Limit = Annotated[int, Query(ge=1, le=500)]


def _info(row: QARow, now: datetime) -> QAItemInfo:
    return QAItemInfo(
        item=row.item,
        status="pending" if row.status == QAStatus.PENDING else "answered",
        age_s=round(max(0.0, (now - row.created_at).total_seconds()), 3),
        answer=row.answer,
        label=row.label,
    )


@router.get("", response_model=QAList)
def qa_items(
    service: ServiceDep,
    caller: OperatorOrSupervisor,
    status: Literal["pending", "answered"] = "pending",
    limit: Limit = 100,
) -> QAList:
    """Executed steps to review (pending, oldest first) or reviewed (newest first): the caller's queues (an
    operator) or every queue (a supervisor)."""
    queues = service.visible_queues(caller)
    store = service.qa.store
    rows = store.items(queues, QAStatus(status), limit)
    now = datetime.now(UTC)
    return QAList(queues=queues, counts=store.counts(queues), items=[_info(row, now) for row in rows])


@router.post(
    "/{qa_id}/answer",
    response_model=QAAnswerResponse,
    responses={
        404: {"model": ErrorDetail, "description": "unknown QA item"},
        409: {"model": ErrorDetail, "description": "answered differently already, or another proposal"},
    },
)
def answer(qa_id: QAId, body: QAAnswerRequest, service: ServiceDep, caller: OperatorOrSupervisor) -> QAAnswerResponse:
    """Review an executed step once: the label feeds the slice's guardrails, the realised-error estimate and the
    nightly retraining. Repeating the same review is harmless (``duplicate``); a different one is refused (409)."""
    row = service.qa.store.get(qa_id)
    if row is None:
        raise NotFoundError(f"qa_id: no QA item {qa_id!r}")
    item = row.item
    if not caller.may_answer(item.queue):
        raise ForbiddenError(f"qa_id: {qa_id!r} is in queue {item.queue!r}, not one of yours")
    if body.proposal_id != item.proposal.proposal_id:
        raise ConflictError(f"proposal_id: the QA item is for proposal {item.proposal.proposal_id!r}")
    _check(body)
    if body.corrected_action is not None:  # a training row: the correction must fit the screen it was made on
        check_action(body.corrected_action, item.state.screen, "corrected_action")
    review = QAAnswer(
        qa_id=qa_id,
        proposal_id=body.proposal_id,
        session_id=item.session_id,
        verdict=body.verdict,
        reason=body.reason,
        corrected_action=body.corrected_action,
        note=body.note,
        operator_id=caller.name,
    )
    # The review and its audit entry are written in one transaction (``QAReviews.record``), then its effects.
    result = service.qa.record(review, audit_details={"slice": str(item.decision.slice)})
    if result.result == AnswerStatus.UNKNOWN:
        raise NotFoundError(f"qa_id: {result.reason}")
    if result.result == AnswerStatus.STALE:
        raise ConflictError(f"qa_id: {result.reason}")
    kind: Literal["accepted", "duplicate"] = "accepted" if result.result == AnswerStatus.ACCEPTED else "duplicate"
    return QAAnswerResponse(result=kind, session_id=item.session_id, label=review.label)


def _check(body: QAAnswerRequest) -> None:
    """The review's own consistency, named by field (answered 422 with ``["body", field]``)."""
    if body.verdict == Verdict.ACCEPT:
        if body.reason is not None:
            raise InputError(("reason",), "must be empty when the verdict is accept")
        if body.corrected_action is not None:
            raise InputError(("corrected_action",), "must be empty when the verdict is accept")
        return
    if body.reason is None:
        raise InputError(("reason",), f"required when the verdict is {body.verdict.value}")
    if body.verdict == Verdict.CORRECT and body.corrected_action is None:
        raise InputError(("corrected_action",), "required when the verdict is correct")
    if body.verdict == Verdict.REJECT and body.corrected_action is not None:
        raise InputError(("corrected_action",), "must be empty when the verdict is reject (use correct)")


def qa_summary(service: AutopilotService) -> QASummary:
    """The realised error over the audit window, under both labels, and per slice (also the dashboard's)."""
    since = datetime.now(UTC) - timedelta(hours=service.settings.audit_window_h)
    store = service.qa.store
    labels = store.labels(since)
    operators = realised_error(
        (row.session_id, row.label == QALabel.UNACCEPTABLE) for row in labels if row.label != QALabel.EXCLUDED
    )
    accept = realised_error((row.session_id, not row.accepted) for row in labels)
    counts = store.counts()
    return QASummary(
        since=since,
        alpha=service.thresholds.config.alpha,
        pending=counts[QAStatus.PENDING.value],
        answered=counts[QAStatus.ANSWERED.value],
        realised_error=RealisedErrorInfo(**operators.to_dict()),
        realised_error_accept_label=RealisedErrorInfo(**accept.to_dict()),
        slices=[QASliceSummary(slice=name, **counts) for name, counts in store.outcomes(since).items()],
    )


@router.get("/summary", response_model=QASummary)
def summary(service: ServiceDep, caller: Supervisor) -> QASummary:
    """Realised error of auto-executed steps from the reviews of the last ``AUTOPILOT_AUDIT_WINDOW_H`` hours: the
    share operators called unacceptable, with its 95% interval, beside the accept label's, and per slice."""
    return qa_summary(service)
