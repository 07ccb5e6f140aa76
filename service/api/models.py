"""Request and response bodies of the API (the payloads themselves come from ``schemas``)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt

from schemas.actions import Action
from schemas.decision import Decision, Deferral, RejectReason, Verdict
from schemas.proposal import Proposal
from schemas.risk import AutonomyStage, SliceKey
from schemas.state import UIState
from service.api.qa_models import BlockerInfo, QAOverview


class ErrorDetail(BaseModel):
    """401, 403, 404 and 409 answers."""

    detail: str


class ValidationIssue(BaseModel):
    loc: list[str | int]
    msg: str
    type: str


class ValidationErrorDetail(BaseModel):
    """422 answers: FastAPI's shape, each issue naming its field in ``loc``."""

    detail: list[ValidationIssue]


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SuggestRequest(Body):
    state: UIState
    k: StrictInt = Field(default=5, ge=1, le=20, description="How many alternatives to rank")


class SuggestResponse(BaseModel):
    proposal: Proposal | None = Field(description="None: the policy has no valid action for this screen")
    score: float | None = Field(default=None, description="Critic P(accept); None for non-critical actions")
    decision: Decision | None = Field(default=None, description="What the router would do with it in a session")
    latency_ms: float


class FeedbackRequest(Body):
    state: UIState
    proposal: Proposal
    verdict: Literal[Verdict.ACCEPT, Verdict.CORRECT]
    corrected_action: Action | None = None
    reason: RejectReason | None = None


class FeedbackResponse(BaseModel):
    record_id: str


class InboxItem(BaseModel):
    deferral: Deferral
    age_s: float


class InboxResponse(BaseModel):
    queues: list[str] | None = Field(description="The queues shown; None: all (a supervisor)")
    items: list[InboxItem]


class AnswerRequest(Body):
    proposal_id: str = Field(min_length=1, max_length=200)
    state_etag: str = Field(min_length=1, max_length=200)
    verdict: Verdict
    corrected_action: Action | None = None
    reason: RejectReason | None = None


class AnswerResponse(BaseModel):
    result: Literal["accepted", "duplicate"]
    session_id: str


class StartSessionsRequest(Body):
    case_ids: list[Annotated[str, Field(min_length=1, max_length=200)]] = Field(min_length=1, max_length=1000)


class StartSessionsResponse(BaseModel):
    session_ids: list[str]


class SessionInfo(BaseModel):
    session_id: str
    case_id: str
    process_id: str
    status: str
    owner: str | None
    step: int
    actions_applied: int
    actions_deferred: int
    automated: bool
    started_at: datetime
    updated_at: datetime
    outcome: dict[str, object] | None = None


class SessionDetail(SessionInfo):
    decisions: list[Decision]
    deferrals: list[dict[str, object]]


class SessionList(BaseModel):
    sessions: list[SessionInfo]
    counts: dict[str, int]


class SliceInfo(BaseModel):
    slice: SliceKey
    stage: AutonomyStage
    reason: str
    since: datetime | None
    pinned_by: str | None
    threshold: float | None
    audits_accepted: int
    audits_total: int
    realised_error: float | None
    answers_corrected: int
    answers_total: int


class StageRequest(Body):
    stage: AutonomyStage
    reason: str = Field(min_length=1, max_length=500)
    pin: StrictBool = True


class KillSwitchRequest(Body):
    on: StrictBool
    reason: str = Field(min_length=1, max_length=500)


class KillSwitchInfo(BaseModel):
    on: bool
    actor: str | None
    reason: str | None
    at: datetime | None


class StageEventInfo(BaseModel):
    at: datetime
    slice: SliceKey
    from_stage: AutonomyStage
    to_stage: AutonomyStage
    reason: str
    actor: str


class QueueInfo(BaseModel):
    queue: str
    depth: int
    oldest_age_s: float


class WorkerInfo(BaseModel):
    """A worker as its heartbeat row in the store shows it (wherever it runs)."""

    worker_id: str
    alive: bool = Field(description="Not stopped, and seen within three of its heartbeat intervals")
    started_at: datetime
    last_seen: datetime
    critic_version: str | None
    stage_event_id: int = Field(description="The stage-event log is applied up to this id")
    kill_switch: bool
    sessions: int
    decisions: dict[str, int]
    decision_latency_ms: dict[str, float | int | None]


class Overview(BaseModel):
    sessions: dict[str, int]
    sessions_ended: int
    sessions_automated: int
    automated_ratio: float | None
    queues: list[QueueInfo]
    kill_switch: KillSwitchInfo
    critic_version: str | None
    alpha: float | None
    decisions: dict[str, int]
    decision_latency_ms: dict[str, float | int | None]
    workers: list[WorkerInfo] = Field(default_factory=list)
    handling: dict[str, float | None]
    slices: list[SliceInfo]
    recent_events: list[StageEventInfo]
    plots: list[str]
    blockers: list[BlockerInfo] = Field(
        default_factory=list, description="Why sessions needed a human (top 10; /api/v1/supervisor/blockers)"
    )
    qa: QAOverview | None = Field(default=None, description="QA queue and realised error (/api/v1/qa/summary)")


class AuditEntryInfo(BaseModel):
    entry_id: int
    at: datetime
    actor: str
    action: str
    target: str
    details: dict[str, object]


class Health(BaseModel):
    status: Literal["ok", "unavailable"]
    checks: dict[str, str]
