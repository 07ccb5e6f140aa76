"""Action-Logger UI logs (CSV, as recorded by Leno et al.'s browser/Excel plug-in) -> traces.

One screen holds every UI target seen in the log: a field (editField / paste) becomes a ``TextControl`` (a
``TextareaControl`` for a <textarea>; a checkbox or radio input a ``CheckboxControl``), a button a
``ButtonControl``, a link a ``LinkControl``. Control ids are the slugged target names (``target.name``, else
``target.id``; for buttons and links also the visible text, value, href or title).

Events become actions replayed against the form, so that ``UIState.values`` always holds what the case has filled
so far:

* ``paste`` -> ``FillField`` whose value is the field's value after the paste: the field's value before
  (``target.value``, as recorded) followed by the pasted ``content`` (the cursor is taken to be at the end);
* ``editField`` -> ``FillField`` with the field's final value (``target.value``), or ``ToggleCheckbox`` on a
  checkbox;
* ``clickCheckbox`` -> ``ToggleCheckbox`` (``checked`` from ``target.checked``, default True);
* ``clickButton`` / ``clickLink`` -> ``ClickControl``;
* an event that would not change the form (typically the ``editField`` the browser fires right after a paste or a
  checkbox click, with the same value) emits no step: it is not a decision of the operator, and emitting it would
  make every paste look like two actions;
* ``copyCell`` (copying an Excel cell), and in raw logs ``getCell`` (selecting a cell) and ``copy`` (the clipboard
  receiving text), are not form actions: they emit no step and fill the read-only ``clipboard`` panel of the
  following states (``last_copied``, the source app, and the workbook / sheet / cell / column / row when known;
  its rows list the values copied so far in the case, the last ``history`` of them), so that a policy can copy
  values from the state;
* any other event type (``clickTextField`` focus clicks in raw logs, for instance) emits no step.

Events that emit no step are counted by type in ``Trace.attributes["skipped_events"]``.

Cases come from the ``caseID`` column (segmented logs), in order of first appearance, events in file order (the
logger's order; the Excel and browser plug-ins have separate clocks, so times are not re-sorted). A log without
that column (a raw, unsegmented recording) is one trace named after the file. Every case ends with
``CloseChat("case_end")``. Form values are per case: a case starts with an empty form and an empty clipboard.
"""

from __future__ import annotations

import csv
import re
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from importers.common import (
    DEFAULT_HISTORY,
    END_OF_CASE,
    LogFormatError,
    LogImport,
    check_process_id,
    parse_timestamp,
    process_id_from_path,
    read_text,
    seconds,
    text_lines,
    unique_slugs,
)
from schemas.actions import Action, ClickControl, CloseChat, FillField, ToggleCheckbox
from schemas.screen import (
    ButtonControl,
    CheckboxControl,
    Control,
    ControlKind,
    LinkControl,
    ScreenSchema,
    TextareaControl,
    TextControl,
)
from schemas.state import FieldValue, Panel, UIState
from schemas.trace import Trace, TraceSource, TraceStep

SCREEN_ID = "form"
CASE_COLUMN = "caseID"
FIELD_EVENTS = frozenset({"editField", "paste"})
CLICK_EVENTS = frozenset({"clickButton", "clickLink"})
CHECKBOX_EVENTS = frozenset({"clickCheckbox"})
CLIPBOARD_EVENTS = frozenset({"copyCell", "getCell", "copy"})
_REQUIRED = ("timeStamp", "eventType")
_MAX_VALUE = 2000  # FillField.value's limit
_DEFAULT_TEXT_LENGTH = 200
_CELL = re.compile(r"^\$?([A-Za-z]+)\$?(\d+)$")
_SPACE = re.compile(r"\s+")


@dataclass(frozen=True, order=True)
class Target:
    """A UI control as the log names it: its kind and its raw name."""

    kind: ControlKind
    name: str


@dataclass(frozen=True)
class UiEvent:
    timestamp: datetime
    event_type: str
    user: str
    app: str
    url: str
    content: str
    target: Target | None  # None for clipboard and ignored events
    cells: Mapping[str, str]  # the target.* columns (without the prefix), non-empty ones only


@dataclass
class UiCase:
    case_id: str
    events: list[UiEvent] = field(default_factory=list)


def _cell(row: Mapping[str, str], column: str) -> str:
    return (row.get(column) or "").strip()


def _checked(cells: Mapping[str, str]) -> bool:
    """A checkbox's state after the event: ``target.checked``, else a true/false ``target.value``, else True."""
    for key in ("checked", "value"):
        text = cells.get(key, "").strip().lower()
        if text in ("true", "false"):
            return text == "true"
    return True


