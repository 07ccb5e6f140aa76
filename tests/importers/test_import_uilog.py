"""Action-Logger UI-log import: controls from targets, form values replayed, clipboard panel, errors."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from importers.common import LogFormatError
from importers.jsonl import write_traces
from importers.uilog import import_uilog
from schemas import (
    ButtonControl,
    CheckboxControl,
    ClickControl,
    CloseChat,
    FillField,
    LinkControl,
    TextareaControl,
    TextControl,
    ToggleCheckbox,
    Trace,
    TraceSource,
)

Write = Callable[..., Path]
Load = Callable[[Path], list[Trace]]


def _import(path: Path, out_dir: Path, load: Load, **options: object) -> list[Trace]:
    out = out_dir / "traces.jsonl"
    write_traces(out, import_uilog(path, **options).traces)  # type: ignore[arg-type]
    return load(out)


def test_controls_from_targets(write_file: Write, uilog_text: str) -> None:
    log = import_uilog(write_file("Form_segmented.csv", uilog_text))
    assert log.process_id == "form_segmented"
    assert log.screen.resolution_codes == ["case_end"]
    assert log.screen.controls == [
        LinkControl(id="add_another_response", label="Add another response."),
        CheckboxControl(id="agree", label="Agree"),
        TextControl(id="date", label="date"),
        TextControl(id="name", label="Name"),
        TextareaControl(id="notes", label="Notes"),
        ButtonControl(id="submit", label="Submit", submits=True),
    ]


def test_events_become_actions_replayed_on_the_form(
    write_file: Write, out_dir: Path, load_traces: Load, uilog_text: str
) -> None:
    first, second = _import(write_file("form.csv", uilog_text), out_dir, load_traces)
    assert (first.case_id, second.case_id) == ("0", "1")
    assert first.source == TraceSource.UILOG
    assert first.trace_id == "form:0"
    assert [s.action for s in first.steps] == [
        FillField(control_id="name", value="John"),  # the editField repeating the paste emits no step
        FillField(control_id="name", value="John Doe"),  # pasted after the text already there
        FillField(control_id="date", value="11/03/1986"),
        FillField(control_id="date", value="11-03-1986"),  # the operator's correction is a step of its own
        FillField(control_id="notes", value="line one"),
        ToggleCheckbox(control_id="agree", checked=True),  # the editField repeating the click emits no step
        ClickControl(control_id="submit"),
        ClickControl(control_id="add_another_response"),
        CloseChat(resolution="case_end"),
    ]
    assert first.attributes == {
        "source_file": "form.csv",
        "case_start": "2019-10-21T00:10:09.640000+00:00",
        "skipped_events": {"copyCell": 3, "editField": 3},
    }
    assert all(s.operator_id == "op1" for s in first.steps[:-1])
    assert first.steps[-1].operator_id is None
    assert str(first.steps[-1].timestamp) == "2019-10-21 00:10:41.741000+00:00"

    values = [s.state.values for s in first.steps]
    assert values[0] == {}
    assert values[1] == {"name": "John"}
    assert values[6] == {"name": "John Doe", "date": "11-03-1986", "notes": "line one", "agree": True}
    assert values[7] == {}  # the submit left the page
    assert [s.action for s in second.steps] == [
        FillField(control_id="name", value="Albert"),
        ClickControl(control_id="submit"),
        CloseChat(resolution="case_end"),
    ]
    assert second.steps[1].state.values == {"name": "Albert"}  # a case starts with an empty form


def test_copied_cells_fill_the_clipboard_panel(
    write_file: Write, out_dir: Path, load_traces: Load, uilog_text: str
) -> None:
    first, second = _import(write_file("form.csv", uilog_text), out_dir, load_traces)
    clip0 = first.steps[0].state.panels["clipboard"]
    assert clip0.fields == {
        "last_copied": "John",
        "app": "Excel",
        "workbook": "Book.xlsx",
        "sheet": "Sheet1",
        "cell": "A2",
        "column": "A",
        "row": "2",
    }
    clip1 = first.steps[1].state.panels["clipboard"]
    assert clip1.fields["last_copied"] == "Doe" and clip1.fields["cell"] == "B2"
    assert clip1.rows == [{"value": "John", "cell": "A2"}, {"value": "Doe", "cell": "B2"}]
    # a copy is never a step, and a later copy never shows before it happens
    assert all(s.action.type != "copy" for s in first.steps)
    assert "11/03/1986" not in first.steps[1].state.model_dump_json()
    # the clipboard is per case
    assert second.steps[0].state.panels["clipboard"].rows == [{"value": "Albert", "cell": "A3"}]
    last = first.steps[2].state.panels["last_event"].fields
    assert last["event_type"] == "paste" and last["app"] == "Chrome"
    assert last["elapsed_s"] == "9.170" and last["since_last_s"] == "6.594"


def test_history_limits_recent_actions(write_file: Write, uilog_text: str) -> None:
    first = next(iter(import_uilog(write_file("form.csv", uilog_text), history=2).traces))
    assert first.steps[4].state.recent_actions == [
        FillField(control_id="date", value="11/03/1986"),
        FillField(control_id="date", value="11-03-1986"),
    ]
    assert len(first.steps[4].state.panels["clipboard"].rows) == 2


RAW = """\
"timeStamp","userID","targetApp","eventType","url","content","target.workbookName","target.sheetName","target.id","target.className","target.tagName","target.type","target.name","target.value","target.innerText","target.checked","target.href","target.option","target.title","target.innerHTML"
"2019-10-21T00:10:08.994Z","vleno","Excel","getCell",,,"Book.xlsx","Sheet1","A2",,,,,"John",,,,,,
"2019-10-21T00:10:09.640Z",,"OS-Clipboard","copy",,"John",,,,,,,,,,,,,,
"2019-10-21T00:10:11.689Z","vleno","Chrome","clickTextField","https://f/form",,,,,,"INPUT","text","Name","",,,,,,
"2019-10-21T00:10:12.216Z","vleno","Chrome","paste","https://f/form","John",,,,,"INPUT","text","Name","",,,,,,
"2019-10-21T00:10:13.281Z","vleno","Chrome","editField","https://f/form",,,,,,"INPUT","text","Name","John",,,,,,
"2019-10-21T00:10:16.269Z",,"OS-Clipboard","copy",,"Doe",,,,,,,,,,,,,,
"2019-10-21T00:10:16.181Z","vleno","Excel","getCell",,,"Book.xlsx","Sheet1","B2",,,,,"Doe",,,,,,
"2019-10-21T00:10:17.000Z","vleno","Chrome","copy","https://f/form","",,,,,"INPUT","text","Name","",,,,,,
"2019-10-21T00:10:18.810Z","vleno","Chrome","paste","https://f/form","Doe",,,,,"INPUT","text","Name","John ",,,,,,
"2019-10-21T00:10:20.000Z","vleno","Chrome","clickButton","https://f/form",,,,,,"BUTTON","submit",,"submit","Submit",,,,,
"2019-10-21T00:10:22.000Z","vleno","Chrome","clickLink","https://f/form/thankyou",,,,,,"A",,,,"Again",,"/form",,,
"2019-10-21T00:10:25.000Z","vleno","Chrome","paste","https://f/form","John",,,,,"INPUT","text","Name","",,,,,,
"""


def test_raw_log_is_one_trace(write_file: Write, out_dir: Path, load_traces: Load) -> None:
    (trace,) = _import(write_file("raw.csv", RAW), out_dir, load_traces)
    assert trace.case_id == "raw"
    assert [s.action for s in trace.steps] == [
        FillField(control_id="name", value="John"),
        FillField(control_id="name", value="John Doe"),
        ClickControl(control_id="submit"),
        ClickControl(control_id="again"),
        FillField(control_id="name", value="John"),  # a new form after the submit: not a no-op
        CloseChat(resolution="case_end"),
    ]
    assert trace.attributes["skipped_events"] == {"clickTextField": 1, "copy": 3, "editField": 1, "getCell": 2}
    # the clipboard text and the Excel cell are separate facts (the plug-ins log them in either order); a
    # browser copy whose text was not recorded leaves the clipboard as it was
    assert trace.steps[1].state.panels["clipboard"].fields == {
        "last_copied": "Doe",
        "app": "OS-Clipboard",
        "workbook": "Book.xlsx",
        "sheet": "Sheet1",
        "cell": "B2",
        "column": "B",
        "row": "2",
    }


def test_vocabulary_from_shares_the_screen(write_file: Write, uilog_text: str) -> None:
    raw = write_file("raw.csv", RAW)
    segmented = write_file("seg.csv", uilog_text)
    a = import_uilog(segmented, vocabulary_from=[raw], process_id="form")
    b = import_uilog(raw, vocabulary_from=[segmented], process_id="form")
    assert a.screen == b.screen
    assert "again" in {c.id for c in a.screen.controls}


MALFORMED: dict[str, tuple[Callable[[str], str], str]] = {
    "empty file": (lambda t: "", r"line 1: empty file"),
    "missing column": (lambda t: t.replace('"eventType"', '"kind"'), r"line 1: missing column 'eventType'"),
    "bad timestamp": (lambda t: t.replace("2019-10-21T00:10:13.281Z", "noon"), r"line 4: column 'timeStamp'"),
    "unnamed target": (
        lambda t: t.replace('"INPUT","text","Name","John ",', '"INPUT","text",,"John ",'),
        r"line 6: paste event without a target name",
    ),
    "no form events": (lambda t: t.split("\n")[0] + "\n" + t.split("\n")[1] + "\n", r"no form events"),
    "extra field": (lambda t: t.replace('<em>Submit</em>"', '<em>Submit</em>","x"'), r"line 14: more fields"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_ui_log(case: str, write_file: Write, out_dir: Path, uilog_text: str) -> None:
    make, pattern = MALFORMED[case]
    text = make(uilog_text)
    assert text != uilog_text
    with pytest.raises(LogFormatError, match=pattern):
        write_traces(out_dir / "t.jsonl", import_uilog(write_file("bad.csv", text)).traces)
    assert list(out_dir.iterdir()) == []


def test_case_column_must_exist(write_file: Write, uilog_text: str) -> None:
    with pytest.raises(LogFormatError, match="line 1: missing case column 'task'"):
        import_uilog(write_file("form.csv", uilog_text), case_column="task")
