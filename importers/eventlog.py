"""Event logs (XES, CSV) as traces: one shared activity screen, one click per event, then the end of the case.

Both event-log readers produce ``RawCase`` records; this module turns them into ``Trace`` objects, so the two
formats map to states in exactly the same way.

The state before event *i* shows the case attributes (panel ``case``) and, from the second step on, what is known
once event *i*-1 is past (panel ``last_event``): that event's attributes, ``elapsed_s`` (seconds from the first
event of the case to event *i*-1), ``since_last_s`` (seconds between events *i*-2 and *i*-1, from the third step
on), and the clock time of event *i*-1: ``hour`` (``"0"`` .. ``"23"``) and ``weekday`` (``"Mon"`` .. ``"Sun"``),
both in the UTC offset the log gives that timestamp (UTC for a zone-less time). Nothing of event *i* or later is
shown.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime

from importers.common import DEFAULT_HISTORY, END_OF_CASE, LogFormatError, seconds, unique_slugs
from schemas.actions import Action, ClickControl, CloseChat
from schemas.screen import ButtonControl, ScreenSchema
from schemas.state import CANONICAL_SCREENS, Panel, UIState, canonical_screen_json
from schemas.trace import Trace, TraceSource, TraceStep

SCREEN_ID = "activities"

WEEKDAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
"""The ``weekday`` values of the ``last_event`` panel, Monday first (fixed names: no locale involved)."""


@dataclass(frozen=True, slots=True)
class RawEvent:
    """One event as read from the log. ``attributes`` are the strings shown in the ``last_event`` panel once the
    event is past: every event attribute except the activity and the dropped ones."""

    activity: str
    timestamp: datetime
    resource: str | None
    attributes: dict[str, str]


@dataclass(slots=True)
class RawCase:
    case_id: str
    attributes: dict[str, str] = field(default_factory=dict)
    events: list[RawEvent] = field(default_factory=list)


ACTIVITY_JOIN = "+"
"""Joins the activity and the values of ``activity_with``'s attributes into one activity name, as an XES
classifier's keys are joined (``A_SUBMITTED+COMPLETE``)."""


def with_activity_attributes(cases: Iterable[RawCase], keys: Sequence[str]) -> Iterator[RawCase]:
    """The cases with each event's activity joined with its values of the event attributes ``keys`` (an XES
    classifier beyond ``concept:name``: ``lifecycle:transition`` in a log of start and complete events, a role
    to predict who acts next). An event without one of the attributes keeps the others; the attributes stay
    in the event's panel. No keys: the cases unchanged."""
    if not keys:
        yield from cases
        return
    for case in cases:
        events = []
        for event in case.events:
            parts = [event.activity, *(event.attributes[k] for k in keys if event.attributes.get(k))]
            events.append(replace(event, activity=ACTIVITY_JOIN.join(parts)))
        yield replace(case, events=events)


def check_activity_attributes(keys: Sequence[str], seen: Iterable[str], option: str = "--activity-with") -> None:
    """A ``LogFormatError`` naming ``option`` when one of ``keys`` is no attribute of any event (``seen``: the
    event attribute names the log has)."""
    names = set(seen)
    missing = [k for k in keys if k not in names]
    if missing:
        known = ", ".join(sorted(names)[:12]) or "none"
        raise LogFormatError(f"{option}: no event has the attribute {missing[0]!r} (the events' attributes: {known})")


@dataclass(frozen=True)
class ActivityScreen:
    """The screen shared by every state of one import and the activity -> control id mapping behind it."""

    screen: ScreenSchema
    control_ids: Mapping[str, str]

    @functools.cached_property
    def screen_context(self) -> dict[str, dict[int, str]]:
        """The validation context that gives the states' etags the screen's canonical JSON, computed once: on a
        log with hundreds of activities the screen is almost all of a state."""
        return {CANONICAL_SCREENS: {id(self.screen): canonical_screen_json(self.screen)}}


def activity_screen(process_id: str, activities: Iterable[str]) -> ActivityScreen:
    """One button per activity, ids slugged deterministically (sorted), labels keeping the activity names."""
    control_ids = unique_slugs((name, name) for name in activities)
    ordered = sorted(control_ids.items(), key=lambda item: item[1])
    screen = ScreenSchema(
        screen_id=SCREEN_ID,
        process_id=process_id,
        title="Activities",
        controls=[ButtonControl(id=control_id, label=name) for name, control_id in ordered],
        resolution_codes=[END_OF_CASE],
    )
    return ActivityScreen(screen=screen, control_ids=control_ids)


def _last_event_panel(events: list[RawEvent], i: int) -> Panel:
    """What is known after events[:i] (i >= 1): the attributes of event i-1, the time since the case started and
    since the event before it, and the hour and weekday at which event i-1 happened. Nothing of events[i:] is
    used."""
    last = events[i - 1]
    fields = dict(last.attributes)
    fields["elapsed_s"] = seconds((last.timestamp - events[0].timestamp).total_seconds())
    if i >= 2:
        fields["since_last_s"] = seconds((last.timestamp - events[i - 2].timestamp).total_seconds())
    fields["hour"] = str(last.timestamp.hour)
    fields["weekday"] = WEEKDAYS[last.timestamp.weekday()]
    return Panel(title="Last event", fields=fields)


def case_trace(
    case: RawCase,
    *,
    screen: ActivityScreen,
    source: TraceSource,
    source_file: str,
    history: int = DEFAULT_HISTORY,
) -> Trace:
    """The trace of one case: step i is the state before event i and the click on its activity; a final step
    closes the case with ``case_end``. ``case.events`` must not be empty."""
    process_id = screen.screen.process_id
    case_panel = Panel(title="Case", fields=dict(case.attributes))
    actions: list[Action] = [ClickControl(control_id=screen.control_ids[e.activity]) for e in case.events]
    actions.append(CloseChat(resolution=END_OF_CASE))
    steps: list[TraceStep] = []
    for i, action in enumerate(actions):
        panels = {"case": case_panel}
        if i > 0:
            panels["last_event"] = _last_event_panel(case.events, i)
        state = UIState.model_validate(
            {
                "session_id": case.case_id,
                "case_id": case.case_id,
                "process_id": process_id,
                "screen": screen.screen,
                "values": {},
                "panels": panels,
                "recent_actions": actions[max(0, i - history) : i] if history > 0 else [],
                "step": i,
            },
            context=screen.screen_context,
        )
        event = case.events[min(i, len(case.events) - 1)]  # the end step takes the last event's time
        # model_construct: every field is already a validated object, and validating a TraceStep would run the
        # state's etag validator a second time (half the cost of an import).
        steps.append(
            TraceStep.model_construct(
                step=i,
                state=state,
                action=action,
                operator_id=event.resource if i < len(case.events) else None,
                timestamp=event.timestamp,
            )
        )
    return Trace(
        trace_id=f"{process_id}:{case.case_id}",
        source=source,
        case_id=case.case_id,
        process_id=process_id,
        steps=steps,
        attributes={"source_file": source_file, "case_start": case.events[0].timestamp.isoformat()},
    )


def case_traces(
    cases: Iterable[RawCase],
    *,
    screen: ActivityScreen,
    source: TraceSource,
    source_file: str,
    history: int = DEFAULT_HISTORY,
) -> Iterator[Trace]:
    """``case_trace`` for every case that has events (a case without events has nothing to predict)."""
    for case in cases:
        if case.events:
            yield case_trace(case, screen=screen, source=source, source_file=source_file, history=history)
