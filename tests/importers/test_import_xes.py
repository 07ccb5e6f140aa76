"""XES import: mapping, typed attributes, no leakage of future events, dropped attributes, errors, atomic output."""

from __future__ import annotations

import gzip
import re
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest

from importers.common import DROPPED_ATTRIBUTES, LogFormatError, is_dropped_attribute, process_id_from_path
from importers.jsonl import write_traces
from importers.xes import import_xes
from schemas import ClickControl, CloseChat, Trace, TraceSource

Write = Callable[..., Path]
Load = Callable[[Path], list[Trace]]


def _import(path: Path, out_dir: Path, load: Load, **options: object) -> list[Trace]:
    out = out_dir / "traces.jsonl"
    write_traces(out, import_xes(path, **options).traces)  # type: ignore[arg-type]
    return load(out)


def test_maps_each_event_to_a_click_and_ends_the_case(
    write_file: Write, out_dir: Path, load_traces: Load, tiny_xes: str
) -> None:
    path = write_file("train_Tiny Log.xes", tiny_xes)
    traces = _import(path, out_dir, load_traces)

    assert [t.case_id for t in traces] == ["c1", "c2"]
    c1, c2 = traces
    assert c1.source == TraceSource.XES
    assert c1.process_id == "tiny_log"  # split prefix and suffix stripped, slugged
    assert c1.trace_id == "tiny_log:c1"
    assert c1.attributes == {"source_file": "train_Tiny Log.xes", "case_start": "2020-01-01T10:00:00+00:00"}
    assert [s.action for s in c1.steps] == [
        ClickControl(control_id="register_ticket"),
        ClickControl(control_id="assign_queue"),
        ClickControl(control_id="close"),
        CloseChat(resolution="case_end"),
    ]
    assert [s.operator_id for s in c1.steps] == ["alice", "bob", "alice", None]
    assert [s.timestamp for s in c1.steps] == [
        datetime(2020, 1, 1, 10, 0, tzinfo=UTC),
        datetime(2020, 1, 1, 10, 5, tzinfo=UTC),
        datetime(2020, 1, 1, 11, 0, tzinfo=UTC),
        datetime(2020, 1, 1, 11, 0, tzinfo=UTC),  # the end step takes the last event's time
    ]
    assert len(c2.steps) == 3
    assert c2.steps[0].operator_id is None  # no org:resource

    screen = c1.steps[0].state.screen
    assert screen.screen_id == "activities"
    assert [(c.id, c.label) for c in screen.controls] == [
        ("assign_queue", "Assign+Queue"),
        ("close", "Close"),
        ("register_ticket", "Register ticket"),
    ]
    assert screen.resolution_codes == ["case_end"]
    # one screen shared by every state of the import
    assert all(s.state.screen == screen for t in traces for s in t.steps)


def test_state_panels_and_history(write_file: Write, out_dir: Path, load_traces: Load, tiny_xes: str) -> None:
    path = write_file("tiny.xes", tiny_xes)
    c1 = _import(path, out_dir, load_traces, history=2)[0]
    states = [s.state for s in c1.steps]

    for i, state in enumerate(states):
        assert state.session_id == "c1" and state.case_id == "c1" and state.process_id == "tiny"
        assert state.values == {}
        assert state.step == i
        # case-level attributes (concept:name and the variant attributes left out), typed values as strings
        assert state.panels["case"].fields == {"amount": "100", "vip": "true"}
    assert "last_event" not in states[0].panels
    assert states[1].panels["last_event"].fields == {
        "org:resource": "alice",
        "time:timestamp": "2020-01-01T10:00:00+00:00",
        "marker": "M-c1-0",  # the nan priority is a missing value: dropped
        "elapsed_s": "0.000",
        "hour": "10",  # the clock time of the last event (2020-01-01 was a Wednesday)
        "weekday": "Wed",
    }
    assert states[2].panels["last_event"].fields == {
        "org:resource": "bob",
        "time:timestamp": "2020-01-01T10:05:00+00:00",
        "marker": "M-c1-1",
        "cost": "1.5",
        "tags.0": "x",  # a list is flattened by position
        "tags.1": "y",
        "elapsed_s": "300.000",
        "since_last_s": "300.000",
        "hour": "10",
        "weekday": "Wed",
    }
    last = states[3].panels["last_event"].fields
    assert last["details.a"] == "1" and last["details.b"] == "ID-9"  # a container by child key
    assert last["time:timestamp"] == "2020-01-01T12:00:00+01:00"
    assert last["elapsed_s"] == "3600.000" and last["since_last_s"] == "3300.000"
    assert last["hour"] == "12"  # in the offset the log gives the timestamp (+01:00), not converted to UTC

    # recent_actions: the last N actions, oldest first
    assert states[0].recent_actions == []
    assert states[1].recent_actions == [ClickControl(control_id="register_ticket")]
    assert states[3].recent_actions == [ClickControl(control_id="assign_queue"), ClickControl(control_id="close")]