def _target(event_type: str, cells: Mapping[str, str]) -> Target | None:
    """The control an event acts on; None for events that are not form actions. Raises ValueError when a form
    event does not name its target."""
    name = cells.get("name") or cells.get("id")
    if event_type in FIELD_EVENTS:
        if event_type == "editField" and cells.get("type", "").lower() in ("checkbox", "radio"):
            kind = ControlKind.CHECKBOX
        elif cells.get("tagName", "").upper() == "TEXTAREA":
            kind = ControlKind.TEXTAREA
        else:
            kind = ControlKind.TEXT
    elif event_type in CHECKBOX_EVENTS:
        kind = ControlKind.CHECKBOX
    elif event_type == "clickButton":
        kind = ControlKind.BUTTON
        name = name or cells.get("innerText") or cells.get("value") or cells.get("title")
    elif event_type == "clickLink":
        kind = ControlKind.LINK
        name = name or cells.get("innerText") or cells.get("href") or cells.get("title")
    else:
        return None
    name = _SPACE.sub(" ", name or "").strip()  # link and button texts carry layout whitespace
    if not name:
        raise ValueError(f"{event_type} event without a target name (target.name, target.id)")
    return Target(kind=kind, name=name)


def _value(event: UiEvent) -> str:
    """The field's value after a paste or editField on a text field, cut to the FillField limit."""
    if event.event_type == "paste":
        value = event.cells.get("value", "") + event.content
    else:
        value = event.cells.get("value", "")
    return value[:_MAX_VALUE]


def read_cases(path: Path, case_column: str | None = None) -> list[UiCase]:
    """The UI cases of the file (see the module doc for the case rule). ``case_column`` overrides ``caseID``;
    naming a column the file lacks is an error."""
    name = path.name
    text = read_text(path)
    if not text.strip():
        raise LogFormatError(f"{name}: line 1: empty file (no header)")
    reader = csv.DictReader(text_lines(text))
    try:
        header = reader.fieldnames or []
        for column in _REQUIRED:
            if column not in header:
                raise LogFormatError(f"{name}: line 1: missing column {column!r} (not an Action-Logger log?)")
        if case_column is not None and case_column not in header:
            raise LogFormatError(f"{name}: line 1: missing case column {case_column!r}")
        case_col = case_column or (CASE_COLUMN if CASE_COLUMN in header else None)
        whole_file = _file_stem(path)
        target_columns = [(c, c.removeprefix("target.")) for c in header if c.startswith("target.")]
        cases: dict[str, UiCase] = {}
        for row in reader:
            line = reader.line_num
            if None in row:
                raise LogFormatError(f"{name}: line {line}: more fields than columns")
            event_type = _cell(row, "eventType")
            if not event_type:
                raise LogFormatError(f"{name}: line {line}: empty eventType")
            try:
                timestamp = parse_timestamp(row.get("timeStamp") or "")
            except ValueError as exc:
                raise LogFormatError(f"{name}: line {line}: column 'timeStamp': {exc}") from None
            cells = {short: row[column] for column, short in target_columns if row.get(column)}
            try:
                target = _target(event_type, cells)
            except ValueError as exc:
                raise LogFormatError(f"{name}: line {line}: {exc}") from None
            case_id = _cell(row, case_col) if case_col is not None else whole_file
            if not case_id:
                raise LogFormatError(f"{name}: line {line}: empty case id in column {case_col!r}")
            event = UiEvent(
                timestamp=timestamp,
                event_type=event_type,
                user=_cell(row, "userID"),
                app=_cell(row, "targetApp"),
                url=_cell(row, "url"),
                content=row.get("content") or "",
                target=target,
                cells=cells,
            )
            cases.setdefault(case_id, UiCase(case_id=case_id)).events.append(event)
    except csv.Error as exc:
        raise LogFormatError(f"{name}: line {reader.line_num}: {exc}") from None
    return list(cases.values())


def _file_stem(path: Path) -> str:
    name = path.name
    for suffix in (".gz", ".csv"):
        name = name.removesuffix(suffix)
    return name or "log"


@dataclass
class TargetInfo:
    """What the log tells about a target beyond its name: the longest value written to it, and whether it is a
    submit button."""

    longest: int = 0
    submits: bool = False

    def merge(self, other: TargetInfo) -> None:
        self.longest = max(self.longest, other.longest)
        self.submits = self.submits or other.submits


