"""CSV event logs (one row per event, plain or gzip) -> traces, mapped exactly like XES.

A case is every row with the same case id, in order of the case's first row; its events are sorted stably by
timestamp (rows with equal times keep their file order). Every column other than the case id and the activity
becomes an event attribute (the timestamp included, normalised to ISO 8601); empty cells are left out, and so are
the dropped columns (``Unnamed: 0`` and kin, an unnamed pandas index column, variant ids). A CSV has no case-level
attributes, so the ``case`` panel is empty.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from importers.common import (
    DEFAULT_HISTORY,
    LogFormatError,
    LogImport,
    check_process_id,
    is_dropped_attribute,
    process_id_from_path,
    read_text,
    text_lines,
)
from importers.eventlog import (
    RawCase,
    RawEvent,
    activity_screen,
    case_traces,
    check_activity_attributes,
    with_activity_attributes,
)
from importers.timestamps import TimestampError, parse_column
from schemas.trace import TraceSource

# The usual names, in order of preference; matched ignoring case, spaces, underscores and hyphens (``_key``), so
# ``Case ID``, ``case_id`` and ``CaseID`` are one name. ``Complete Timestamp`` is Disco's (beside its ``Start
# Timestamp``: an event's time is when it completed, as in XES logs of complete events).
CASE_COLUMNS = ("case:concept:name", "case id", "case")
ACTIVITY_COLUMNS = ("concept:name", "activity", "activity name", "event", "event name")
TIMESTAMP_COLUMNS = ("time:timestamp", "timestamp", "complete timestamp", "end timestamp", "end time", "time")
RESOURCE_COLUMNS = ("org:resource", "resource", "user")
_DELIMITERS = (",", ";", "\t", "|")


@dataclass(frozen=True)
class Columns:
    """Column names chosen by the caller; None means detect among the usual names."""

    case: str | None = None
    activity: str | None = None
    timestamp: str | None = None
    resource: str | None = None
    delimiter: str | None = None
    timestamp_format: str | None = None  # strptime directives; None: ISO 8601 or a format detected per column
    encoding: str = "utf-8"  # the file's text encoding (a spreadsheet's export may be cp1252)


def _delimiter(header_line: str) -> str:
    """The most frequent of , ; tab | in the header line (comma when none occurs)."""
    counts = {d: header_line.count(d) for d in _DELIMITERS}
    best = max(_DELIMITERS, key=lambda d: counts[d])
    return best if counts[best] > 0 else ","


def _key(column: str) -> str:
    return re.sub(r"[\s_\-]+", "", column).lower()


def _detect(header: Sequence[str], candidates: Sequence[str]) -> str | None:
    """The header's column for the first of ``candidates`` it has (by ``_key``), or None."""
    by_key: dict[str, str] = {}
    for column in header:
        by_key.setdefault(_key(column), column)
    return next((by_key[_key(name)] for name in candidates if _key(name) in by_key), None)


def _pick(header: Sequence[str], chosen: str | None, candidates: Sequence[str], what: str, option: str) -> str:
    if chosen is not None:
        if chosen not in header:
            raise ValueError(f"line 1: missing {what} column {chosen!r} (columns: {', '.join(header)})")
        return chosen
    detected = _detect(header, candidates)
    if detected is None:
        raise ValueError(f"line 1: no {what} column (looked for {', '.join(candidates)}); name it with {option}")
    return detected


