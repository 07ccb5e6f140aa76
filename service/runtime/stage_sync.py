"""StageSync: one process's AutonomyStages kept in step with every other process's, through the store.

Each process (the API with its worker threads, each ``autopilot worker``) holds its own ``AutonomyStages``: the
router reads it lock-free on every decision. Changes that must reach every process are appended to the store's
``stage_events`` log by the process that made them:

- a supervisor's override, unpin and the kill switch (the API, ``record_*``, after applying them itself);
- an automatic demotion raised by a guardrail in a worker (``record_demotion``, after applying it), so a slice
  demoted on one worker is demoted on all of them (each then holds it in copilot for the cooldown);
- a promotion (``promote``, from a promotion round: ``service.runtime.promotion``), appended first with a
  compare-and-set and applied only when the append succeeded: refused when the slice changed in the log since
  this process last read it, so a promotion decided on a stale view (a demotion elsewhere it had not seen yet)
  never lands after that demotion. The others apply it even if their own cooldown is still running (the cooldown
  counts the answers each process sees, so the processes would disagree otherwise), unless the slice is pinned
  or the receiving process changed the slice itself after the promotion was written (its own later event is in
  the log after the promotion, so every process ends with that one).

``poll`` applies, in log order, every event another process wrote since the last poll. A process starting up
replays the whole log first, so it begins with the current overrides, kill switch, demotions and promotions; a
replayed demotion puts the slice into cooldown, which is the safe side (a supervisor can override).

Thread-safe (one re-entrant lock); workers call ``poll`` from their maintenance phase, at most every
``interval_s``. A caller that changes its own stages and records the change holds ``local_change()`` around both,
so a concurrent ``poll`` never sees the change before its log id is known.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from schemas.actions import ActionType
from schemas.risk import AutonomyStage, SliceKey
from service.runtime.autonomy import SYSTEM_ACTOR, AutonomyStages, StageEvent
from service.runtime.store import RuntimeStore, StageEventRow

log = logging.getLogger(__name__)

OVERRIDE = "override"
UNPIN = "unpin"
KILL_SWITCH = "kill_switch"
DEMOTION = "demotion"
PROMOTION = "promotion"
_DEMOTED = "demoted: "


def process_origin() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


class StageSync:
    def __init__(
        self, store: RuntimeStore, stages: AutonomyStages, origin: str | None = None, interval_s: float = 1.0
    ) -> None:
        self.store = store
        self.stages = stages
        self.origin = origin or process_origin()
        self.interval_s = interval_s
        self.applied = 0
        self._last_id = 0
        self._own: dict[tuple[str, str], int] = {}  # per slice: the id of this process's latest event on it
        self._due = 0.0
        self._lock = threading.RLock()

    @property
    def last_id(self) -> int:
        """The stage-event log is applied up to this id (what a worker's heartbeat reports)."""
        return self._last_id

    @contextmanager
    def local_change(self) -> Iterator[None]:
        """Hold around changing this process's stages and recording the change: no poll runs in between."""
        with self._lock:
            yield

    def _recorded(self, slice_key: SliceKey | None, event_id: int) -> None:
        if slice_key is not None:
            with self._lock:
                self._own[(slice_key.process_id, slice_key.action_type.value)] = event_id

    # ---- writing --------------------------------------------------------------------------------------------------

    def record_override(self, slice_key: SliceKey, stage: AutonomyStage, actor: str, reason: str, pin: bool) -> None:
        event_id = self.store.append_stage_event(
            self.origin,
            OVERRIDE,
            actor,
            reason,
            process_id=slice_key.process_id,
            action_type=slice_key.action_type.value,
            stage=AutonomyStage(stage).value,
            flag=pin,
        )
        self._recorded(slice_key, event_id)

    def record_unpin(self, slice_key: SliceKey, actor: str) -> None:
        event_id = self.store.append_stage_event(
            self.origin,
            UNPIN,
            actor,
            "unpinned",
            process_id=slice_key.process_id,
            action_type=slice_key.action_type.value,
        )
        self._recorded(slice_key, event_id)

    def record_kill_switch(self, on: bool, actor: str, reason: str) -> None:
        self.store.append_stage_event(self.origin, KILL_SWITCH, actor, reason, flag=on)

    def record_demotion(self, event: StageEvent) -> None:
        """A guardrail of this process demoted a slice (``event`` changed its stage): tell the others."""
        if event.from_stage == event.to_stage:
            return
        reason = event.reason[len(_DEMOTED) :] if event.reason.startswith(_DEMOTED) else event.reason
        event_id = self.store.append_stage_event(
            self.origin,
            DEMOTION,
            event.actor,
            reason,
            process_id=event.slice.process_id,
            action_type=event.slice.action_type.value,
            stage=event.to_stage.value,
        )
        self._recorded(event.slice, event_id)

    def promote(self, slice_key: SliceKey, stage: AutonomyStage, reason: str) -> StageEvent | None:
        """Promote the slice here and everywhere: append the promotion to the log if no event on the slice came
        after what this process has applied (compare-and-set), then apply it. None when refused (the next round,
        on a fresh view, decides again) or when the stages here changed nothing."""
        stage = AutonomyStage(stage)
        with self._lock:
            event_id = self.store.append_stage_event_if_latest(
                self._last_id,
                self.origin,
                PROMOTION,
                SYSTEM_ACTOR,
                reason,
                process_id=slice_key.process_id,
                action_type=slice_key.action_type.value,
                stage=stage.value,
            )
            if event_id is None:
                log.info("stage sync: promotion of %s refused; the slice changed in the log meanwhile", slice_key)
                return None
            self._recorded(slice_key, event_id)
            return self.stages.promote(slice_key, stage, reason)

    # ---- reading --------------------------------------------------------------------------------------------------

    def poll(self, force: bool = False) -> int:
        """Apply the events other processes appended since the last poll; returns how many were applied."""
        now = time.monotonic()
        if not force and now < self._due:
            return 0
        with self._lock:
            self._due = now + self.interval_s
            applied = 0
            while True:
                rows = self.store.stage_events_after(self._last_id)
                if not rows:
                    break
                for row in rows:
                    self._last_id = row.id
                    if row.origin == self.origin:
                        continue
                    try:
                        self._apply(row)
                        applied += 1
                    except ValueError:  # a row this version cannot read (a newer kind): skip, never stall
                        log.exception("stage sync: cannot apply stage event %d (%s)", row.id, row.kind)
            self.applied += applied
            return applied

    def _apply(self, row: StageEventRow) -> None:
        if row.kind == KILL_SWITCH:
            self.stages.set_kill_switch(row.flag, row.actor, row.reason)
            return
        if row.process_id is None or row.action_type is None:
            raise ValueError(f"stage event {row.id}: {row.kind} without a slice")
        slice_key = SliceKey(process_id=row.process_id, action_type=ActionType(row.action_type))
        if row.kind == OVERRIDE:
            self.stages.override(slice_key, AutonomyStage(str(row.stage)), row.actor, row.reason, pin=row.flag)
        elif row.kind == UNPIN:
            self.stages.unpin(slice_key, row.actor)
        elif row.kind == DEMOTION:
            self.stages.alarm(slice_key, f"{row.reason} (raised by {row.origin})")
        elif row.kind == PROMOTION:
            if self._own.get((slice_key.process_id, slice_key.action_type.value), 0) > row.id:
                return  # this process changed the slice after the promotion was written: its own event wins
            self.stages.promote(slice_key, AutonomyStage(str(row.stage)), f"{row.reason} (by {row.origin})", row.actor)
        else:
            raise ValueError(f"stage event {row.id}: unknown kind {row.kind!r}")
