"""StageSync: stage changes made in one process reach every other process through the store's stage-event log
(real SQLite store; each AutonomyStages stands for one process)."""

from __future__ import annotations

from pathlib import Path

from schemas import ActionType, AutonomyStage, SliceKey
from service.runtime.autonomy import AutonomyConfig, AutonomyStages
from service.runtime.stage_sync import StageSync
from service.runtime.store import RuntimeStore

REFUND_SEND = SliceKey(process_id="refund_request", action_type=ActionType.SEND_TEXT_TO_CHAT)
REFUND_CLICK = SliceKey(process_id="refund_request", action_type=ActionType.CLICK_CONTROL)


def stages() -> AutonomyStages:
    return AutonomyStages(AutonomyConfig(initial_stage=AutonomyStage.COPILOT, min_audits=20, audit_window=20))


def promote(target: AutonomyStages, key: SliceKey) -> None:
    assert target.consider_promotion(key, 0.9, 500).stage == AutonomyStage.AUTOPILOT


def test_overrides_unpins_and_the_kill_switch_reach_the_other_process(tmp_path: Path) -> None:
    store = RuntimeStore(f"sqlite:///{tmp_path / 'runtime.db'}")
    api, worker = stages(), stages()
    api_sync, worker_sync = StageSync(store, api, "api"), StageSync(store, worker, "worker")

    api.override(REFUND_SEND, AutonomyStage.AUTOPILOT, "sam", "trial", pin=True)
    api_sync.record_override(REFUND_SEND, AutonomyStage.AUTOPILOT, "sam", "trial", True)
    assert worker.stage(REFUND_SEND) == AutonomyStage.COPILOT  # nothing until it polls
    assert worker_sync.poll(force=True) == 1
    assert worker.stage(REFUND_SEND) == AutonomyStage.AUTOPILOT
    assert worker.state(REFUND_SEND).pinned_by == "sam"

    api.unpin(REFUND_SEND, "sam")
    api_sync.record_unpin(REFUND_SEND, "sam")
    api.set_kill_switch(True, "sam", "incident 42")
    api_sync.record_kill_switch(True, "sam", "incident 42")
    assert worker_sync.poll(force=True) == 2
    assert worker.state(REFUND_SEND).pinned_by is None
    assert worker.kill_switch and worker.kill_switch_state().reason == "incident 42"
    assert api_sync.poll(force=True) == 0  # its own events are not applied twice
    assert worker_sync.poll(force=True) == 0  # nor anything twice


def test_a_guardrail_demotion_on_one_worker_demotes_the_slice_everywhere(tmp_path: Path) -> None:
    store = RuntimeStore(f"sqlite:///{tmp_path / 'runtime.db'}")
    one, two = stages(), stages()
    sync_one, sync_two = StageSync(store, one, "w1"), StageSync(store, two, "w2")
    for target in (one, two):
        promote(target, REFUND_CLICK)
    event = None
    for _ in range(20):  # every audited step rejected: the audited-acceptance guardrail fires
        event = one.record_audit(REFUND_CLICK, acceptable=False) or event
    assert event is not None and event.to_stage == AutonomyStage.COPILOT
    sync_one.record_demotion(event)
    assert two.stage(REFUND_CLICK) == AutonomyStage.AUTOPILOT
    sync_two.poll(force=True)
    assert two.stage(REFUND_CLICK) == AutonomyStage.COPILOT
    assert "raised by w1" in two.state(REFUND_CLICK).reason
    # The demoted slice is in cooldown there too: the next promotion round keeps it in copilot.
    assert two.consider_promotion(REFUND_CLICK, 0.9, 500).stage == AutonomyStage.COPILOT


def test_a_process_starting_later_replays_the_log(tmp_path: Path) -> None:
    store = RuntimeStore(f"sqlite:///{tmp_path / 'runtime.db'}")
    api = stages()
    api_sync = StageSync(store, api, "api")
    api_sync.record_override(REFUND_SEND, AutonomyStage.LOGGING, "sam", "not yet", True)
    api_sync.record_kill_switch(True, "sam", "drill")
    api_sync.record_kill_switch(False, "sam", "drill over")
    store.append_stage_event("api", "a-kind-from-a-newer-version", "sam", "?")  # skipped, never stalls the log
    late = stages()
    assert StageSync(store, late, "late-worker").poll(force=True) == 3
    assert late.stage(REFUND_SEND) == AutonomyStage.LOGGING
    assert not late.kill_switch


def test_demotion_events_that_changed_nothing_are_not_replicated(tmp_path: Path) -> None:
    store = RuntimeStore(f"sqlite:///{tmp_path / 'runtime.db'}")
    one = stages()
    sync = StageSync(store, one, "w1")
    event = one.alarm(REFUND_CLICK, "copilot slice: promotion held")  # not in autopilot: the stage stays
    assert event.from_stage == event.to_stage
    sync.record_demotion(event)
    assert store.stage_events_after(0) == []