def _targets(cases: Iterable[UiCase]) -> dict[Target, TargetInfo]:
    targets: dict[Target, TargetInfo] = {}
    for case in cases:
        for event in case.events:
            if event.target is None:
                continue
            info = targets.setdefault(event.target, TargetInfo())
            if event.target.kind in (ControlKind.TEXT, ControlKind.TEXTAREA):
                info.longest = max(info.longest, len(_value(event)))
            elif event.target.kind == ControlKind.BUTTON and event.cells.get("type", "").lower() == "submit":
                info.submits = True
    return targets


def _control(target: Target, control_id: str, info: TargetInfo) -> Control:
    match target.kind:
        case ControlKind.TEXT:
            return TextControl(id=control_id, label=target.name, max_length=max(_DEFAULT_TEXT_LENGTH, info.longest))
        case ControlKind.TEXTAREA:
            return TextareaControl(id=control_id, label=target.name, max_length=max(_MAX_VALUE, info.longest))
        case ControlKind.CHECKBOX:
            return CheckboxControl(id=control_id, label=target.name)
        case ControlKind.BUTTON:
            return ButtonControl(id=control_id, label=target.name, submits=info.submits)
        case _:
            return LinkControl(id=control_id, label=target.name)


@dataclass(frozen=True)
class UiScreen:
    screen: ScreenSchema
    control_ids: Mapping[Target, str]
    leaves_page: frozenset[str]  # control ids whose click navigates away: submit buttons and links


def ui_screen(process_id: str, targets: Mapping[Target, TargetInfo]) -> UiScreen:
    control_ids = unique_slugs((target.name, target) for target in targets)
    controls = [
        _control(target, control_id, targets[target])
        for target, control_id in sorted(control_ids.items(), key=lambda item: item[1])
    ]
    screen = ScreenSchema(
        screen_id=SCREEN_ID,
        process_id=process_id,
        title="UI controls seen in the log",
        controls=controls,
        resolution_codes=[END_OF_CASE],
    )
    leaves_page = frozenset(
        control_id
        for target, control_id in control_ids.items()
        if target.kind == ControlKind.LINK or targets[target].submits
    )
    return UiScreen(screen=screen, control_ids=control_ids, leaves_page=leaves_page)


class _Clipboard:
    """The copy events of a case so far, shown as the ``clipboard`` panel: the clipboard text (``last_copied``)
    and the app it came from, and the Excel cell last copied or selected. The two are kept apart because the Excel
    and clipboard plug-ins log a raw copy as two events in either order (``getCell`` then ``copy`` or the
    reverse)."""

    def __init__(self, history: int) -> None:
        self.copied: dict[str, str] = {}
        self.cell: dict[str, str] = {}
        self.rows: list[dict[str, str]] = []
        self.history = history

    def update(self, event: UiEvent) -> bool:
        """Apply a clipboard event; False when it tells nothing (a copy whose text was not recorded)."""
        if event.event_type in ("copyCell", "getCell"):
            cell = event.cells.get("id", "")
            fields = {"workbook": event.cells.get("workbookName", ""), "sheet": event.cells.get("sheetName", "")}
            fields["cell"] = cell
            match = _CELL.match(cell)
            if match:
                fields["column"], fields["row"] = match.group(1).upper(), match.group(2)
            self.cell = {key: value for key, value in fields.items() if value}
            if event.event_type == "getCell":
                return bool(self.cell)
        value = event.content or event.cells.get("value", "")
        if not value:
            return event.event_type == "copyCell"
        self.copied = {"last_copied": value, "app": event.app} if event.app else {"last_copied": value}
        row = {"value": value}
        if event.event_type == "copyCell" and "cell" in self.cell:
            row["cell"] = self.cell["cell"]
        self.rows.append(row)
        del self.rows[: max(0, len(self.rows) - self.history)]
        return True

    def panel(self) -> Panel | None:
        if not self.copied and not self.cell:
            return None
        return Panel(title="Clipboard", fields={**self.copied, **self.cell}, rows=[dict(r) for r in self.rows])


def _action(event: UiEvent, control_id: str, values: Mapping[str, FieldValue]) -> Action | None:
    """The action of a form event, or None when it would not change the form."""
    assert event.target is not None
    kind = event.target.kind
    if kind in (ControlKind.BUTTON, ControlKind.LINK):
        return ClickControl(control_id=control_id)
    if kind == ControlKind.CHECKBOX:
        checked = _checked(event.cells)
        return None if values.get(control_id) == checked else ToggleCheckbox(control_id=control_id, checked=checked)
    value = _value(event)
    return None if values.get(control_id) == value else FillField(control_id=control_id, value=value)


