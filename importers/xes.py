"""XES 2.0 event logs (plain or gzip) -> traces, read as a stream with ``ElementTree.iterparse``.

The file is read twice: a first pass validates every element and collects the activity vocabulary (the shared
screen must list every activity before the first state is built), a second pass builds the traces one case at a
time. Memory stays bounded by the largest case, and a malformed file fails before any output is written.

Attributes: ``string``, ``id``, ``int``, ``float``, ``boolean`` and ``date`` values become strings (ints, floats
and booleans are checked, dates normalised to ISO 8601, a float ``nan`` -- a missing value left by a CSV
conversion -- is dropped). A ``list`` is flattened to ``key.0``, ``key.1`` ...; a ``container`` to
``key.child_key``. Meta-attributes (attributes nested in a simple attribute) and log-level elements (``global``,
``extension``, ``classifier``, log attributes) are ignored.
"""

from __future__ import annotations

import functools
import gzip
import math
import xml.etree.ElementTree as ET
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from xml.parsers import expat

from importers.common import (
    DEFAULT_HISTORY,
    LogFormatError,
    LogImport,
    check_process_id,
    is_dropped_attribute,
    open_binary,
    parse_timestamp,
    process_id_from_path,
)
from importers.eventlog import (
    RawCase,
    RawEvent,
    activity_screen,
    case_traces,
    check_activity_attributes,
    with_activity_attributes,
)
from schemas.trace import TraceSource

_SIMPLE = frozenset({"string", "id", "int", "float", "boolean", "date"})
_COMPOUND = frozenset({"list", "container"})
_CONCEPT_NAME = "concept:name"
_TIMESTAMP = "time:timestamp"
_RESOURCE = "org:resource"


class _ElementError(Exception):
    """A problem at one element; turned into a LogFormatError that names the element's line."""

    def __init__(self, element: ET.Element, reason: str) -> None:
        super().__init__(reason)
        self.element = element
        self.reason = reason


@functools.cache
def _local(tag: str) -> str:
    """The tag without its namespace: XES files may declare ``xmlns="http://www.xes-standard.org/"``. Cached:
    a log has a handful of distinct tags and this runs for every element."""
    return tag.rsplit("}", 1)[-1] if tag[:1] == "{" else tag


_DROP_CACHE: dict[str, bool] = {}


def _describe(element: ET.Element) -> str:
    key = element.get("key")
    return f"<{_local(element.tag)} key={key!r}>" if key is not None else f"<{_local(element.tag)}>"


def _simple_value(element: ET.Element, tag: str) -> str | None:
    """The value of a simple attribute as a string; None for a float nan (a missing value)."""
    value = element.get("value")
    if value is None:
        raise _ElementError(element, "attribute without a value")
    if tag == "string" or tag == "id":
        return value
    text = value.strip()
    if tag == "int":
        try:
            int(text)
        except ValueError:
            raise _ElementError(element, f"invalid int {value!r}") from None
        return text
    if tag == "float":
        try:
            number = float(text)
        except ValueError:
            raise _ElementError(element, f"invalid float {value!r}") from None
        return None if math.isnan(number) else text
    if tag == "boolean":
        lowered = text.lower()
        if lowered in ("true", "1"):
            return "true"
        if lowered in ("false", "0"):
            return "false"
        raise _ElementError(element, f"invalid boolean {value!r}")
    try:  # date
        return parse_timestamp(text).isoformat()
    except ValueError as exc:
        raise _ElementError(element, str(exc)) from None


def _flatten(element: ET.Element, key: str, out: dict[str, str]) -> None:
    """Add the attribute to ``out`` as one or more string fields (lists and containers flattened)."""
    tag = _local(element.tag)
    if tag in _SIMPLE:
        value = _simple_value(element, tag)
        if value is not None:
            out[key] = value
        return
    children = list(element)
    if tag == "list" and len(children) == 1 and _local(children[0].tag) == "values":
        children = list(children[0])  # XES 2.0 wraps list items in <values>
    index = 0
    for child in children:
        child_tag = _local(child.tag)
        if child_tag not in _SIMPLE and child_tag not in _COMPOUND:
            continue
        if tag == "list":
            _flatten(child, f"{key}.{index}", out)
            index += 1
        else:
            child_key = child.get("key")
            if child_key is None:
                raise _ElementError(child, "attribute without a key")
            _flatten(child, f"{key}.{child_key}", out)


