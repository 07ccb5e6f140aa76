"""Promotion in every process that runs workers: the promotion round (labels from the feedback store, else the rows
each threshold was fitted on), its replication through the stage-event log (a compare-and-set, so a promotion
decided on a stale view never lands after a demotion), and the registry watcher that swaps in a new champion and
promotes again (real SQLite store, feedback store and critic registry; each AutonomyStages stands for a process)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from critic.confidence import PolicyConfidenceCritic
from critic.registry import CriticRegistry, Manifest, RowCounts, data_hash
from critic.thresholds import SliceThresholds, ThresholdConfig, ThresholdResult
from schemas import ActionType, AutonomyStage, SliceKey
from service.runtime.autonomy import AutonomyConfig, AutonomyStages
from service.runtime.champion import Champion, ChampionHolder, load_champion
from service.runtime.promotion import labels_needed, promotion_round, slice_labels, slice_of
from service.runtime.registry_watch import RegistryWatcher
from service.runtime.stage_sync import PROMOTION, StageSync
from service.runtime.store import RuntimeStore

CLICK = SliceKey(process_id="refund_request", action_type=ActionType.CLICK_CONTROL)
FILL = SliceKey(process_id="refund_request", action_type=ActionType.FILL_FIELD)
SEND = SliceKey(process_id="address_change", action_type=ActionType.SEND_TEXT_TO_CHAT)


def result(threshold: float | None, rows: int) -> ThresholdResult:
    return ThresholdResult(threshold, rows, rows // 2, 1, 0.01, 0.04, 0.5, "set by hand")


def slice_thresholds(*values: tuple[SliceKey, float | None, int]) -> SliceThresholds:
    """Slice-granular thresholds: (slice, threshold, rows it was fitted on) each."""
    return SliceThresholds(ThresholdConfig(granularity="slice"), {str(key): result(t, n) for key, t, n in values})


def stages() -> AutonomyStages:
    return AutonomyStages(AutonomyConfig(initial_stage=AutonomyStage.COPILOT, min_audits=20, audit_window=20))


@pytest.fixture
def store(tmp_path: Path) -> RuntimeStore:
    return RuntimeStore(f"sqlite:///{tmp_path / 'runtime.db'}")


def test_labels_come_from_the_feedback_store_else_from_the_threshold_rows() -> None:
    thresholds = slice_thresholds((CLICK, 0.7, 400), (FILL, 0.8, 300))
    counts = {("refund_request", "fill_field"): 120, ("address_change", "send_text_to_chat"): 250, ("x", "bad"): 9}
    assert slice_labels(thresholds, counts) == [(SEND, 250), (CLICK, 400), (FILL, 120)]
    assert slice_of("*") is None and slice_of("click_control") is None and slice_of("p/not_an_action") is None


def test_a_round_promotes_holding_slices_with_enough_labels(store: RuntimeStore) -> None:
    thresholds = slice_thresholds((CLICK, 0.7, 400), (FILL, 0.8, 120), (SEND, None, 900))
    here = stages()
    labels = slice_labels(thresholds, {})
    assert promotion_round(here, thresholds, labels, StageSync(store, here, "w1")) == [str(CLICK)]
    assert here.stage(FILL) == AutonomyStage.COPILOT  # 120 labels < 200
    assert here.stage(SEND) == AutonomyStage.COPILOT  # no holding threshold
    (event,) = store.stage_events_after(0)
    assert (event.kind, event.origin, event.process_id, event.action_type, event.stage) == (
        PROMOTION,
        "w1",
        CLICK.process_id,
        CLICK.action_type.value,
        "autopilot",
    )
    # A second round changes nothing and writes nothing.
    assert promotion_round(here, thresholds, labels, StageSync(store, here, "w1")) == [str(CLICK)]
    assert len(store.stage_events_after(0)) == 1


def test_a_pooled_cell_promotes_its_member_slices_with_few_labels_of_their_own() -> None:
    # Pooled thresholds (decision 0011): CLICK and FILL share the global cell, which holds; SEND is in no cell.
    config = ThresholdConfig(granularity="pooled", min_slice_rows=30)
    thresholds = SliceThresholds(config, {"*": result(0.7, 900)}, members={str(CLICK): "*", str(FILL): "*"})
    assert labels_needed(thresholds) == 30 and labels_needed(slice_thresholds()) == 200
    here = stages()
    labels = [(CLICK, 45), (FILL, 29), (SEND, 900)]
    assert promotion_round(here, thresholds, labels) == [str(CLICK)]
    assert here.stage(FILL) == AutonomyStage.COPILOT  # a member, but under min_slice_rows labels of its own
    assert here.stage(SEND) == AutonomyStage.COPILOT  # in no cell: no threshold, however many labels


def test_a_promotion_made_by_one_process_reaches_the_others_once(store: RuntimeStore) -> None:
    thresholds = slice_thresholds((CLICK, 0.7, 400))
    labels = slice_labels(thresholds, {})
    one, two, api = stages(), stages(), stages()
    sync_one, sync_two, sync_api = StageSync(store, one, "w1"), StageSync(store, two, "w2"), StageSync(store, api, "a")
    sync_two.poll(force=True)  # w2 read the log before w1 promoted: its view is stale when it decides
    assert promotion_round(one, thresholds, labels, sync_one) == [str(CLICK)]
    # w2 finds the slice due on its stale view, but the compare-and-set refuses a second promotion event ...
    assert two.promotion_due(CLICK, 0.7, 400) is not None
    assert sync_two.promote(CLICK, AutonomyStage.AUTOPILOT, "promoted: stale view") is None
    assert [e.origin for e in store.stage_events_after(0)] == ["w1"]
    # ... and the next poll applies w1's; an API that runs no round follows the log the same way.
    assert sync_two.poll(force=True) == 1 and sync_api.poll(force=True) == 1
    for process in (two, api):
        assert process.stage(CLICK) == AutonomyStage.AUTOPILOT
        assert "by w1" in process.state(CLICK).reason


def test_a_promotion_never_lands_after_a_demotion_its_maker_had_not_seen(store: RuntimeStore) -> None:
    one, two = stages(), stages()
    sync_one, sync_two = StageSync(store, one, "w1"), StageSync(store, two, "w2")
    assert sync_one.promote(CLICK, AutonomyStage.AUTOPILOT, "promoted: w1") is not None
    sync_two.poll(force=True)
    assert two.stage(CLICK) == AutonomyStage.AUTOPILOT
    # w2's guardrail demotes; w1 has not read that yet, so any promotion of the slice it decides now is refused.
    with sync_two.local_change():
        event = None
        for _ in range(20):  # every audited step rejected
            event = two.record_audit(CLICK, acceptable=False) or event
        assert event is not None
        sync_two.record_demotion(event)
    events = len(store.stage_events_after(0))
    assert sync_one.promote(CLICK, AutonomyStage.AUTOPILOT, "promoted: on a stale view") is None
    assert len(store.stage_events_after(0)) == events
    sync_one.poll(force=True)
    assert one.stage(CLICK) == two.stage(CLICK) == AutonomyStage.COPILOT
    assert one.promotion_due(CLICK, 0.7, 400) is None  # in cooldown after the demotion, there too


def test_a_process_keeps_its_own_later_change_over_an_older_promotion(store: RuntimeStore) -> None:
    one, two = stages(), stages()
    sync_one, sync_two = StageSync(store, one, "w1"), StageSync(store, two, "w2")
    assert sync_one.promote(CLICK, AutonomyStage.AUTOPILOT, "promoted: w1") is not None
    # w2 overrode the slice (and recorded it) before it read w1's promotion: in the log after it, so it wins.
    with sync_two.local_change():
        two.override(CLICK, AutonomyStage.COPILOT, "sam", "hold", pin=False)
        sync_two.record_override(CLICK, AutonomyStage.COPILOT, "sam", "hold", False)
    sync_two.poll(force=True)
    sync_one.poll(force=True)
    assert one.stage(CLICK) == two.stage(CLICK) == AutonomyStage.COPILOT


def test_a_replicated_promotion_respects_a_pin(store: RuntimeStore) -> None:
    one, two = stages(), stages()
    sync_one, sync_two = StageSync(store, one, "w1"), StageSync(store, two, "w2")
    with sync_two.local_change():
        two.override(CLICK, AutonomyStage.COPILOT, "sam", "pinned", pin=True)
        sync_two.record_override(CLICK, AutonomyStage.COPILOT, "sam", "pinned", True)
    # w1 had not read the pin: refused. After reading it, the slice is pinned in w1 too: not due.
    assert sync_one.promote(CLICK, AutonomyStage.AUTOPILOT, "promoted") is None
    sync_one.poll(force=True)
    assert one.promotion_due(CLICK, 0.7, 400) is None
    assert one.stage(CLICK) == two.stage(CLICK) == AutonomyStage.COPILOT


# ---- the registry watcher -----------------------------------------------------------------------------------------


def register(registry: CriticRegistry, tmp: Path, version: str, thresholds: SliceThresholds | None) -> str:
    critic = PolicyConfidenceCritic()
    critic.classes_ = np.array([0, 1])  # it learns nothing; as loaded from disk
    now = datetime.now(UTC)
    manifest = Manifest(
        version=version,
        kind=critic.name,
        window_start=now,
        window_end=now,
        rows=RowCounts(train=10, calibration=0, test=0),
        data_hash=data_hash(["a"], [1]),
        policy_version="tiny",
        alpha=0.1,
        delta=0.1,
    )
    saved = critic.save(tmp / f"artifact-{version}")
    return registry.register(saved, manifest, None if thresholds is None else thresholds.to_dict())


def test_the_watcher_swaps_in_a_new_champion_and_promotes_on_its_thresholds(
    tmp_path: Path, store: RuntimeStore
) -> None:
    registry = CriticRegistry(tmp_path / "registry")
    registry.promote(register(registry, tmp_path, "v1", slice_thresholds((FILL, 0.8, 500))), "first")
    holder = ChampionHolder(load_champion(registry))
    here = stages()
    counts = {("refund_request", "click_control"): 250}
    watcher = RegistryWatcher(
        holder, here, registry.root, sync=StageSync(store, here, "w1"), label_counts=lambda: counts, poll_s=0
    )
    assert watcher.initial_round() == [str(FILL)]
    assert watcher.check() is False  # nothing new
    before = holder.current

    registry.promote(register(registry, tmp_path, "v2", slice_thresholds((CLICK, 0.7, 40))), "nightly")
    assert watcher.check() is True
    assert holder.current.version == "v2" and holder.current is not before
    assert holder.threshold_for(CLICK) == 0.7 and holder.threshold_for(FILL) is None
    # 250 labels in the feedback store (the threshold's own 40 rows would not do): promoted.
    assert here.stage(CLICK) == AutonomyStage.AUTOPILOT

    registry.promote(register(registry, tmp_path, "v3", None), "a champion that cannot gate")
    assert watcher.check() is False and holder.current.version == "v2"  # kept


def test_a_champion_is_one_value_swapped_at_once() -> None:
    first = Champion(PolicyConfidenceCritic(), slice_thresholds((CLICK, 0.7, 400)), "v1")
    second = Champion(PolicyConfidenceCritic(), slice_thresholds((CLICK, 0.9, 400)), "v2")
    holder = ChampionHolder(first)
    seen = holder.current
    assert holder.swap(second) is first
    assert seen.version == "v1" and seen.thresholds.threshold_for(CLICK) == 0.7  # a batch keeps what it read
    assert holder.current.version == "v2" and holder.threshold_for(CLICK) == 0.9
