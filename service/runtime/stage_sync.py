"""StageSync: one process's AutonomyStages kept in step with every other process's, through the store.

Each process (the API with its worker threads, each ``autopilot worker``) holds its own ``AutonomyStages``: the
router reads it lock-free on every decision. Changes that must reach every process are appended to the store's
``stage_events`` log by the process that made them (after applying them itself):

- a supervisor's override, unpin and the kill switch (the API, ``record_*``);
- an automatic demotion raised by a guardrail in a worker (``record_demotion``), so a slice demoted on one worker
  is demoted on all of them (each then holds it in copilot for the cooldown).

``poll`` applies, in log order, every event another process wrote since the last poll. A process starting up
replays the whole log first, so it begins with the current overrides, kill switch and recent demotions; a
replayed demotion puts the slice into cooldown, which is the safe side (a supervisor can override). Promotions
are not replicated: every process promotes from the same registry by the same rule.

Thread-safe (one lock); workers call ``poll`` from their maintenance phase, at most every ``interval_s``.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid

from schemas.actions import ActionType
from schemas.risk import AutonomyStage, SliceKey
from service.runtime.autonomy import AutonomyStages, StageEvent
from service.runtime.store import RuntimeStore, StageEventRow

log = logging.getLogger(__name__)

OVERRIDE = "override"
UNPIN = "unpin"
KILL_SWITCH = "kill_switch"
DEMOTION = "demotion"
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
        self._due = 0.0
        self._lock = threading.Lock()

    # ---- writing --------------------------------------------------------------------------------------------------

    def record_override(self, slice_key: SliceKey, stage: AutonomyStage, actor: str, reason: str, pin: bool) -> None:
        self.store.append_stage_event(
            self.origin,
            OVERRIDE,
            actor,
            reason,
            process_id=slice_key.process_id,
            action_type=slice_key.action_type.value,
            stage=AutonomyStage(stage).value,
            flag=pin,
        )

    def record_unpin(self, slice_key: SliceKey, actor: str) -> None:
        self.store.append_stage_event(
            self.origin,
            UNPIN,
            actor,
            "unpinned",
            process_id=slice_key.process_id,
            action_type=slice_key.action_type.value,
        )

    def record_kill_switch(self, on: bool, actor: str, reason: str) -> None:
        self.store.append_stage_event(self.origin, KILL_SWITCH, actor, reason, flag=on)

    def record_demotion(self, event: StageEvent) -> None:
        """A guardrail of this process demoted a slice (``event`` changed its stage): tell the others."""
        if event.from_stage == event.to_stage:
            return
        reason = event.reason[len(_DEMOTED) :] if event.reason.startswith(_DEMOTED) else event.reason
        self.store.append_stage_event(
            self.origin,
            DEMOTION,
            event.actor,
            reason,
            process_id=event.slice.process_id,
            action_type=event.slice.action_type.value,
            stage=event.to_stage.value,
        )

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
        else:
            raise ValueError(f"stage event {row.id}: unknown kind {row.kind!r}")
