"""Autonomy stages per slice: logging -> copilot -> autopilot, promotion rules, guardrails and supervisor control.

A slice (process, action type) starts in a configured stage (copilot, or logging for processes listed as
logging-only) and climbs one stage per :meth:`AutonomyStages.consider_promotion` call (or, split in two for a
promotion that other processes must see first, :meth:`AutonomyStages.promotion_due` then
:meth:`AutonomyStages.promote`; see ``service.runtime.promotion``):

- logging -> copilot once the slice has ``copilot_min_labels`` labels (proposals are worth showing);
- copilot -> autopilot once the critic registry holds a threshold for the slice (the Learn-then-Test guarantee
  of ``critic.thresholds`` holds) and the slice has ``min_labels`` labels.

Guardrails demote an autopilot slice to copilot automatically (actor ``"system"``):

(a) audited acceptance. The router defers a random share of would-execute steps as audits; a human answers
    them, so they are an unbiased sample of what autopilot executes. Over the last ``audit_window`` audits (at
    least ``min_audits``), if the one-sided Clopper-Pearson upper bound on the acceptance rate at confidence
    ``1 - delta`` is below the target ``1 - alpha``, quality is significantly below target. The test is repeated
    after every audit, so the false-alarm rate over a long run is larger than ``delta`` per test. With the
    defaults (``bench/results/runtime_guardrails.md``, 300 seeds): a slice at 97% acceptance (target 95%) raises
    a false alarm in 1.7% of runs of 2,000 audits, one at 96% in 14%; a drop from 97% to 80% is caught after a
    median of 36 audits (95th percentile 75). The bound itself guards against noise, so ``min_audits`` is small
    (5): a slice that fails outright (10% acceptance) is demoted at its 5th audit instead of its 20th, with the
    same false-alarm rate as 10 or 20 (on the calibrated sandbox a reply slice ran 10 audits, 9 unacceptable,
    without reaching 20).
(b) correction spike. Among the last ``answer_window`` answered deferrals, the corrected share exceeds
    ``spike_factor`` times the long-run share (answers since the slice's windows were last reset, the window
    excluded), with at least ``spike_min_count`` corrections, at least ``spike_min_baseline`` long-run answers,
    and a binomial tail below ``spike_delta`` under the long-run share's ``1 - spike_baseline_delta`` upper
    bound. The factor alone false-alarms often at moderate base rates because it is re-tested after every
    answer against a noisy baseline; the significance condition is what keeps it quiet on a steady slice (false
    alarms in 2-5% of runs of 2,000 answers at steady correction rates of 5-20%; a jump from 10% to 50% is
    caught within about 25 answers).
(c) an explicit :meth:`AutonomyStages.drift_alarm`.

Any alarm (and any stage change) resets the slice's windows, so the evidence that raised it is spent and the
new stage is measured on its own traffic. An alarm on a slice that is not in autopilot changes no stage but is
recorded and holds promotion for the cooldown; on a pinned slice it is recorded and changes nothing else. After
a demotion the slice may be promoted again only after ``cooldown`` new labels (answers recorded through
:meth:`AutonomyStages.record_answer`).

A supervisor can set any stage with :meth:`AutonomyStages.override` (pinned by default: no automatic promotion
or demotion until :meth:`AutonomyStages.unpin`) and stop everything with the kill switch.

Threading: every write takes a lock. :meth:`AutonomyStages.stage` and :attr:`AutonomyStages.kill_switch` take
none: a dict lookup and an attribute read, each atomic in CPython, so the router's hot path never waits on a
writer and sees either the old or the new stage.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
from scipy.stats import beta, binom

from schemas.actions import ActionType
from schemas.risk import AutonomyStage, SliceKey

SYSTEM_ACTOR = "system"
_ORDER = {AutonomyStage.LOGGING: 0, AutonomyStage.COPILOT: 1, AutonomyStage.AUTOPILOT: 2}
_Key = tuple[str, ActionType]


def _now() -> datetime:
    return datetime.now(UTC)


def _key(slice_key: SliceKey) -> _Key:
    # SliceKey is a mutable pydantic model and so unhashable; the tuple is the dictionary key.
    return (slice_key.process_id, slice_key.action_type)


def _slice(key: _Key) -> SliceKey:
    return SliceKey(process_id=key[0], action_type=key[1])


def _check_actor(actor: str) -> None:
    if not isinstance(actor, str) or not actor.strip():
        raise ValueError("actor: must be a non-empty string")


def _check_reason(reason: str) -> None:
    if not isinstance(reason, str) or not reason.strip():
        raise ValueError("reason: must be a non-empty string")


@dataclass(frozen=True, slots=True)
class AutonomyConfig:
    """Initial stages, promotion counts and guardrail parameters (see the module docstring)."""

    initial_stage: AutonomyStage = AutonomyStage.COPILOT
    logging_only_processes: frozenset[str] = frozenset()  # these start in LOGGING: the system only records
    copilot_min_labels: int = 50
    alpha: float = 0.05  # target audited acceptance is 1 - alpha (the thresholds' tolerated error rate)
    delta: float = 0.01
    audit_window: int = 50
    min_audits: int = 5
    answer_window: int = 50
    spike_factor: float = 2.0
    spike_min_count: int = 10
    spike_min_baseline: int = 200
    spike_delta: float = 0.001
    spike_baseline_delta: float = 0.05
    cooldown: int = 200
    max_events: int = 10_000  # the oldest events are dropped beyond this; the audit log keeps them all

    def __post_init__(self) -> None:
        object.__setattr__(self, "initial_stage", AutonomyStage(self.initial_stage))
        object.__setattr__(self, "logging_only_processes", frozenset(self.logging_only_processes))
        for name in ("alpha", "delta", "spike_delta", "spike_baseline_delta"):
            value = getattr(self, name)
            if not 0.0 < value < 1.0:
                raise ValueError(f"{name}: must be in (0, 1), got {value}")
        for name in ("copilot_min_labels", "min_audits", "answer_window", "spike_min_count", "max_events"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: must be >= 1, got {getattr(self, name)}")
        if self.audit_window < self.min_audits:
            raise ValueError(f"audit_window: must be >= min_audits ({self.min_audits}), got {self.audit_window}")
        if self.spike_factor <= 1.0:
            raise ValueError(f"spike_factor: must be > 1, got {self.spike_factor}")
        if self.spike_min_baseline < 1:
            raise ValueError(f"spike_min_baseline: must be >= 1, got {self.spike_min_baseline}")
        if self.cooldown < 0:
            raise ValueError(f"cooldown: must be >= 0, got {self.cooldown}")

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["initial_stage"] = self.initial_stage.value
        data["logging_only_processes"] = sorted(self.logging_only_processes)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AutonomyConfig:
        values = dict(data)
        values["initial_stage"] = AutonomyStage(values.get("initial_stage", AutonomyStage.COPILOT))
        values["logging_only_processes"] = frozenset(values.get("logging_only_processes", ()))
        return cls(**values)


@dataclass(frozen=True, slots=True)
class SliceState:
    """A slice's stage, why and since when it has it, and the supervisor pinning it (None: automatic)."""

    slice: SliceKey
    stage: AutonomyStage
    reason: str
    since: datetime
    pinned_by: str | None