def read_cases(path: Path, columns: Columns = Columns()) -> list[RawCase]:
    """Every case of the CSV, in order of first appearance. The whole file is read: rows of one case may be
    anywhere in it."""
    name = path.name
    text = read_text(path, columns.encoding, option="--encoding")
    if not text.strip():
        raise LogFormatError(f"{name}: line 1: empty file (no header)")
    delimiter = columns.delimiter or _delimiter(text.split("\n", 1)[0])
    reader = csv.reader(text_lines(text), delimiter=delimiter)
    try:
        header = next(reader)
        seen_columns: set[str] = set()
        for column in header:
            if column in seen_columns and column:
                raise LogFormatError(f"{name}: line 1: duplicate column {column!r}")
            seen_columns.add(column)
        try:
            case_col = _pick(header, columns.case, CASE_COLUMNS, "case id", "--case-col")
            activity_col = _pick(header, columns.activity, ACTIVITY_COLUMNS, "activity", "--activity-col")
            time_col = _pick(header, columns.timestamp, TIMESTAMP_COLUMNS, "timestamp", "--timestamp-col")
            resource_col = (
                _pick(header, columns.resource, RESOURCE_COLUMNS, "resource", "--resource-col")
                if columns.resource is not None or _detect(header, RESOURCE_COLUMNS) is not None
                else None
            )
        except ValueError as exc:
            raise LogFormatError(f"{name}: {exc}") from None
        case_i, activity_i, time_i = header.index(case_col), header.index(activity_col), header.index(time_col)
        resource_i = header.index(resource_col) if resource_col is not None else None
        # (index, name) of the columns that become event attributes
        kept = [
            (i, column)
            for i, column in enumerate(header)
            if i not in (case_i, activity_i) and not is_dropped_attribute(column)
        ]
        rows: list[tuple[int, list[str]]] = []
        for row in reader:
            if not row:
                continue  # a blank line
            line = reader.line_num
            if len(row) != len(header):
                raise LogFormatError(f"{name}: line {line}: expected {len(header)} fields, got {len(row)}")
            if not row[case_i].strip():
                raise LogFormatError(f"{name}: line {line}: empty case id in column {case_col!r}")
            if not row[activity_i].strip():
                raise LogFormatError(f"{name}: line {line}: empty activity in column {activity_col!r}")
            rows.append((line, row))
    except csv.Error as exc:
        raise LogFormatError(f"{name}: line {reader.line_num}: {exc}") from None
    try:
        times = parse_column([row[time_i] for _, row in rows], columns.timestamp_format)
    except TimestampError as exc:
        where = f"line {rows[exc.index][0]}: " if exc.index is not None else ""
        raise LogFormatError(f"{name}: {where}column {time_col!r}: {exc}") from None
    cases: dict[str, RawCase] = {}
    for (_, row), timestamp in zip(rows, times, strict=True):
        case_id, activity = row[case_i].strip(), row[activity_i].strip()
        attributes = {column: row[i] for i, column in kept if row[i] != ""}
        attributes[time_col] = timestamp.isoformat()
        resource = row[resource_i].strip() if resource_i is not None else ""
        event = RawEvent(activity=activity, timestamp=timestamp, resource=resource or None, attributes=attributes)
        case = cases.get(case_id)
        if case is None:
            case = cases[case_id] = RawCase(case_id=case_id)
        case.events.append(event)
    for case in cases.values():
        case.events.sort(key=lambda event: event.timestamp)  # list.sort is stable: ties keep file order
    return list(cases.values())


def import_csv(
    path: Path,
    *,
    columns: Columns = Columns(),
    process_id: str | None = None,
    vocabulary_from: Sequence[Path] = (),
    history: int = DEFAULT_HISTORY,
    activity_with: Sequence[str] = (),
) -> LogImport:
    """Read and check ``path`` and return the import (traces built on demand).

    ``vocabulary_from``: other CSV logs (read with the same columns) whose activities join the screen.
    ``activity_with``: columns whose values join the activity name (``with_activity_attributes``).
    """
    pid = check_process_id(process_id or process_id_from_path(path))
    cases = read_cases(path, columns)
    events = sum(len(case.events) for case in cases)
    if events == 0:
        raise LogFormatError(f"{path.name}: the log has no events")
    if activity_with:
        check_activity_attributes(activity_with, {name for case in cases for e in case.events for name in e.attributes})
        cases = list(with_activity_attributes(cases, activity_with))
    activities = {event.activity for case in cases for event in case.events}
    for other in vocabulary_from:
        activities |= {
            event.activity
            for case in with_activity_attributes(read_cases(other, columns), activity_with)
            for event in case.events
        }
    screen = activity_screen(pid, activities)
    traces = case_traces(cases, screen=screen, source=TraceSource.CSV, source_file=path.name, history=history)
    return LogImport(process_id=pid, screen=screen.screen, cases=len(cases), events=events, traces=traces)
