"""Reading JSONL traces: equal screens and actions are shared, and what is read equals what was written."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from importers.jsonl import read_traces
from schemas import Trace
from service.cli import main

Write = Callable[..., Path]


def test_read_traces_shares_equal_parts_and_keeps_the_content(write_file: Write, out_dir: Path, tiny_xes: str) -> None:
    path = write_file("tiny.xes.gz", tiny_xes, gz=True)
    out = out_dir / "tiny.jsonl"
    assert main(["import", "xes", str(path), "--out", str(out)]) == 0
    lines = [line for line in out.read_text(encoding="utf-8").splitlines() if line.strip()]
    unshared = [Trace.model_validate_json(line) for line in lines]

    traces = read_traces(out)

    assert traces == unshared  # the same content, etags included
    assert [t.model_dump_json() for t in traces] == lines
    states = [s.state for t in traces for s in t.steps]
    assert len(states) == 7 and len({id(s.screen) for s in states}) == 1
    # the same click, once as a step's action and again in the next steps' history, is one object
    actions = [s.action for t in traces for s in t.steps] + [a for s in states for a in s.recent_actions]
    assert len({id(a) for a in actions}) == len({a.model_dump_json() for a in actions}) < len(actions)
    for state in states:
        assert state.etag == state.content_hash()


def test_unequal_screens_stay_apart(write_file: Write, out_dir: Path, tiny_xes: str) -> None:
    path = write_file("tiny.xes.gz", tiny_xes, gz=True)
    ours, theirs, both = out_dir / "ours.jsonl", out_dir / "theirs.jsonl", out_dir / "both.jsonl"
    assert main(["import", "xes", str(path), "--out", str(ours), "--process-id", "ours"]) == 0
    assert main(["import", "xes", str(path), "--out", str(theirs), "--process-id", "theirs"]) == 0
    both.write_text(ours.read_text(encoding="utf-8") + theirs.read_text(encoding="utf-8"), encoding="utf-8")

    traces = read_traces(both)

    screens = {t.process_id: {id(s.state.screen) for s in t.steps} for t in traces}
    assert screens["ours"].isdisjoint(screens["theirs"])
    assert all(s.state.screen.process_id == t.process_id for t in traces for s in t.steps)
    assert traces == read_traces(ours) + read_traces(theirs)