def test_no_attribute_of_a_future_event_reaches_a_state(
    write_file: Write, out_dir: Path, load_traces: Load, tiny_xes: str
) -> None:
    traces = _import(write_file("tiny.xes", tiny_xes), out_dir, load_traces)
    for trace in traces:
        n_events = len(trace.steps) - 1
        for step in trace.steps:
            body = step.state.model_dump_json()
            shown = set(re.findall(r"M-c\d-\d", body))
            # only the event just before the step is shown; never event i or later
            assert shown == ({f"M-{trace.case_id}-{step.step - 1}"} if step.step > 0 else set())
            for later in range(step.step, n_events):
                assert f"M-{trace.case_id}-{later}" not in body
            # nor the actions of later steps
            assert len(step.state.recent_actions) == min(step.step, 16)


def test_hour_and_weekday_are_those_of_the_last_event(write_file: Write, out_dir: Path, load_traces: Load) -> None:
    # three events on three days at three hours: the state before event i shows the clock time of event i-1 only
    times = ["2021-03-06T23:59:59Z", "2021-03-07T00:00:01Z", "2021-03-08T07:30:00-05:00"]
    events = "".join(
        f'<event><string key="concept:name" value="a{i}"/><date key="time:timestamp" value="{t}"/></event>'
        for i, t in enumerate(times)
    )
    path = write_file("clock.xes", f'<log><trace><string key="concept:name" value="k"/>{events}</trace></log>')
    (trace,) = _import(path, out_dir, load_traces)
    shown = [
        (s.state.panels["last_event"].fields["hour"], s.state.panels["last_event"].fields["weekday"])
        for s in trace.steps[1:]
    ]
    assert shown == [("23", "Sat"), ("0", "Sun"), ("7", "Mon")]
    assert "last_event" not in trace.steps[0].state.panels  # nothing is known before the first event


def test_dropped_attributes_never_appear(write_file: Write, out_dir: Path, tiny_xes: str) -> None:
    out = out_dir / "t.jsonl"
    write_traces(out, import_xes(write_file("tiny.xes", tiny_xes)).traces)
    text = out.read_text()
    assert "Unnamed" not in text
    assert "variant" not in text.lower()
    assert "Variant 3" not in text


def test_drop_list() -> None:
    assert {"variant", "variant-index"} <= DROPPED_ATTRIBUTES
    for name in ("Unnamed: 0", "Unnamed: 12", "variant", "Variant", "variant-index", "case:variant", ""):
        assert is_dropped_attribute(name), name
    for name in ("org:resource", "concept:name", "unnamed", "invariant"):
        assert not is_dropped_attribute(name), name


def test_gzip_is_detected_by_magic_bytes(write_file: Write, tmp_path: Path, load_traces: Load, tiny_xes: str) -> None:
    plain = write_file("log.xes", tiny_xes)
    (tmp_path / "gz").mkdir()
    # gzip content under a name that does not say so
    zipped = tmp_path / "gz" / "log.xes"
    zipped.write_bytes(gzip.compress(tiny_xes.encode()))
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    write_traces(a, import_xes(plain).traces)
    write_traces(b, import_xes(zipped).traces)
    assert a.read_text() == b.read_text()
    assert len(load_traces(a)) == 2


def test_vocabulary_from_gives_train_and_test_one_screen(write_file: Write, out_dir: Path, tiny_xes: str) -> None:
    other = tiny_xes.replace('value="Assign+Queue"', 'value="Escalate"')
    test_log = write_file("test_tiny.xes", tiny_xes)
    train_log = write_file("train_tiny.xes", other, gz=True)
    test_import = import_xes(test_log, vocabulary_from=[train_log])
    train_import = import_xes(train_log, vocabulary_from=[test_log])
    assert test_import.screen == train_import.screen
    assert test_import.process_id == train_import.process_id == "tiny"
    assert [c.id for c in test_import.screen.controls] == ["assign_queue", "close", "escalate", "register_ticket"]


