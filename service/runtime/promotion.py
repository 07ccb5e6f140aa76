"""The promotion round: which slices move up a stage, from the champion's thresholds and the labels per slice.

One round asks ``AutonomyStages.promotion_due`` for every slice with labels: the slices of the feedback store
(``critic.store.FeedbackStore.counts_by_slice``, what operators labelled) with their counts, and the slices the
champion's thresholds name at slice granularity, with the rows each threshold was fitted on when the store has
none for the slice. Each slice's threshold comes from the thresholds at their own granularity. Pinned slices and
slices in cooldown after a demotion stay where they are.

Every process that runs workers runs the round the same way (``service.runtime.registry_watch``): when it starts
and whenever a new champion comes into use. A promotion is made through ``StageSync.promote``: appended to the
store's stage-event log with a compare-and-set (refused if the slice changed in the log since this process last
read it) and only then applied, so every other process applies the same promotion and none lands on top of a
demotion its maker had not seen (see ``service.runtime.stage_sync``).
"""

from __future__ import annotations

from collections.abc import Mapping

from critic.thresholds import SliceThresholds
from schemas.risk import AutonomyStage, SliceKey
from service.runtime.autonomy import AutonomyStages
from service.runtime.stage_sync import StageSync

MIN_LABELS = 200  # copilot -> autopilot needs this many labels besides a holding threshold


def labels_needed(thresholds: SliceThresholds, min_labels: int = MIN_LABELS) -> int:
    """The labels a slice needs of its own to be promoted under ``thresholds``. Pooled thresholds (decision 0011)
    certify a cell of slices together, and a slice is a member only with ``min_slice_rows`` rows, which is then
    all it needs: asking each slice for ``min_labels`` as well would keep the long tail the pool exists for in
    copilot mode. Other granularities certify each slice's group on its own rows: ``min_labels``."""
    if thresholds.config.granularity == "pooled":
        return min(min_labels, thresholds.config.min_slice_rows)
    return min_labels


def slice_of(group: str) -> SliceKey | None:
    """The slice of a threshold group name at slice granularity (``process/action_type``); None for coarser
    names (global ``*``, an action type or a process alone) and for names that are no slice."""
    process_id, sep, action_type = group.partition("/")
    if not sep:
        return None
    try:
        return SliceKey(process_id=process_id, action_type=action_type)
    except ValueError:
        return None


def slice_labels(
    thresholds: SliceThresholds, feedback_counts: Mapping[tuple[str, str], int]
) -> list[tuple[SliceKey, int]]:
    """Every slice with labels and how many, sorted by slice: the feedback store's counts
    (``(process_id, action_type) -> rows``), else the rows the slice's threshold was fitted on."""
    labels: dict[str, tuple[SliceKey, int]] = {}
    for (process_id, action_type), n in feedback_counts.items():
        key = slice_of(f"{process_id}/{action_type}")
        if key is not None:
            labels[str(key)] = (key, int(n))
    for name in thresholds:
        key = slice_of(name)
        if key is not None and str(key) not in labels:
            labels[str(key)] = (key, thresholds[name].n_rows)
    return [labels[name] for name in sorted(labels)]


def promotion_round(
    stages: AutonomyStages,
    thresholds: SliceThresholds,
    labels: list[tuple[SliceKey, int]],
    sync: StageSync | None = None,
    min_labels: int = MIN_LABELS,
) -> list[str]:
    """Promote every slice of ``labels`` that qualifies, by one stage (``min_labels`` as ``labels_needed`` reads
    it); returns those in autopilot afterwards.
    With ``sync`` (a process among others) each promotion goes through the stage-event log first; without it (a
    process alone) it is applied directly."""
    if sync is not None:
        sync.poll(force=True)  # decide on the freshest view: a compare-and-set on a stale one is refused
    needed = labels_needed(thresholds, min_labels)
    in_autopilot = []
    for key, n in labels:
        due = stages.promotion_due(key, thresholds.threshold_for(key), n, needed)
        if due is not None:
            if sync is None:
                stages.promote(key, *due)
            else:
                sync.promote(key, *due)
        if stages.stage(key) == AutonomyStage.AUTOPILOT:
            in_autopilot.append(str(key))
    return in_autopilot
