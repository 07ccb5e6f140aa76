"""Reading JSONL traces: equal screens and actions are shared, and what is read equals what was written."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from pydantic import ValidationError

from importers.jsonl import TraceFileError, read_traces
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


def test_screens_told_apart_by_content_and_errors_as_before(write_file: Write, out_dir: Path, tiny_xes: str) -> None:
    path = write_file("tiny.xes.gz", tiny_xes, gz=True)
    out = out_dir / "tiny.jsonl"
    assert main(["import", "xes", str(path), "--out", str(out)]) == 0
    first, second = out.read_text(encoding="utf-8").splitlines()
    # the second case's screen: the same id, process, version and number of controls, one label changed
    relabelled = json.loads(second)
    for step in relabelled["steps"]:
        step["state"]["screen"]["controls"][0]["label"] = "Assign to queue"
        del step["state"]["etag"]
    both = out_dir / "both.jsonl"
    both.write_text(first + "\n" + json.dumps(relabelled) + "\n", encoding="utf-8")

    c1, c2 = read_traces(both)

    assert c1.steps[0].state.screen.controls[0].label == "Assign+Queue"
    assert c2.steps[0].state.screen.controls[0].label == "Assign to queue"
    assert c1.steps[0].state.etag != c2.steps[0].state.etag
    assert [s.state.etag for s in c2.steps] == [s.state.content_hash() for s in c2.steps]

    # a wrong etag, a broken screen and a line that is not JSON fail as Trace.model_validate_json does, and the
    # error names the file, the line (after a good line and a blank one) and the first offending field
    tampered = json.loads(first)
    tampered["steps"][1]["state"]["etag"] = "0" * 20
    broken = json.loads(first)
    broken["steps"][2]["state"]["screen"]["controls"][0]["kind"] = "slider"
    for bad, field in (
        (json.dumps(tampered), "steps.1.state"),
        (json.dumps(broken), "steps.2.state.screen.controls.0"),
        (first[:-5], "(record)"),
    ):
        out.write_text(first + "\n\n" + bad + "\n", encoding="utf-8")
        with pytest.raises(TraceFileError) as ours:
            read_traces(out)
        with pytest.raises(ValidationError) as plain:
            Trace.model_validate_json(bad + "\n")  # as the file gives the line
        assert str(ours.value).startswith(f"{out}:3: {field}: {plain.value.errors()[0]['msg']}")


def test_screen_variants_beyond_the_cap_are_read_unshared(
    write_file: Write, out_dir: Path, tiny_xes: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import importers.jsonl

    monkeypatch.setattr(importers.jsonl, "MAX_SCREEN_VARIANTS", 2)
    path = write_file("tiny.xes.gz", tiny_xes, gz=True)
    out = out_dir / "tiny.jsonl"
    assert main(["import", "xes", str(path), "--out", str(out)]) == 0
    first = json.loads(out.read_text(encoding="utf-8").splitlines()[0])
    lines = []
    for k in range(4):  # four variants of the screen: labels differ
        variant = json.loads(json.dumps(first))
        variant["case_id"] = variant["trace_id"] = f"c{k}"
        for step in variant["steps"]:
            step["state"]["screen"]["controls"][0]["label"] = f"Assign {k}"
            step["state"]["case_id"] = step["state"]["session_id"] = f"c{k}"
            del step["state"]["etag"]
        lines.append(json.dumps(variant))
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")

    traces = read_traces(out)

    assert traces == [Trace.model_validate_json(line) for line in lines]
    shared = [len({id(s.state.screen) for s in t.steps}) for t in traces]
    assert shared == [1, 1, 4, 4]  # the first two variants shared by their 4 states, the others not
