"""Candidate actions for a state: everything the screen allows, each valid by construction.

Structural actions come straight from the screen: a click per enabled button, link or tool; a select per
allowed option; a toggle per checkbox; a transfer per queue; a close per resolution code. Free values (field
values and chat replies) come from two places: the ``TemplateBank`` of slot-form values operators used in
training (filled from the current state; a template whose slot the state lacks is skipped), and, for a value
control never filled in training, each of the state's copyable values (``policy.values``). Every candidate passes ``validate_action``
against the screen, so an invalid action is never scored, let alone proposed.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from policy.serialise import ActionTextError, action_text, literal_action_text, parse_action_text
from policy.slots import SLOT_CLOSE, SLOT_OPEN
from policy.values import value_sources
from schemas.actions import (
    Action,
    ActionValidationError,
    ClickControl,
    CloseChat,
    SelectOption,
    ToggleCheckbox,
    TransferChat,
    validate_action,
)
from schemas.screen import CLICK_KINDS, VALUE_KINDS, ControlKind
from schemas.state import UIState
from schemas.trace import Trace

CHAT_TARGET = "chat"


@dataclass(frozen=True, slots=True)
class Candidate:
    text: str  # slot form: what the model scores
    action: Action


@dataclass
class TemplateBank:
    """Slot-form values seen in training, per (process, target); target is a control id or ``chat``.

    A state is offered at most ``max_per_target`` of them: first those seen on its own screen, most frequent
    first, then the process's others. A process's replies are many more than one screen's (105 in the sandbox's
    damaged-item refunds, 4-54 on a screen), and a cap on the process's most frequent dropped replies seen five
    times and more on the screen where they are due: 6.7% of the sandbox's test replies were not among the bank's
    offered, 1.4% with the screen's first (decision 0030). ``screen_counts`` is empty in banks saved before:
    they offer the process's most frequent, as they did."""

    max_per_target: int = 48
    min_count: int = 1
    counts: dict[str, Counter[str]] = field(default_factory=dict)
    screen_counts: dict[str, Counter[str]] = field(default_factory=dict)

    @staticmethod
    def _key(process_id: str, target: str, screen_id: str | None = None) -> str:
        return f"{process_id}\x1f{target}" if screen_id is None else f"{process_id}\x1f{screen_id}\x1f{target}"

    def add(self, process_id: str, target: str, value: str, screen_id: str | None = None) -> None:
        """Count one value used on ``target`` (and on ``screen_id``'s screen, where given)."""
        self.counts.setdefault(self._key(process_id, target), Counter())[value] += 1
        if screen_id is not None:
            self.screen_counts.setdefault(self._key(process_id, target, screen_id), Counter())[value] += 1

    def add_action_text(self, process_id: str, text: str, screen_id: str | None = None) -> None:
        """Count the value of one slot-form action text (replies and field values; other actions carry none)."""
        verb, _, rest = text.partition(" ")
        if verb == "send":
            self.add(process_id, CHAT_TARGET, rest, screen_id)
        elif verb == "fill":
            control, _, value = rest.partition(" = ")
            self.add(process_id, control, value, screen_id)

    def fit(self, traces: Iterable[Trace]) -> TemplateBank:
        for trace in traces:
            for step in trace.steps:
                text = action_text(step.action, step.state)
                self.add_action_text(trace.process_id, text, step.state.screen.screen_id)
        return self

    def _ranked(self, counter: Counter[str] | None) -> list[str]:
        """The values counted at least ``min_count`` times, the most frequent first (ties in text order)."""
        if not counter:
            return []
        return sorted((v for v, c in counter.items() if c >= self.min_count), key=lambda v: (-counter[v], v))

    def templates(self, process_id: str, target: str, screen_id: str | None = None) -> list[str]:
        """At most ``max_per_target`` values: those seen on ``screen_id``'s screen first, then the process's
        others, each the most frequent first (ties in text order)."""
        ranked = self._ranked(self.counts.get(self._key(process_id, target)))
        if screen_id is not None:
            own = self._ranked(self.screen_counts.get(self._key(process_id, target, screen_id)))
            if own:
                mine = set(own)
                ranked = own + [v for v in ranked if v not in mine]
        return ranked[: self.max_per_target]

    def to_dict(self) -> dict[str, object]:
        return {
            "max_per_target": self.max_per_target,
            "min_count": self.min_count,
            "counts": {k: dict(sorted(c.items())) for k, c in sorted(self.counts.items())},
            "screen_counts": {k: dict(sorted(c.items())) for k, c in sorted(self.screen_counts.items())},
        }

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> TemplateBank:
        counts = data.get("counts", {})
        screen_counts = data.get("screen_counts", {})
        assert isinstance(counts, dict) and isinstance(screen_counts, dict)
        return cls(
            max_per_target=int(data.get("max_per_target", 48)),  # type: ignore[call-overload]
            min_count=int(data.get("min_count", 1)),  # type: ignore[call-overload]
            counts={k: Counter(v) for k, v in counts.items()},
            screen_counts={k: Counter(v) for k, v in screen_counts.items()},
        )


def _structural(state: UIState) -> Iterable[Action]:
    screen = state.screen
    for control in screen.controls:
        if not control.enabled:
            continue
        if control.kind in CLICK_KINDS:
            yield ClickControl(control_id=control.id)
        elif control.kind == ControlKind.SELECT:
            for option in getattr(control, "options", ()):
                yield SelectOption(control_id=control.id, option=option)
        elif control.kind == ControlKind.CHECKBOX:
            current = state.values.get(control.id)
            yield ToggleCheckbox(control_id=control.id, checked=current is not True)
    for queue in screen.transfer_queues:
        yield TransferChat(queue=queue)
    for resolution in screen.resolution_codes:
        yield CloseChat(resolution=resolution)


def enumerate_candidates(
    state: UIState, bank: TemplateBank | None = None, replies: Sequence[str] = ()
) -> list[Candidate]:
    """All valid candidate actions of a state in a deterministic order, unique by slot-form text; ``replies``:
    slot-form replies offered beside the bank's (the answers to a pending request, which a process's bank may
    not keep among its most frequent)."""
    sources = value_sources(state)
    screen_id = state.screen.screen_id
    out: dict[str, Candidate] = {}

    def offer(text: str) -> None:
        if text in out:
            return
        try:
            action = parse_action_text(text, state, sources)
            validate_action(action, state.screen)
        except (ActionTextError, ActionValidationError):
            return
        out[text] = Candidate(text=text, action=action)

    for action in _structural(state):
        offer(literal_action_text(action))
    for control in state.screen.controls:
        if not control.enabled or control.kind not in VALUE_KINDS:
            continue
        templates = bank.templates(state.process_id, control.id, screen_id) if bank else []
        for template in templates:
            offer(f"fill {control.id} = {template}")
        if not templates:  # a control never filled in training: offer every copyable value that fits it
            for name in sources:
                offer(f"fill {control.id} = {SLOT_OPEN}{name}{SLOT_CLOSE}")
    if state.screen.chat_enabled and bank is not None:
        for template in [*bank.templates(state.process_id, CHAT_TARGET, screen_id), *replies]:
            offer(f"send {template}")
    return list(out.values())