def _is_dropped(key: str) -> bool:
    # cached: a log has few distinct keys and this runs for every attribute; bounded against odd logs
    dropped = _DROP_CACHE.get(key)
    if dropped is None:
        dropped = is_dropped_attribute(key)
        if len(_DROP_CACHE) < 10_000:
            _DROP_CACHE[key] = dropped
    return dropped


def _attributes(element: ET.Element, out: dict[str, str]) -> tuple[str | None, datetime | None]:
    """Collect the attributes of a trace or event into ``out``; return its concept:name and its
    time:timestamp (None when absent)."""
    name: str | None = None
    stamp: datetime | None = None
    for child in element:
        tag = child.tag
        if tag[:1] == "{":
            tag = _local(tag)
        if tag not in _SIMPLE and tag not in _COMPOUND:
            continue  # a nested event, or an element XES does not define
        key = child.get("key")
        if key is None:
            raise _ElementError(child, "attribute without a key")
        if key == _CONCEPT_NAME:
            if tag not in _SIMPLE:
                raise _ElementError(child, "concept:name must be a simple value")
            name = _simple_value(child, tag)
        elif key == _TIMESTAMP:
            value = child.get("value")
            if value is None or tag not in _SIMPLE:
                raise _ElementError(child, "time:timestamp must be a simple value")
            try:
                stamp = parse_timestamp(value)  # a date, or a string some exporters write
            except ValueError as exc:
                raise _ElementError(child, str(exc)) from None
            out[key] = stamp.isoformat()
        elif _is_dropped(key):
            continue
        elif tag == "string" or tag == "id":  # the bulk of every real log: no conversion
            value = child.get("value")
            if value is None:
                raise _ElementError(child, "attribute without a value")
            out[key] = value
        else:
            _flatten(child, key, out)
    return name, stamp


def _event(element: ET.Element) -> RawEvent:
    attributes: dict[str, str] = {}
    activity, timestamp = _attributes(element, attributes)
    if not activity:
        raise _ElementError(element, "event without concept:name (the activity)")
    if timestamp is None:
        raise _ElementError(element, "event without time:timestamp")
    return RawEvent(activity=activity, timestamp=timestamp, resource=attributes.get(_RESOURCE), attributes=attributes)


def _case(element: ET.Element) -> RawCase:
    attributes: dict[str, str] = {}
    case_id, _ = _attributes(element, attributes)
    if not case_id:
        raise _ElementError(element, "trace without concept:name (the case id)")
    events = [_event(child) for child in element if _local(child.tag) == "event"]
    return RawCase(case_id=case_id, attributes=attributes, events=events)


class _Found(Exception):
    pass


def _element_line(path: Path, ordinal: int) -> int | None:
    """The line on which the ``ordinal``-th element (1-based, document order) starts.

    ElementTree does not expose positions, so on the (rare) error path the file is scanned again with expat,
    which does.
    """
    parser = expat.ParserCreate()
    count = 0

    def start(_name: str, _attrs: dict[str, str]) -> None:
        nonlocal count
        count += 1
        if count == ordinal:
            raise _Found(parser.CurrentLineNumber)

    parser.StartElementHandler = start
    try:
        with open_binary(path) as stream:
            parser.ParseFile(stream)
    except _Found as found:
        return int(found.args[0])
    except (expat.ExpatError, OSError, EOFError, zlib.error):
        return None
    return None


def _preorder_offset(root: ET.Element, target: ET.Element) -> int:
    for offset, element in enumerate(root.iter()):
        if element is target:
            return offset
    return 0  # pragma: no cover - the target always lies in the root's subtree