def test_activity_slugs_are_unique_and_deterministic(write_file: Write) -> None:
    names = ["A+B", "A B", "a_b", "ü ü", "+++"]
    body = "".join(
        f'<trace><string key="concept:name" value="c{i}"/><event><string key="concept:name" value="{name}"/>'
        f'<date key="time:timestamp" value="2020-01-01T00:00:0{i}Z"/></event></trace>'
        for i, name in enumerate(names)
    )
    forward = import_xes(write_file("a.xes", f"<log>{body}</log>"))
    body_reversed = "".join(reversed(re.findall(r"<trace>.*?</trace>", body)))
    backward = import_xes(write_file("b.xes", f"<log>{body_reversed}</log>"), process_id="a")
    ids = [c.id for c in forward.screen.controls]
    assert len(set(ids)) == len(names)
    assert all(re.fullmatch(r"[A-Za-z0-9_.:\-]+", i) for i in ids)
    assert forward.screen.controls == backward.screen.controls
    assert {c.label for c in forward.screen.controls} == set(names)


def test_process_id_from_file_name() -> None:
    assert process_id_from_path(Path("train_bpi_challenge_2013_incidents.xes.gz")) == "bpi_challenge_2013_incidents"
    assert process_id_from_path(Path("train_val_BPI_Challenge_2012_W_Complete.xes.gz")) == (
        "bpi_challenge_2012_w_complete"
    )
    assert process_id_from_path(Path("val_x.xes")) == "x"
    assert process_id_from_path(Path("test_My Log (v2).xes")) == "my_log_v2"


def test_process_id_option_is_checked(write_file: Write, tiny_xes: str) -> None:
    path = write_file("tiny.xes", tiny_xes)
    assert import_xes(path, process_id="Incidents-2013").process_id == "Incidents-2013"
    with pytest.raises(ValueError, match="process id"):
        import_xes(path, process_id="has space")


def test_empty_trace_is_skipped(write_file: Write, out_dir: Path, load_traces: Load, tiny_xes: str) -> None:
    text = tiny_xes.replace("</log>", '<trace><string key="concept:name" value="c3"/></trace></log>')
    log = import_xes(write_file("tiny.xes", text))
    assert log.cases == 2
    assert [t.case_id for t in _import(write_file("tiny.xes", text), out_dir, load_traces)] == ["c1", "c2"]


# ----------------------------------------------------------------------------------------------------------------
# malformed input: LogFormatError naming the line / element and the reason, and no output at all


def _line(text: str, needle: str, before: str | None = None) -> int:
    """The line of ``needle`` (of its last occurrence before ``before`` when given)."""
    at = text.rindex(needle, 0, text.index(before)) if before else text.index(needle)
    return text[:at].count("\n") + 1


def _drop_line(text: str, needle: str) -> str:
    return "".join(line for line in text.splitlines(keepends=True) if needle not in line)


