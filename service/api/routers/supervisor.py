"""Supervisor: overview, slices (stage, threshold, guardrails), promote / demote / unpin, the kill switch, stage
events, the audit log and the champion critic's plots."""

from __future__ import annotations

import statistics
from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, Query, status
from fastapi.responses import FileResponse

from schemas.actions import ActionType
from schemas.risk import SliceKey
from service.api.context import AutopilotService
from service.api.deps import AnyRole, ServiceDep, Supervisor
from service.api.models import (
    AuditEntryInfo,
    ErrorDetail,
    KillSwitchInfo,
    KillSwitchRequest,
    Overview,
    QueueInfo,
    SliceInfo,
    StageEventInfo,
    StageRequest,
    WorkerInfo,
)
from service.api.qa_models import QAOverview
from service.api.routers.blockers import blocker_table
from service.api.routers.qa import qa_summary
from service.runtime.autonomy import StageEvent

router = APIRouter(prefix="/api/v1/supervisor", tags=["supervisor"])

ProcessId = Annotated[str, Path(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.-]+$")]


def _slice_info(
    service: AutopilotService, key: SliceKey, audits: dict[str, tuple[int, int]] | None = None
) -> SliceInfo:
    state = service.stages.state(key)
    # From the store (every worker's audits, whichever process runs them), over AUTOPILOT_AUDIT_WINDOW_H.
    accepted, total = (audits if audits is not None else service.audit_outcomes()).get(str(key), (0, 0))
    corrected, answers = service.stages.correction_counts(key)
    return SliceInfo(
        slice=key,
        stage=state.stage,
        reason=state.reason,
        since=state.since,
        pinned_by=state.pinned_by,
        threshold=service.thresholds.threshold_for(key),
        audits_accepted=accepted,
        audits_total=total,
        realised_error=None if total == 0 else round(1.0 - accepted / total, 6),
        answers_corrected=corrected,
        answers_total=answers,
    )


def _event(event: StageEvent) -> StageEventInfo:
    return StageEventInfo(
        at=event.at,
        slice=event.slice,
        from_stage=event.from_stage,
        to_stage=event.to_stage,
        reason=event.reason,
        actor=event.actor,
    )


def _kill(service: AutopilotService) -> KillSwitchInfo:
    kill = service.stages.kill_switch_state()
    return KillSwitchInfo(on=kill.on, actor=kill.actor, reason=kill.reason, at=kill.at)


@router.get("/overview", response_model=Overview)
def overview(service: ServiceDep, caller: Supervisor) -> Overview:
    """Everything the dashboard shows, in one call. Decisions, latency and worker health come from the store
    (the decisions table and the workers' heartbeat rows), so workers in other processes and pods show."""
    store = service.store
    automated, ended = store.automation_counts()
    now = datetime.now(UTC)
    workers = [
        WorkerInfo(
            worker_id=beat.worker_id,
            alive=beat.alive(now),
            started_at=beat.started_at,
            last_seen=beat.last_seen,
            critic_version=beat.critic_version,
            stage_event_id=beat.stage_event_id,
            kill_switch=beat.kill_switch,
            sessions=beat.sessions,
            decisions=beat.decisions,
            decision_latency_ms=beat.decision_latency_ms,
        )
        for beat in service.worker_heartbeats()
    ]
    latencies = [
        float(p50)
        for worker in workers
        if worker.alive and isinstance(p50 := worker.decision_latency_ms.get("p50"), int | float)
    ]
    recent = store.sessions(limit=500)
    durations = [(r.updated_at - r.started_at).total_seconds() for r in recent if r.status.value == "completed"]
    events = [e for e in service.stages.events() if e.from_stage != e.to_stage or e.actor != "system"]
    audits = service.audit_outcomes()
    return Overview(
        sessions=store.counts_by_status(),
        sessions_ended=ended,
        sessions_automated=automated,
        automated_ratio=None if ended == 0 else automated / ended,
        queues=[
            QueueInfo(queue=q, depth=s.depth, oldest_age_s=s.oldest_age_s) for q, s in store.deferral_stats(now).items()
        ],
        kill_switch=_kill(service),
        critic_version=service.critic_version,
        alpha=service.thresholds.config.alpha,
        decisions=service.decision_counts(),
        decision_latency_ms={"p50_of_workers": statistics.median(latencies) if latencies else None},
        workers=workers,
        handling={
            "completed_sessions_median_s": statistics.median(durations) if durations else None,
            "completed_sessions_mean_s": statistics.fmean(durations) if durations else None,
        },
        slices=[_slice_info(service, key, audits) for key in service.known_slices()],
        recent_events=[_event(e) for e in events[-50:]][::-1],
        plots=[p.name for p in service.plots()],
        blockers=blocker_table(service, limit=10).blockers,
        qa=_qa_overview(service),
    )


def _qa_overview(service: AutopilotService) -> QAOverview:
    summary = qa_summary(service)
    return QAOverview(
        pending=summary.pending,
        answered=summary.answered,
        realised_error=summary.realised_error,
        realised_error_accept_label=summary.realised_error_accept_label,
    )


@router.get("/slices", response_model=list[SliceInfo])
def slices(service: ServiceDep, caller: AnyRole) -> list[SliceInfo]:
    """Every known slice with its stage, threshold and guardrail state."""
    audits = service.audit_outcomes()
    return [_slice_info(service, key, audits) for key in service.known_slices()]


@router.post("/slices/{process_id}/{action_type}/stage", response_model=SliceInfo)
def set_stage(
    process_id: ProcessId, action_type: ActionType, body: StageRequest, service: ServiceDep, caller: Supervisor
) -> SliceInfo:
    """Promote or demote a slice (pinned by default: no automatic change until unpinned). Takes effect on the
    next decision."""
    key = SliceKey(process_id=process_id, action_type=action_type)
    service.set_stage(caller, key, body.stage, body.reason, body.pin)
    return _slice_info(service, key)


@router.post("/slices/{process_id}/{action_type}/unpin", response_model=SliceInfo)
def unpin(process_id: ProcessId, action_type: ActionType, service: ServiceDep, caller: Supervisor) -> SliceInfo:
    """Hand a pinned slice back to the automatic promotion and demotion rules."""
    key = SliceKey(process_id=process_id, action_type=action_type)
    service.unpin(caller, key)
    return _slice_info(service, key)


@router.get("/kill-switch", response_model=KillSwitchInfo)
def kill_switch(service: ServiceDep, caller: AnyRole) -> KillSwitchInfo:
    return _kill(service)


@router.put("/kill-switch", response_model=KillSwitchInfo)
def set_kill_switch(body: KillSwitchRequest, service: ServiceDep, caller: Supervisor) -> KillSwitchInfo:
    """On: every step of every session is deferred to a human until it is switched off."""
    service.set_kill_switch(caller, body.on, body.reason)
    return _kill(service)


@router.get("/events", response_model=list[StageEventInfo])
def events(
    service: ServiceDep, caller: Supervisor, limit: Annotated[int, Query(ge=1, le=1000)] = 100
) -> list[StageEventInfo]:
    """Stage changes and guardrail alarms, newest first."""
    return [_event(e) for e in service.stages.events()[-limit:]][::-1]


@router.get("/audit-log", response_model=list[AuditEntryInfo])
def audit_log(
    service: ServiceDep, caller: Supervisor, limit: Annotated[int, Query(ge=1, le=1000)] = 100
) -> list[AuditEntryInfo]:
    """State-changing calls: who, when, what."""
    return [
        AuditEntryInfo(entry_id=e.id, at=e.at, actor=e.actor, action=e.action, target=e.target, details=e.details)
        for e in service.store.audit_log(limit)
    ]


@router.get(
    "/plots/{name}",
    response_class=FileResponse,
    responses={200: {"content": {"image/png": {}}}, 404: {"model": ErrorDetail, "description": "no such plot"}},
)
def plot(
    name: Annotated[str, Path(pattern=r"^[A-Za-z0-9_.-]+\.png$", max_length=200)],
    service: ServiceDep,
    caller: Supervisor,
) -> FileResponse:
    """A plot of the champion critic's report (calibration, risk-coverage)."""
    for path in service.plots():
        if path.name == name:
            return FileResponse(path, media_type="image/png")
    raise HTTPException(status.HTTP_404_NOT_FOUND, f"name: no plot {name!r}")
