"""``autopilot import xes|csv|uilog``: output, summary, and ``error: ...`` with exit status 2."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from importers.common import DEFAULT_HISTORY
from schemas import Trace
from service.cli import build_parser, main

Write = Callable[..., Path]
Load = Callable[[Path], list[Trace]]


def test_import_xes(
    write_file: Write, out_dir: Path, load_traces: Load, tiny_xes: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_file("tiny.xes.gz", tiny_xes, gz=True)
    out = out_dir / "tiny.jsonl"
    assert main(["import", "xes", str(path), "--out", str(out), "--process-id", "incidents", "--history", "1"]) == 0
    summary = capsys.readouterr().out
    assert summary.count("\n") == 1
    assert "2 traces, 7 steps" in summary and str(out) in summary
    traces = load_traces(out)
    assert [t.trace_id for t in traces] == ["incidents:c1", "incidents:c2"]
    assert all(len(s.state.recent_actions) <= 1 for t in traces for s in t.steps)


def test_import_csv_with_columns(
    write_file: Write, out_dir: Path, load_traces: Load, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_file("log.csv", "C|A|T\n1|x|2020-01-01T00:00:00Z\n1|y|2020-01-01T00:01:00Z\n")
    out = out_dir / "log.jsonl"
    argv = ["import", "csv", str(path), "--out", str(out), "--case-col", "C", "--activity-col", "A"]
    assert main([*argv, "--timestamp-col", "T", "--delimiter", "|"]) == 0
    assert "1 traces, 3 steps" in capsys.readouterr().out
    assert len(load_traces(out)[0].steps) == 3


def test_import_uilog_with_vocabulary(
    write_file: Write, out_dir: Path, load_traces: Load, uilog_text: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_file("form.csv", uilog_text)
    other = write_file("other.csv", uilog_text.replace("Notes", "Remarks"))
    out = out_dir / "form.jsonl"
    assert main(["import", "uilog", str(path), "--out", str(out), "--vocabulary-from", str(other)]) == 0
    assert "2 traces, 12 steps" in capsys.readouterr().out
    assert "remarks" in {c.id for c in load_traces(out)[0].steps[0].state.screen.controls}


@pytest.mark.parametrize(
    ("fmt", "text", "message"),
    [
        ("xes", "<log><trace>", "bad.log: line 1, column 12: not well-formed XML"),
        ("csv", "case_id,activity\n", "bad.log: line 1: no timestamp column"),
        ("uilog", "a,b\n", "bad.log: line 1: missing column 'timeStamp'"),
    ],
)
def test_malformed_input_exits_2_and_writes_nothing(
    fmt: str, text: str, message: str, write_file: Write, out_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_file("bad.log", text)
    assert main(["import", fmt, str(path), "--out", str(out_dir / "x.jsonl")]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("error: ")
    assert message in captured.err
    assert captured.out == ""
    assert list(out_dir.iterdir()) == []


def test_missing_input_and_missing_output_folder(
    write_file: Write, tmp_path: Path, tiny_xes: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["import", "xes", str(tmp_path / "nope.xes"), "--out", str(tmp_path / "x.jsonl")]) == 2
    assert capsys.readouterr().err.startswith("error: ")
    path = write_file("tiny.xes", tiny_xes)
    assert main(["import", "xes", str(path), "--out", str(tmp_path / "no" / "x.jsonl")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_history_must_be_a_count(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["import", "xes", "x.xes", "--out", "x.jsonl", "--history", "-1"])
    assert exc.value.code == 2
    assert "must be 0 or more" in capsys.readouterr().err


def test_default_history_matches_the_library() -> None:
    args = build_parser().parse_args(["import", "uilog", "x.csv", "--out", "y.jsonl"])
    assert args.history == DEFAULT_HISTORY


def test_activity_with_option(
    write_file: Write, out_dir: Path, load_traces: Load, tiny_xes: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_file("tiny.xes", tiny_xes)
    out = out_dir / "tiny.jsonl"
    assert main(["import", "xes", str(path), "--out", str(out), "--activity-with", "org:resource"]) == 0
    assert "5 controls" in capsys.readouterr().out
    assert "Close+alice" in {c.label for c in load_traces(out)[0].steps[0].state.screen.controls}
    other = out_dir / "other.jsonl"
    assert main(["import", "xes", str(path), "--out", str(other), "--activity-with", "org:rol"]) == 2
    assert "--activity-with: no event has the attribute 'org:rol'" in capsys.readouterr().err
    assert not other.exists()
