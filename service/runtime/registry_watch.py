"""RegistryWatcher: keeps one process's champion in step with the critic registry, and runs its promotion rounds.

Every process that runs workers has one (the API's ``AutopilotService``, each ``autopilot worker``): it polls the
registry every ``poll_s``; when the registry names another champion (the nightly job promoted one, or a
supervisor rolled back) it loads that critic and its thresholds, swaps them into the process's
``ChampionHolder`` in one assignment (the workers' next batch and the next copilot request use them) and runs a
promotion round on the new thresholds (``service.runtime.promotion``). A process runs the same round when it
starts (``initial_round``). A registry that cannot be read, or a champion without thresholds, keeps the champion
in use and is tried again at the next poll.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from pathlib import Path

from critic.registry import CriticRegistry
from service.runtime.autonomy import AutonomyStages
from service.runtime.champion import ChampionError, ChampionHolder, load_champion
from service.runtime.promotion import MIN_LABELS, promotion_round, slice_labels
from service.runtime.stage_sync import StageSync

log = logging.getLogger(__name__)

# Labels per slice, ``(process_id, action_type) -> rows`` (``critic.store.FeedbackStore.counts_by_slice``).
LabelCounts = Callable[[], Mapping[tuple[str, str], int]]


class RegistryWatcher:
    """Reloads the champion from ``registry_dir`` into ``holder`` and promotes slices of ``stages``.

    ``sync``: the process's StageSync (promotions go through the stage-event log; None: applied directly).
    ``label_counts``: the feedback store's labels per slice (None: only the rows the thresholds were fitted on).
    ``auto_promote``: run a promotion round at start and after every swap (``promote`` runs one regardless)."""

    def __init__(
        self,
        holder: ChampionHolder,
        stages: AutonomyStages,
        registry_dir: str | Path | None,
        *,
        sync: StageSync | None = None,
        label_counts: LabelCounts | None = None,
        poll_s: float = 30.0,
        auto_promote: bool = True,
        min_labels: int = MIN_LABELS,
    ) -> None:
        if poll_s < 0:
            raise ValueError(f"poll_s: must be >= 0 (0: never poll), got {poll_s}")
        self.holder = holder
        self.stages = stages
        self.registry_dir = None if registry_dir is None else Path(registry_dir)
        self.sync = sync
        self.label_counts = label_counts
        self.poll_s = poll_s
        self.auto_promote = auto_promote
        self.min_labels = min_labels
        self.reloads = 0

    def promote(self) -> list[str]:
        """One promotion round on the champion in use; returns the slices in autopilot afterwards."""
        thresholds = self.holder.current.thresholds
        counts = self.label_counts() if self.label_counts is not None else {}
        labels = slice_labels(thresholds, counts)
        return promotion_round(self.stages, thresholds, labels, self.sync, self.min_labels)

    def initial_round(self) -> list[str]:
        """The round a process runs when it starts (none without ``auto_promote``)."""
        return self.promote() if self.auto_promote else []

    def check(self) -> bool:
        """Swap in the registry's champion if it is not the one in use, then (``auto_promote``) run a promotion
        round. True if it swapped. A champion without thresholds is logged and skipped."""
        if self.registry_dir is None:
            return False
        registry = CriticRegistry(self.registry_dir)
        version = registry.champion()
        current = self.holder.current.version
        if version is None or version == current:
            return False
        try:
            champion = load_champion(registry, version)
        except ChampionError as error:
            log.error("%s; keeping %s", error, current)
            return False
        self.holder.swap(champion)
        self.reloads += 1
        log.info("critic %s is in use now (was %s)", version, current)
        if self.auto_promote:
            try:
                promoted = self.promote()
            except Exception:  # the feedback store away: the next new champion (or restart) runs the round
                log.exception("the promotion round after loading %s failed", version)
            else:
                log.info("slices in autopilot after the promotion round: %s", ", ".join(promoted) or "none")
        return True

    def run(self, stop: threading.Event) -> None:
        """``check`` every ``poll_s`` until ``stop`` is set (returns at once when ``poll_s`` is 0)."""
        if self.poll_s <= 0 or self.registry_dir is None:
            return
        while not stop.wait(self.poll_s):
            try:
                self.check()
            except Exception:  # a half-written registry or a bad artifact: keep the current critic, try again
                log.exception("reloading the registry champion failed; keeping %s", self.holder.current.version)