def read_cases(path: Path) -> Iterator[RawCase]:
    """Every ``<trace>`` of the file as a RawCase, in file order (events in file order too)."""
    name = path.name
    ordinal = 0  # document-order index of the last element started, to find its line on error
    root: ET.Element | None = None
    trace_ordinal = 0
    seen: set[str] = set()
    try:
        with open_binary(path) as stream:
            for kind, element in ET.iterparse(stream, events=("start", "end")):
                tag = element.tag
                if tag[:1] == "{":
                    tag = _local(tag)
                if kind == "start":
                    ordinal += 1
                    if root is None:
                        root = element
                        if tag != "log":
                            raise LogFormatError(f"{name}: line {_element_line(path, 1)}: <{tag}>: not an XES log")
                    elif tag == "trace":
                        trace_ordinal = ordinal
                    continue
                if tag != "trace":
                    continue
                try:
                    case = _case(element)
                except _ElementError as exc:
                    line = _element_line(path, trace_ordinal + _preorder_offset(element, exc.element))
                    case_name = element.find(f"./*[@key='{_CONCEPT_NAME}']")
                    where = f" in trace {case_name.get('value')!r}" if case_name is not None else ""
                    raise LogFormatError(
                        f"{name}: line {line}: {_describe(exc.element)}{where}: {exc.reason}"
                    ) from None
                if case.case_id in seen:
                    line = _element_line(path, trace_ordinal)
                    raise LogFormatError(f"{name}: line {line}: <trace>: duplicate case id {case.case_id!r}")
                seen.add(case.case_id)
                if root is not None:
                    root.clear()  # the trace is consumed: keep memory flat however long the log is
                yield case
    except ET.ParseError as exc:
        line, column = exc.position
        reason = str(exc).split(":", 1)[0]
        if reason == "no element found":
            if root is None:
                raise LogFormatError(f"{name}: line 1: empty file (not an XES log)") from None
            reason = "unexpected end of file: truncated?"
        raise LogFormatError(f"{name}: line {line}, column {column}: not well-formed XML ({reason})") from None
    except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
        raise LogFormatError(f"{name}: corrupt or truncated gzip data ({exc})") from None
    if root is None:  # pragma: no cover - iterparse raises "no element found" first
        raise LogFormatError(f"{name}: line 1: empty file (not an XES log)")


@dataclass(frozen=True)
class _Scan:
    activities: set[str]
    attributes: set[str]  # the event attribute names
    cases: int
    events: int


def _scan(path: Path, activity_with: Sequence[str] = ()) -> _Scan:
    """Pass one: validate the whole file and collect its activities (joined with ``activity_with``)."""
    activities: set[str] = set()
    attributes: set[str] = set()
    cases = events = 0
    for case in with_activity_attributes(read_cases(path), activity_with):
        if case.events:
            cases += 1
            events += len(case.events)
            for event in case.events:
                activities.add(event.activity)
                attributes.update(event.attributes)
    return _Scan(activities=activities, attributes=attributes, cases=cases, events=events)


def import_xes(
    path: Path,
    *,
    process_id: str | None = None,
    vocabulary_from: Sequence[Path] = (),
    history: int = DEFAULT_HISTORY,
    activity_with: Sequence[str] = (),
) -> LogImport:
    """Validate ``path`` (and the vocabulary files) and return the import, whose traces are built on demand.

    ``vocabulary_from``: other XES files whose activities join the screen, so that e.g. the train and test
    splits of one log get the same screen and the same control ids. ``activity_with``: event attributes whose
    values join the activity name (``with_activity_attributes``), like the keys of an XES classifier.
    """
    pid = check_process_id(process_id or process_id_from_path(path))
    scan = _scan(path, activity_with)
    if scan.events == 0:
        raise LogFormatError(f"{path.name}: the log has no events")
    check_activity_attributes(activity_with, scan.attributes)
    activities = set(scan.activities)
    for other in vocabulary_from:
        activities |= _scan(other, activity_with).activities
    screen = activity_screen(pid, activities)
    traces = case_traces(
        with_activity_attributes(read_cases(path), activity_with),
        screen=screen,
        source=TraceSource.XES,
        source_file=path.name,
        history=history,
    )
    return LogImport(process_id=pid, screen=screen.screen, cases=scan.cases, events=scan.events, traces=traces)