@dataclass(frozen=True, slots=True)
class StageEvent:
    """A stage change, or an alarm that changed no stage (``from_stage == to_stage``)."""

    at: datetime
    slice: SliceKey
    from_stage: AutonomyStage
    to_stage: AutonomyStage
    reason: str
    actor: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "at": self.at.isoformat(),
            "process_id": self.slice.process_id,
            "action_type": self.slice.action_type.value,
            "from": self.from_stage.value,
            "to": self.to_stage.value,
            "reason": self.reason,
            "actor": self.actor,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> StageEvent:
        return cls(
            at=datetime.fromisoformat(data["at"]),
            slice=SliceKey(process_id=data["process_id"], action_type=data["action_type"]),
            from_stage=AutonomyStage(data["from"]),
            to_stage=AutonomyStage(data["to"]),
            reason=data["reason"],
            actor=data["actor"],
        )


@dataclass(frozen=True, slots=True)
class KillSwitch:
    on: bool
    actor: str | None
    reason: str | None
    at: datetime | None


@dataclass(slots=True)
class _SliceData:
    """Mutable per-slice state; every field except ``stage`` is touched under the lock only."""

    stage: AutonomyStage
    reason: str
    since: datetime
    audit_window: int
    answer_window: int
    pinned_by: str | None = None
    cooldown_left: int = 0
    audits: deque[bool] = field(init=False)
    answers: deque[bool] = field(init=False)
    audits_accepted_in_window: int = 0
    corrected_in_window: int = 0
    audits_accepted: int = 0  # since the last reset
    audits_total: int = 0
    answers_corrected: int = 0
    answers_total: int = 0

    def __post_init__(self) -> None:
        self.audits = deque(maxlen=self.audit_window)
        self.answers = deque(maxlen=self.answer_window)

    def reset_windows(self) -> None:
        self.audits.clear()
        self.answers.clear()
        self.audits_accepted_in_window = self.corrected_in_window = 0
        self.audits_accepted = self.audits_total = self.answers_corrected = self.answers_total = 0

    def state(self, key: _Key) -> SliceState:
        return SliceState(_slice(key), self.stage, self.reason, self.since, self.pinned_by)


