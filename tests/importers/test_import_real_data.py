"""The importers on the real logs in ../shared/data (skipped when that folder is absent).

Only the small test splits are imported here (a few seconds each); the full logs are measured by hand (see
docs/importers.md).
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from importers.jsonl import write_traces
from importers.uilog import import_uilog
from importers.xes import import_xes
from schemas import CloseChat, Trace, TraceSource, validate_action

pytestmark = pytest.mark.integration

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"


def _data(relative: str) -> Path:
    path = DATA / relative
    if not path.exists():
        pytest.skip(f"real data not available: {path} is missing (the shared data folder sits beside the repo)")
    return path


def _read(path: Path) -> list[Trace]:
    return [Trace.model_validate_json(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _count(path: Path, tag: bytes) -> int:
    """An independent count of elements, by bytes."""
    return gzip.decompress(path.read_bytes()).count(tag)


@pytest.mark.parametrize(
    ("name", "process_id", "activities"),
    [
        ("test_bpi_challenge_2013_incidents.xes.gz", "bpi_challenge_2013_incidents", 12),
        ("test_BPI_Challenge_2012_W_Complete.xes.gz", "bpi_challenge_2012_w_complete", 6),
    ],
)
def test_xes_test_split(name: str, process_id: str, activities: int, tmp_path: Path) -> None:
    path = _data(f"eventlogs/{name}")
    log = import_xes(path)
    out = tmp_path / "traces.jsonl"
    summary = write_traces(out, log.traces)
    lines = out.read_text(encoding="utf-8").splitlines()
    rows = [json.loads(line) for line in lines]

    n_cases, n_events = _count(path, b"<trace>"), _count(path, b"<event>")
    assert n_cases > 500  # several hundred+ cases per test split
    assert summary.traces == len(rows) == log.cases == n_cases
    # one step per event plus the end-of-case step of every case
    assert summary.steps == sum(len(r["steps"]) for r in rows)
    assert summary.steps - summary.traces == n_events == log.events
    assert len({r["trace_id"] for r in rows}) == len(rows)
    assert len(log.screen.controls) == activities
    for row in rows:
        assert row["source"] == "xes" and row["process_id"] == process_id
        assert [s["action"]["type"] for s in row["steps"]] == ["click_control"] * (len(row["steps"]) - 1) + [
            "close_chat"
        ]
    # the full round trip (etags, every action against its screen) on a sample: the unit tests cover the rest
    for line in lines[::10]:
        trace = Trace.model_validate_json(line)
        assert trace.steps[-1].action == CloseChat(resolution="case_end")
        for step in trace.steps:
            validate_action(step.action, step.state.screen)
    text = "\n".join(lines)
    assert "Unnamed" not in text
    assert '"variant' not in text.lower()


def test_student_record_segmented(tmp_path: Path) -> None:
    path = _data("ui_logs/StudentRecord_segmented.csv")
    out = tmp_path / "traces.jsonl"
    summary = write_traces(out, import_uilog(path).traces)
    traces = _read(out)
    assert summary.traces == len(traces) == 50
    assert [t.case_id for t in traces] == [str(i) for i in range(50)]
    for trace in traces:
        assert trace.source == TraceSource.UILOG
        assert trace.steps[-1].action == CloseChat(resolution="case_end")
        for step in trace.steps:
            validate_action(step.action, step.state.screen)
        # every task copies from Excel and the copies feed the clipboard panel
        assert trace.attributes["skipped_events"]["copyCell"] > 0
        assert "clipboard" in trace.steps[1].state.panels
    kinds = {c.id: c.kind for c in traces[0].steps[0].state.screen.controls}
    assert kinds["submit"] == "button" and kinds["decisionbox"] == "checkbox"
    assert kinds["add_another_response"] == "link" and kinds["singleline"] == "text"


def test_student_record_raw_is_one_trace(tmp_path: Path) -> None:
    path = _data("ui_logs/StudentRecord.csv")
    out = tmp_path / "traces.jsonl"
    summary = write_traces(out, import_uilog(path).traces)
    (trace,) = _read(out)
    assert summary.traces == 1 and trace.case_id == "StudentRecord"
    assert trace.attributes["skipped_events"]["clickTextField"] == 506
    for step in trace.steps:
        validate_action(step.action, step.state.screen)
