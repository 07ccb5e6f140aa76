"""CSV event-log import: column detection, stable time order, attributes, errors naming the line."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest

from importers.common import LogFormatError
from importers.csv_log import Columns, import_csv
from importers.jsonl import write_traces
from importers.xes import import_xes
from schemas import ClickControl, CloseChat, Trace, TraceSource
from service.cli import main

Write = Callable[..., Path]
Load = Callable[[Path], list[Trace]]


def _import(path: Path, out_dir: Path, load: Load, **options: object) -> list[Trace]:
    out = out_dir / "traces.jsonl"
    write_traces(out, import_csv(path, **options).traces)  # type: ignore[arg-type]
    return load(out)


def test_maps_rows_like_xes(write_file: Write, out_dir: Path, load_traces: Load, tiny_csv: str) -> None:
    traces = _import(write_file("test_tiny.csv", tiny_csv), out_dir, load_traces)
    assert [t.case_id for t in traces] == ["c1", "c2"]  # order of first appearance
    c1 = traces[0]
    assert c1.source == TraceSource.CSV
    assert c1.trace_id == "tiny:c1"
    assert [s.action for s in c1.steps] == [
        ClickControl(control_id="register_ticket"),  # sorted by time although it is not the first row
        ClickControl(control_id="assign_queue"),
        ClickControl(control_id="close"),
        CloseChat(resolution="case_end"),
    ]
    assert [s.operator_id for s in c1.steps] == ["alice", "bob", "alice", None]
    assert [s.operator_id for s in traces[1].steps] == [None, None, None]  # empty resource cells
    assert c1.attributes == {"source_file": "test_tiny.csv", "case_start": "2020-01-01T10:00:00+00:00"}
    state = c1.steps[2].state
    assert state.panels["case"].fields == {}
    assert state.panels["last_event"].fields == {
        "time:timestamp": "2020-01-01T10:05:00+00:00",
        "org:resource": "bob",
        "marker": "M-c1-1",
        "elapsed_s": "300.000",
        "since_last_s": "300.000",
        "hour": "10",
        "weekday": "Wed",
    }
    text = (out_dir / "traces.jsonl").read_text()
    assert "Unnamed" not in text and "ariant" not in text


def test_same_actions_and_times_as_the_xes_of_the_same_log(
    write_file: Write, tiny_csv: str, tiny_xes: str, out_dir: Path
) -> None:
    from_csv = list(import_csv(write_file("tiny.csv", tiny_csv)).traces)
    from_xes = list(import_xes(write_file("tiny.xes", tiny_xes)).traces)
    for a, b in zip(from_csv, from_xes, strict=True):
        assert a.trace_id == b.trace_id
        assert [(s.action, s.timestamp, s.operator_id) for s in a.steps] == [
            (s.action, s.timestamp, s.operator_id) for s in b.steps
        ]
        assert a.steps[0].state.screen == b.steps[0].state.screen


def test_no_attribute_of_a_future_event_reaches_a_state(write_file: Write, tiny_csv: str) -> None:
    for trace in import_csv(write_file("tiny.csv", tiny_csv)).traces:
        for step in trace.steps:
            shown = set(re.findall(r"M-c\d-\d", step.state.model_dump_json()))
            assert shown == ({f"M-{trace.case_id}-{step.step - 1}"} if step.step > 0 else set())


def test_equal_times_keep_file_order_and_columns_can_be_named(
    write_file: Write, out_dir: Path, load_traces: Load
) -> None:
    text = (
        "Case;Step;When;Who;;Unnamed: 0\n"
        "k;b;2021-03-01 08:00:00;x;0;0\n"
        "k;a;2021-03-01 07:00:00;y;1;1\n"
        "k;c;2021-03-01 08:00:00;x;2;2\n"
        "\n"
        "k;a;2021-03-01 08:00:00;y;3;3\n"
    )
    columns = Columns(case="Case", activity="Step", timestamp="When", resource="Who")
    (trace,) = _import(write_file("x.csv", text), out_dir, load_traces, columns=columns)
    assert [s.action for s in trace.steps[:-1]] == [ClickControl(control_id=i) for i in ("a", "b", "c", "a")]
    # a zone-less time is UTC; the unnamed and "Unnamed: 0" columns (pandas index) are dropped
    assert trace.steps[1].state.panels["last_event"].fields == {
        "When": "2021-03-01T07:00:00+00:00",
        "Who": "y",
        "elapsed_s": "0.000",
        "hour": "7",  # a zone-less time is UTC
        "weekday": "Mon",
    }


def test_vocabulary_from(write_file: Write, tiny_csv: str) -> None:
    other = write_file("other.csv", "case_id,activity,timestamp\n1,Escalate,2020-01-01T00:00:00Z\n")
    log = import_csv(write_file("tiny.csv", tiny_csv), vocabulary_from=[other])
    assert [c.id for c in log.screen.controls] == ["assign_queue", "close", "escalate", "register_ticket"]


MALFORMED: dict[str, tuple[str, str]] = {
    "empty file": ("", r"line 1: empty file"),
    "missing column": ("case_id,timestamp\n1,2020-01-01T00:00:00Z\n", r"line 1: no activity column"),
    "named column missing": ("case_id,activity,when\n", r"line 1: missing timestamp column 'time'"),
    "header only": ("case_id,activity,timestamp\n", r"the log has no events"),
    "bad timestamp": (
        "case_id,activity,timestamp\n1,a,2020-01-01T00:00:00Z\n1,b,soon\n",
        r"line 3: column 'timestamp': unparsable timestamp 'soon'",
    ),
    "short row": ("case_id,activity,timestamp\n1,a,2020-01-01T00:00:00Z\n1,b\n", r"line 3: expected 3 fields, got 2"),
    "empty activity": ("case_id,activity,timestamp\n1,,2020-01-01T00:00:00Z\n", r"line 2: empty activity"),
    "empty case id": ("case_id,activity,timestamp\n\n\n,a,2020-01-01T00:00:00Z\n", r"line 4: empty case id"),
    "duplicate column": ("case_id,activity,activity,timestamp\n", r"line 1: duplicate column 'activity'"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_csv_names_the_line_and_writes_nothing(case: str, write_file: Write, out_dir: Path) -> None:
    text, pattern = MALFORMED[case]
    path = write_file("bad.csv", text)
    columns = Columns(timestamp="time") if case == "named column missing" else Columns()
    out = out_dir / "traces.jsonl"
    with pytest.raises(LogFormatError, match=pattern) as excinfo:
        write_traces(out, import_csv(path, columns=columns).traces)
    assert str(excinfo.value).startswith("bad.csv: ")
    assert list(out_dir.iterdir()) == []


def test_not_utf8_until_the_encoding_is_named(write_file: Write, tmp_path: Path) -> None:
    path = write_file("bad.csv", "")
    path.write_bytes(b"case_id,activity,timestamp\n1,caf\xe9,2020-01-01T00:00:00Z\n")  # cp1252, as spreadsheets write
    with pytest.raises(LogFormatError, match=r"line 2: not UTF-8 text .*; name its encoding with --encoding"):
        import_csv(path)
    log = import_csv(path, columns=Columns(encoding="cp1252"))
    assert [c.label for c in log.screen.controls] == ["café"]
    out = tmp_path / "traces.jsonl"
    assert main(["import", "csv", str(path), "--out", str(out), "--encoding", "cp1252"]) == 0
    with pytest.raises(SystemExit):
        main(["import", "csv", str(path), "--out", str(out), "--encoding", "klingon"])


def test_activity_with_gives_the_actions_of_the_xes(
    write_file: Write, out_dir: Path, load_traces: Load, tiny_csv: str, tiny_xes: str
) -> None:
    csv_out, xes_out = out_dir / "csv.jsonl", out_dir / "xes.jsonl"
    write_traces(csv_out, import_csv(write_file("t.csv", tiny_csv), activity_with=["org:resource"]).traces)
    write_traces(xes_out, import_xes(write_file("t.xes", tiny_xes), activity_with=["org:resource"]).traces)
    csv_traces, xes_traces = load_traces(csv_out), load_traces(xes_out)
    assert [[s.action for s in t.steps] for t in csv_traces] == [[s.action for s in t.steps] for t in xes_traces]
    labels = {c.label for c in csv_traces[0].steps[0].state.screen.controls}
    assert labels == {"Register ticket+alice", "Assign+Queue+bob", "Close+alice", "Register ticket", "Close"}
    with pytest.raises(LogFormatError, match="--activity-with: no event has the attribute 'role'"):
        import_csv(write_file("t.csv", tiny_csv), activity_with=["role"])
