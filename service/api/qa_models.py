"""Request and response bodies of the QA queue (after-the-fact audits) and of the blocker table."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from schemas.actions import Action
from schemas.decision import RejectReason, Verdict
from schemas.qa import QAAnswer, QAItem, QALabel


class QAItemInfo(BaseModel):
    item: QAItem = Field(description="The executed step: the state it was decided on, the proposal, the decision")
    status: Literal["pending", "answered"]
    age_s: float = Field(description="Seconds since the step was executed")
    answer: QAAnswer | None = None
    label: QALabel | None = None


class QAList(BaseModel):
    queues: list[str] | None = Field(description="The queues shown; None: all (a supervisor)")
    counts: dict[str, int] = Field(description="Items per status in these queues")
    items: list[QAItemInfo]


class QAAnswerRequest(BaseModel):
    """A review of an executed step: accept, correct (what you would have done instead) or reject, with a graded
    reason. The label follows from it: model_error and other are errors, acceptable_alternative is not, environment
    is left out of the error estimate."""

    model_config = ConfigDict(extra="forbid")

    proposal_id: str = Field(min_length=1, max_length=200, description="The item's proposal (guards against a mixup)")
    verdict: Verdict
    reason: RejectReason | None = None
    corrected_action: Action | None = None
    note: str | None = Field(default=None, max_length=2000)


class QAAnswerResponse(BaseModel):
    result: Literal["accepted", "duplicate"]
    session_id: str
    label: QALabel


class RealisedErrorInfo(BaseModel):
    """Unacceptable among reviewed executed steps: the estimate and its two-sided interval (sessions as clusters)."""

    errors: int
    reviewed: int
    sessions: int
    design_effect: float
    estimate: float | None
    low: float | None
    high: float | None
    confidence: float


class QASliceSummary(BaseModel):
    slice: str
    pending: int
    acceptable: int
    unacceptable: int
    excluded: int
    accepted: int = Field(description="Reviews whose verdict was accept (the paper's label)")


class QASummary(BaseModel):
    since: datetime
    alpha: float | None
    pending: int
    answered: int
    realised_error: RealisedErrorInfo = Field(description="Unacceptable = model_error or other; environment left out")
    realised_error_accept_label: RealisedErrorInfo = Field(description="Anything but accept counts (the paper's)")
    slices: list[QASliceSummary]


class QAOverview(BaseModel):
    """The dashboard's QA counts and realised error (the full table: ``/api/v1/qa/summary``)."""

    pending: int
    answered: int
    realised_error: RealisedErrorInfo
    realised_error_accept_label: RealisedErrorInfo


class BlockerInfo(BaseModel):
    kind: str = Field(description="deferral, always_ask, blocked, hand_over, failed or stopped")
    rule: str
    slice: str
    sessions: int
    share: float = Field(description="Of the interrupted sessions")


class BlockerTable(BaseModel):
    since: datetime
    sessions: int = Field(description="Sessions started since then")
    interrupted: int
    blockers: list[BlockerInfo]