def _max_failing_accepted(config: AutonomyConfig) -> list[int]:
    """Per window size n: the largest accepted count whose acceptance upper bound is below target (-1: none).

    Precomputed so that checking an audit costs a list lookup instead of a beta quantile."""
    target = 1.0 - config.alpha
    table = [-1] * (config.audit_window + 1)
    for n in range(config.min_audits, config.audit_window + 1):
        accepted = np.arange(n)  # accepted == n has upper bound 1, never below target
        upper = beta.ppf(1.0 - config.delta, accepted + 1, n - accepted)
        failing = np.flatnonzero(upper < target)
        table[n] = int(failing[-1]) if failing.size else -1
    return table


def _acceptance_upper(accepted: int, n: int, delta: float) -> float:
    return 1.0 if accepted >= n else float(beta.ppf(1.0 - delta, accepted + 1, n - accepted))


class AutonomyStages:
    """The autonomy stage of every slice, with promotion, guardrails, supervisor overrides and the kill switch."""

    def __init__(self, config: AutonomyConfig | None = None, clock: Callable[[], datetime] = _now) -> None:
        self.config = config or AutonomyConfig()
        self._clock = clock
        self._lock = threading.RLock()
        self._slices: dict[_Key, _SliceData] = {}
        self._events: deque[StageEvent] = deque(maxlen=self.config.max_events)
        self._kill = KillSwitch(False, None, None, None)
        self._failing = _max_failing_accepted(self.config)

    # ---- reads -------------------------------------------------------------------------------------------------

    def initial_stage(self, process_id: str) -> AutonomyStage:
        if process_id in self.config.logging_only_processes:
            return AutonomyStage.LOGGING
        return self.config.initial_stage

    def stage(self, slice_key: SliceKey) -> AutonomyStage:
        """The slice's stage; lock-free (see the module docstring)."""
        data = self._slices.get((slice_key.process_id, slice_key.action_type))
        return self.initial_stage(slice_key.process_id) if data is None else data.stage

    def state(self, slice_key: SliceKey) -> SliceState:
        with self._lock:
            return self._data(_key(slice_key)).state(_key(slice_key))

    def snapshot(self) -> list[SliceState]:
        """Every slice the stages know of (touched by a promotion, outcome, alarm or override), sorted."""
        with self._lock:
            return [self._slices[k].state(k) for k in sorted(self._slices)]

    @property
    def kill_switch(self) -> bool:
        return self._kill.on

    def kill_switch_state(self) -> KillSwitch:
        return self._kill

    def events(self, slice_key: SliceKey | None = None) -> list[StageEvent]:
        with self._lock:
            if slice_key is None:
                return list(self._events)
            key = _key(slice_key)
            return [e for e in self._events if _key(e.slice) == key]

    def audited_acceptance(self, slice_key: SliceKey) -> tuple[int, int]:
        """(accepted, total) audits since the slice's windows were last reset (its current stage, usually)."""
        with self._lock:
            data = self._slices.get(_key(slice_key))
            return (0, 0) if data is None else (data.audits_accepted, data.audits_total)

    def realised_error(self, slice_key: SliceKey) -> float | None:
        """The share of audited would-execute steps a human did not accept: an unbiased estimate of autopilot's
        error rate on the slice, since audits are a uniform sample of would-execute steps. None without audits."""
        accepted, total = self.audited_acceptance(slice_key)
        return None if total == 0 else 1.0 - accepted / total

    def correction_counts(self, slice_key: SliceKey) -> tuple[int, int]:
        """(corrected, total) answered deferrals since the slice's windows were last reset."""
        with self._lock:
            data = self._slices.get(_key(slice_key))
            return (0, 0) if data is None else (data.answers_corrected, data.answers_total)

    # ---- writes ------------------------------------------------------------------------------------------------

    def _data(self, key: _Key) -> _SliceData:
        data = self._slices.get(key)
        if data is None:
            stage = self.initial_stage(key[0])
            reason = (
                "initial stage (logging-only process)"
                if key[0] in self.config.logging_only_processes
                else "initial stage (default)"
            )
            data = _SliceData(stage, reason, self._clock(), self.config.audit_window, self.config.answer_window)
            self._slices[key] = data
        return data

    def _change(self, key: _Key, data: _SliceData, to: AutonomyStage, reason: str, actor: str) -> StageEvent:
        event = StageEvent(self._clock(), _slice(key), data.stage, to, reason, actor)
        if to != data.stage:
            data.reset_windows()  # the new stage is measured on its own traffic
            data.since = event.at
            data.reason = reason
            data.stage = to
        self._events.append(event)
        return event

    def set_kill_switch(self, on: bool, actor: str, reason: str) -> None:
        """Stop (or resume) all background execution; the router defers every step while it is on."""
        _check_actor(actor)
        _check_reason(reason)
        with self._lock:
            self._kill = KillSwitch(bool(on), actor, reason, self._clock())

    def consider_promotion(
        self, slice_key: SliceKey, threshold: float | None, labels: int, min_labels: int = 200
    ) -> SliceState:
        """Promote the slice by at most one stage if it qualifies (:meth:`promotion_due`); return its state
        afterwards.

        ``threshold``: the registry's holding threshold for the slice (None: none holds); ``labels``: how many
        labels the registry has for the slice."""
        key = _key(slice_key)
        with self._lock:
            due = self.promotion_due(slice_key, threshold, labels, min_labels)
            if due is not None:
                self.promote(slice_key, *due)
            return self._data(key).state(key)

    def promotion_due(
        self, slice_key: SliceKey, threshold: float | None, labels: int, min_labels: int = 200
    ) -> tuple[AutonomyStage, str] | None:
        """The promotion the slice qualifies for now, as (stage, reason), without making it; None when there is
        none: pinned, in cooldown after a demotion, in autopilot already, or short of labels or a threshold.
        Rules: logging -> copilot with ``copilot_min_labels`` labels; copilot -> autopilot with a holding
        threshold and ``min_labels`` labels."""
        if threshold is not None and not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold: must be in [0, 1] or None, got {threshold}")
        if labels < 0:
            raise ValueError(f"labels: must be >= 0, got {labels}")
        if min_labels < 1:
            raise ValueError(f"min_labels: must be >= 1, got {min_labels}")
        with self._lock:
            data = self._data(_key(slice_key))
            if data.pinned_by is not None or data.cooldown_left > 0:
                return None
            if data.stage == AutonomyStage.LOGGING and labels >= self.config.copilot_min_labels:
                return AutonomyStage.COPILOT, f"promoted: {labels} labels >= {self.config.copilot_min_labels}"
            if data.stage == AutonomyStage.COPILOT and threshold is not None and labels >= min_labels:
                reason = f"promoted: holding threshold {threshold:.4f} and {labels} labels >= {min_labels}"
                return AutonomyStage.AUTOPILOT, reason
            return None

    def promote(
        self, slice_key: SliceKey, stage: AutonomyStage, reason: str, actor: str = SYSTEM_ACTOR
    ) -> StageEvent | None:
        """Raise the slice to ``stage``: a promotion :meth:`promotion_due` found here, or one another process
        made (``service.runtime.stage_sync``; its cooldown judged it, so the cooldown here is cleared). None, and
        nothing changes, when the slice is pinned or at ``stage`` or above already."""
        _check_actor(actor)
        _check_reason(reason)
        stage = AutonomyStage(stage)
        key = _key(slice_key)
        with self._lock:
            data = self._data(key)
            if data.pinned_by is not None or _ORDER[stage] <= _ORDER[data.stage]:
                return None
            data.cooldown_left = 0
            return self._change(key, data, stage, reason, actor)

    def _alarm(self, key: _Key, data: _SliceData, reason: str) -> StageEvent:
        if data.pinned_by is not None:
            data.reset_windows()  # spend the evidence so one episode raises one event
            return self._change(
                key, data, data.stage, f"{reason} (pinned by {data.pinned_by}: stage kept)", SYSTEM_ACTOR
            )
        data.cooldown_left = self.config.cooldown
        if data.stage == AutonomyStage.AUTOPILOT:
            return self._change(key, data, AutonomyStage.COPILOT, f"demoted: {reason}", SYSTEM_ACTOR)
        data.reset_windows()
        return self._change(key, data, data.stage, f"{reason} (not in autopilot: promotion held)", SYSTEM_ACTOR)

    def record_audit(self, slice_key: SliceKey, acceptable: bool) -> StageEvent | None:
        """An audited would-execute step answered by a human. Feed the same step to :meth:`record_answer` too.
        Returns the alarm event if this audit raised one."""
        key = _key(slice_key)
        with self._lock:
            data = self._data(key)
            if len(data.audits) == data.audits.maxlen and data.audits[0]:
                data.audits_accepted_in_window -= 1
            data.audits.append(bool(acceptable))
            data.audits_accepted_in_window += bool(acceptable)
            data.audits_accepted += bool(acceptable)
            data.audits_total += 1
            n, accepted = len(data.audits), data.audits_accepted_in_window
            if n < self.config.min_audits or accepted > self._failing[n]:
                return None
            upper = _acceptance_upper(accepted, n, self.config.delta)
            reason = (
                f"audited acceptance {accepted}/{n} ({accepted / n:.1%}; upper bound {upper:.1%} at "
                f"{1 - self.config.delta:.0%} confidence) below target {1 - self.config.alpha:.1%}"
            )
            return self._alarm(key, data, reason)

    def record_answer(self, slice_key: SliceKey, corrected: bool) -> StageEvent | None:
        """A deferred step answered by a human (audits included); ``corrected``: the operator did something else.
        Counts toward the cooldown. Returns the alarm event if this answer raised one."""
        key = _key(slice_key)
        cfg = self.config
        with self._lock:
            data = self._data(key)
            if data.cooldown_left > 0:
                data.cooldown_left -= 1
            if len(data.answers) == data.answers.maxlen and data.answers[0]:
                data.corrected_in_window -= 1
            data.answers.append(bool(corrected))
            data.corrected_in_window += bool(corrected)
            data.answers_corrected += bool(corrected)
            data.answers_total += 1
            wc, wn = data.corrected_in_window, len(data.answers)
            bc, bn = data.answers_corrected - wc, data.answers_total - wn
            # Cheap conditions first; the binomial tail is computed only when they pass.
            if wc < cfg.spike_min_count or bn < cfg.spike_min_baseline or wc * bn <= cfg.spike_factor * bc * wn:
                return None
            base_upper = 1.0 if bc >= bn else float(beta.ppf(1.0 - cfg.spike_baseline_delta, bc + 1, bn - bc))
            if float(binom.sf(wc - 1, wn, base_upper)) > cfg.spike_delta:
                return None
            reason = (
                f"correction spike: {wc} of the last {wn} answers corrected ({wc / wn:.1%}) vs long-run "
                f"{bc}/{bn} ({bc / bn:.1%}), factor > {cfg.spike_factor:g}"
            )
            return self._alarm(key, data, reason)

    def alarm(self, slice_key: SliceKey, reason: str) -> StageEvent:
        """A guardrail elsewhere (another process's workers, see ``service.runtime.stage_sync``) demoted the slice: demote
        it here too (if in autopilot and not pinned), with the same cooldown."""
        _check_reason(reason)
        key = _key(slice_key)
        with self._lock:
            data = self._data(key)
            return self._alarm(key, data, reason)

    def drift_alarm(self, slice_key: SliceKey, reason: str) -> StageEvent:
        """An external drift detector fired for the slice: demote it (if in autopilot and not pinned)."""
        _check_reason(reason)
        key = _key(slice_key)
        with self._lock:
            data = self._data(key)
            return self._alarm(key, data, f"drift alarm: {reason}")

    def override(
        self, slice_key: SliceKey, stage: AutonomyStage, actor: str, reason: str, pin: bool = True
    ) -> StageEvent:
        """A supervisor sets the slice's stage. ``pin``: no automatic promotion or demotion until unpinned.
        Lowering the stage starts the cooldown like an automatic demotion, so an unpinned slice is not promoted
        straight back; raising it clears the cooldown (the supervisor's call)."""
        _check_actor(actor)
        _check_reason(reason)
        stage = AutonomyStage(stage)
        key = _key(slice_key)
        with self._lock:
            data = self._data(key)
            if _ORDER[stage] < _ORDER[data.stage]:
                data.cooldown_left = self.config.cooldown
            elif _ORDER[stage] > _ORDER[data.stage]:
                data.cooldown_left = 0
            data.pinned_by = actor if pin else None
            text = f"override{' (pinned)' if pin else ''}: {reason}"
            event = self._change(key, data, stage, text, actor)
            data.reason = text
            return event

    def unpin(self, slice_key: SliceKey, actor: str) -> StageEvent | None:
        """Hand the slice back to the automatic rules; None if it was not pinned."""
        _check_actor(actor)
        key = _key(slice_key)
        with self._lock:
            data = self._data(key)
            if data.pinned_by is None:
                return None
            reason = f"unpinned (was pinned by {data.pinned_by})"
            data.pinned_by = None
            return self._change(key, data, data.stage, reason, actor)

    # ---- persistence -------------------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable snapshot: configuration, kill switch, every slice with its windows, the events."""
        with self._lock:
            slices = [
                {
                    "process_id": k[0],
                    "action_type": k[1].value,
                    "stage": d.stage.value,
                    "reason": d.reason,
                    "since": d.since.isoformat(),
                    "pinned_by": d.pinned_by,
                    "cooldown_left": d.cooldown_left,
                    "audits": [int(a) for a in d.audits],
                    "answers": [int(a) for a in d.answers],
                    "audits_accepted": d.audits_accepted,
                    "audits_total": d.audits_total,
                    "answers_corrected": d.answers_corrected,
                    "answers_total": d.answers_total,
                }
                for k, d in sorted(self._slices.items())
            ]
            kill = self._kill
            return {
                "config": self.config.to_dict(),
                "kill_switch": {
                    "on": kill.on,
                    "actor": kill.actor,
                    "reason": kill.reason,
                    "at": None if kill.at is None else kill.at.isoformat(),
                },
                "slices": slices,
                "events": [e.to_dict() for e in self._events],
            }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], clock: Callable[[], datetime] = _now) -> AutonomyStages:
        stages = cls(AutonomyConfig.from_dict(data["config"]), clock)
        kill = data["kill_switch"]
        at = None if kill.get("at") is None else datetime.fromisoformat(kill["at"])
        stages._kill = KillSwitch(bool(kill["on"]), kill.get("actor"), kill.get("reason"), at)
        for row in data["slices"]:
            key = (str(row["process_id"]), ActionType(row["action_type"]))
            sd = _SliceData(
                AutonomyStage(row["stage"]),
                row["reason"],
                datetime.fromisoformat(row["since"]),
                stages.config.audit_window,
                stages.config.answer_window,
                pinned_by=row["pinned_by"],
                cooldown_left=int(row["cooldown_left"]),
            )
            sd.audits.extend(bool(a) for a in row["audits"])
            sd.answers.extend(bool(a) for a in row["answers"])
            sd.audits_accepted_in_window = sum(sd.audits)
            sd.corrected_in_window = sum(sd.answers)
            sd.audits_accepted, sd.audits_total = int(row["audits_accepted"]), int(row["audits_total"])
            sd.answers_corrected, sd.answers_total = int(row["answers_corrected"]), int(row["answers_total"])
            stages._slices[key] = sd
        stages._events.extend(StageEvent.from_dict(e) for e in data["events"])
        return stages