# name -> (make the bad text from the tiny log, the expected message given the bad text)
MALFORMED: dict[str, tuple[Callable[[str], str], Callable[[str], str]]] = {
    "truncated XML": (
        lambda t: t[: t.index("M-c2-0")],
        lambda t: rf"line {t.count(chr(10)) + 1}, column \d+: not well-formed XML \(unclosed token\)",
    ),
    "truncated after an element": (
        lambda t: t[: t.index("</trace>") + len("</trace>")],
        lambda t: rf"line {t.count(chr(10)) + 1}, column \d+: not well-formed XML \(unexpected end of file",
    ),
    "not XML": (lambda t: "case,activity\n1,a\n", lambda t: r"line 1, column 0: not well-formed XML \(syntax error"),
    "empty file": (lambda t: "", lambda t: "empty file"),
    "not a log": (lambda t: "<html>\n<body/></html>", lambda t: r"line 1: <html>: not an XES log"),
    "no events": (lambda t: '<log><string key="origin" value="x"/></log>', lambda t: "the log has no events"),
    "event without concept:name": (
        lambda t: t.replace(
            '<string key="concept:name" value="Close"/>\n      <date key="time:timestamp" value="2020-01-02',
            '<date key="time:timestamp" value="2020-01-02',
        ),
        lambda t: rf"line {_line(t, '<event>', before='M-c2-1')}: <event> in trace 'c2': event without concept:name",
    ),
    "bad timestamp": (
        lambda t: t.replace("2020-01-01T10:05:00.000+00:00", "yesterday"),
        lambda t: (
            rf"line {_line(t, 'yesterday')}: <date key='time:timestamp'> in trace 'c1': "
            r"unparsable timestamp 'yesterday'"
        ),
    ),
    "bad int": (
        lambda t: t.replace('value="100"', 'value="many"'),
        lambda t: rf"line {_line(t, 'many')}: <int key='amount'> in trace 'c1': invalid int 'many'",
    ),
    "missing timestamp": (
        lambda t: _drop_line(t, "2020-01-02T09:00:00Z"),
        lambda t: rf"line {_line(t, '<event>', before='M-c2-0')}: <event> in trace 'c2': event without time:timestamp",
    ),
    "trace without name": (
        lambda t: _drop_line(t, 'value="c2"'),
        lambda t: rf"line {_line(t, '<trace>', before='M-c2-0')}: <trace>: trace without concept:name",
    ),
    "duplicate case": (
        lambda t: t.replace('value="c2"', 'value="c1"'),
        lambda t: rf"line {_line(t, '<trace>', before='M-c2-0')}: <trace>: duplicate case id 'c1'",
    ),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gzip"])
def test_malformed_log_fails_and_writes_nothing(
    case: str, gz: bool, write_file: Write, out_dir: Path, tiny_xes: str
) -> None:
    make, message = MALFORMED[case]
    text = make(tiny_xes)
    assert text != tiny_xes
    path = write_file("bad.xes.gz" if gz else "bad.xes", text, gz=gz)
    out = out_dir / "traces.jsonl"
    with pytest.raises(LogFormatError) as excinfo:
        write_traces(out, import_xes(path).traces)
    assert re.search(message(text), str(excinfo.value)), str(excinfo.value)
    assert str(excinfo.value).startswith(f"{path.name}: ")
    assert list(out_dir.iterdir()) == []


def test_truncated_gzip(write_file: Write, out_dir: Path, tiny_xes: str) -> None:
    data = gzip.compress(tiny_xes.encode())
    path = write_file("bad.xes.gz", "")
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(LogFormatError, match="corrupt or truncated gzip"):
        write_traces(out_dir / "t.jsonl", import_xes(path).traces)
    assert list(out_dir.iterdir()) == []


def test_failure_while_writing_keeps_the_old_output(out_dir: Path, write_file: Write, tiny_xes: str) -> None:
    out = out_dir / "traces.jsonl"
    out.write_text("old\n")
    traces = iter(import_xes(write_file("tiny.xes", tiny_xes)).traces)

    def failing() -> object:
        yield next(traces)
        raise LogFormatError("boom")

    with pytest.raises(LogFormatError, match="boom"):
        write_traces(out, failing())  # type: ignore[arg-type]
    assert out.read_text() == "old\n"
    assert [p.name for p in out_dir.iterdir()] == ["traces.jsonl"]  # no temporary file left behind


def test_missing_input_is_file_not_found(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        import_xes(tmp_path / "nope.xes")


def test_activity_with_joins_event_attributes_to_the_activity(
    write_file: Write, out_dir: Path, load_traces: Load, tiny_xes: str
) -> None:
    path = write_file("tiny.xes", tiny_xes)
    c1, c2 = _import(path, out_dir, load_traces, activity_with=["org:resource"])
    labels = {c.id: c.label for c in c1.steps[0].state.screen.controls}
    assert [labels[s.action.control_id] for s in c1.steps[:-1]] == [  # type: ignore[union-attr]
        "Register ticket+alice",
        "Assign+Queue+bob",
        "Close+alice",
    ]
    # an event without the attribute keeps its activity alone
    assert [labels[s.action.control_id] for s in c2.steps[:-1]] == ["Register ticket", "Close"]  # type: ignore[union-attr]
    # the attribute stays a field of the event's panel
    assert c1.steps[1].state.panels["last_event"].fields["org:resource"] == "alice"
    plain = _import(path, out_dir, load_traces)
    assert [s.timestamp for s in plain[0].steps] == [s.timestamp for s in c1.steps]


def test_activity_with_an_unknown_attribute_is_an_error(write_file: Write, tiny_xes: str) -> None:
    path = write_file("tiny.xes", tiny_xes)
    with pytest.raises(LogFormatError, match=r"--activity-with: no event has the attribute 'org:role'"):
        import_xes(path, activity_with=["org:role"])