def case_trace(
    case: UiCase, *, screen: UiScreen, process_id: str, source_file: str, history: int = DEFAULT_HISTORY
) -> Trace | None:
    """Replay one case against the form; None when it has no form action."""
    values: dict[str, FieldValue] = {}
    clipboard = _Clipboard(max(history, 1))
    actions: list[Action] = []
    acted: list[UiEvent] = []  # the events behind ``actions``
    skipped: Counter[str] = Counter()
    steps: list[TraceStep] = []
    start = case.events[0].timestamp

    def add_step(action: Action, timestamp: datetime, operator: str | None) -> None:
        panels: dict[str, Panel] = {}
        clip = clipboard.panel()
        if clip is not None:
            panels["clipboard"] = clip
        if acted:
            last = acted[-1]
            fields = {"event_type": last.event_type, "app": last.app, "url": last.url}
            fields = {key: value for key, value in fields.items() if value}
            fields["elapsed_s"] = seconds((last.timestamp - start).total_seconds())
            if len(acted) >= 2:
                fields["since_last_s"] = seconds((last.timestamp - acted[-2].timestamp).total_seconds())
            panels["last_event"] = Panel(title="Last event", fields=fields)
        i = len(steps)
        state = UIState(
            session_id=case.case_id,
            case_id=case.case_id,
            process_id=process_id,
            screen=screen.screen,
            values=dict(values),
            panels=panels,
            recent_actions=actions[max(0, i - history) :] if history > 0 else [],
            step=i,
        )
        # model_construct: the state and action are validated objects already (see importers.eventlog)
        steps.append(
            TraceStep.model_construct(step=i, state=state, action=action, operator_id=operator, timestamp=timestamp)
        )

    for event in case.events:
        if event.event_type in CLIPBOARD_EVENTS:
            clipboard.update(event)
            skipped[event.event_type] += 1
            continue
        if event.target is None:
            skipped[event.event_type] += 1
            continue
        control_id = screen.control_ids[event.target]
        action = _action(event, control_id, values)
        if action is None:
            skipped[event.event_type] += 1
            continue
        add_step(action, event.timestamp, event.user or None)
        match action:
            case FillField(value=value):
                values[control_id] = value
            case ToggleCheckbox(checked=checked):
                values[control_id] = checked
            case ClickControl() if control_id in screen.leaves_page:
                values.clear()  # a submit or a link leaves the page: the next page's form starts empty
            case _:
                pass
        actions.append(action)
        acted.append(event)
    if not steps:
        return None
    add_step(CloseChat(resolution=END_OF_CASE), case.events[-1].timestamp, None)
    return Trace(
        trace_id=f"{process_id}:{case.case_id}",
        source=TraceSource.UILOG,
        case_id=case.case_id,
        process_id=process_id,
        steps=steps,
        attributes={
            "source_file": source_file,
            "case_start": start.isoformat(),
            "skipped_events": dict(sorted(skipped.items())),
        },
    )


def _traces(
    cases: Sequence[UiCase], *, screen: UiScreen, process_id: str, source_file: str, history: int
) -> Iterator[Trace]:
    for case in cases:
        trace = case_trace(case, screen=screen, process_id=process_id, source_file=source_file, history=history)
        if trace is not None:
            yield trace


def import_uilog(
    path: Path,
    *,
    process_id: str | None = None,
    case_column: str | None = None,
    vocabulary_from: Sequence[Path] = (),
    history: int = DEFAULT_HISTORY,
) -> LogImport:
    """Read and check ``path`` and return the import (traces built on demand).

    ``vocabulary_from``: other UI logs whose targets join the screen (so that e.g. the raw and the segmented log
    of one recording share control ids).
    """
    pid = check_process_id(process_id or process_id_from_path(path))
    cases = read_cases(path, case_column)
    targets = _targets(cases)
    if not targets:
        raise LogFormatError(f"{path.name}: the log has no form events ({', '.join(sorted(FIELD_EVENTS))} ...)")
    for other in vocabulary_from:
        for target, info in _targets(read_cases(other)).items():
            targets.setdefault(target, TargetInfo()).merge(info)
    screen = ui_screen(pid, targets)
    n_cases = sum(1 for case in cases if any(event.target is not None for event in case.events))
    events = sum(len(case.events) for case in cases)
    traces = _traces(cases, screen=screen, process_id=pid, source_file=path.name, history=history)
    return LogImport(process_id=pid, screen=screen.screen, cases=n_cases, events=events, traces=traces)
