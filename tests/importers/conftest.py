"""Fixtures of the importer tests: tiny logs written into tmp_path, and a reader that checks the output."""

from __future__ import annotations

import gzip
from collections.abc import Callable
from pathlib import Path

import pytest

from schemas import Trace, validate_action

# Two cases, three activities. Every event carries a unique ``marker`` so that a test can see which events'
# attributes reach which state; the log also carries the attributes that must be dropped (``Unnamed: 0``,
# ``variant``), typed values of every kind, a float nan, a list and a container.
TINY_XES = """<?xml version="1.0" encoding="UTF-8"?>
<log xes.version="2.0" xmlns="http://www.xes-standard.org/">
  <extension name="Concept" prefix="concept" uri="http://www.xes-standard.org/concept.xesext"/>
  <global scope="event"><string key="concept:name" value="__INVALID__"/></global>
  <string key="origin" value="csv"/>
  <trace>
    <string key="concept:name" value="c1"/>
    <int key="amount" value="100"/>
    <string key="variant" value="Variant 3"/>
    <int key="variant-index" value="3"/>
    <boolean key="vip" value="TRUE"/>
    <event>
      <int key="Unnamed: 0" value="0"/>
      <string key="concept:name" value="Register ticket"/>
      <string key="org:resource" value="alice"/>
      <date key="time:timestamp" value="2020-01-01T10:00:00.000+00:00"/>
      <string key="marker" value="M-c1-0"/>
      <float key="priority" value="nan"/>
    </event>
    <event>
      <int key="Unnamed: 0" value="1"/>
      <string key="concept:name" value="Assign+Queue"/>
      <string key="org:resource" value="bob"/>
      <date key="time:timestamp" value="2020-01-01T10:05:00.000+00:00"/>
      <string key="marker" value="M-c1-1"/>
      <float key="cost" value="1.5"/>
      <list key="tags"><values><string key="tag" value="x"/><string key="tag" value="y"/></values></list>
    </event>
    <event>
      <int key="Unnamed: 0" value="2"/>
      <string key="concept:name" value="Close"/>
      <string key="org:resource" value="alice"/>
      <date key="time:timestamp" value="2020-01-01T12:00:00.000+01:00"/>
      <string key="marker" value="M-c1-2"/>
      <container key="details"><int key="a" value="1"/><id key="b" value="ID-9"/></container>
    </event>
  </trace>
  <trace>
    <string key="concept:name" value="c2"/>
    <event>
      <string key="concept:name" value="Register ticket"/>
      <date key="time:timestamp" value="2020-01-02T09:00:00Z"/>
      <string key="marker" value="M-c2-0"/>
    </event>
    <event>
      <string key="concept:name" value="Close"/>
      <date key="time:timestamp" value="2020-01-02T09:30:00Z"/>
      <string key="marker" value="M-c2-1"/>
    </event>
  </trace>
</log>
"""

# The same events as a CSV, rows interleaved across cases and out of time order within c1.
TINY_CSV = """case:concept:name,concept:name,time:timestamp,org:resource,marker,Unnamed: 0,variant
c1,Assign+Queue,2020-01-01T10:05:00+00:00,bob,M-c1-1,1,Variant 3
c2,Register ticket,2020-01-02T09:00:00Z,,M-c2-0,3,Variant 1
c1,Register ticket,2020-01-01T10:00:00+00:00,alice,M-c1-0,0,Variant 3
c1,Close,2020-01-01T12:00:00+01:00,alice,M-c1-2,2,Variant 3
c2,Close,2020-01-02T09:30:00Z,,M-c2-1,4,Variant 1
"""

# The header of the real Action-Logger export (StudentRecord_segmented.csv).
UILOG_HEADER = (
    '"caseID","timeStamp","userID","targetApp","eventType","url","content","target.workbookName",'
    '"target.sheetName","target.id","target.class","target.tagName","target.type","target.name","target.value",'
    '"target.innerText","target.checked","target.href","target.option","target.title","target.innerHTML"'
)
_FORM = "https://forms.example.com/form/NewRecord"
UILOG_ROWS = [
    # case 0: copy a cell, paste it (the editField after it repeats the value), paste into a field that already
    # has text, correct a pasted value, tick a checkbox (the editField after it repeats it), submit, next form
    '"0","2019-10-21T00:10:09.640Z","op1","Excel","copyCell",,"John","Book.xlsx","Sheet1","A2",,,,,"John",,,,,,',
    f'"0","2019-10-21T00:10:12.216Z","op1","Chrome","paste","{_FORM}","John",,,,,"INPUT","text","Name",,,,,,,',
    f'"0","2019-10-21T00:10:13.281Z","op1","Chrome","editField","{_FORM}",,,,,,"INPUT","text","Name","John",,,,,,',
    '"0","2019-10-21T00:10:16.269Z","op1","Excel","copyCell",,"Doe","Book.xlsx","Sheet1","B2",,,,,"Doe",,,,,,',
    f'"0","2019-10-21T00:10:18.810Z","op1","Chrome","paste","{_FORM}","Doe",,,,,"INPUT","text","Name","John ",,,,,,',
    f'"0","2019-10-21T00:10:19.161Z","op1","Chrome","editField","{_FORM}",,,,,,"INPUT","text","Name","John Doe",,,,,,',
    '"0","2019-10-21T00:10:23.120Z","op1","Excel","copyCell",,"11/03/1986","Book.xlsx","Sheet1","C2",,,,,"11/03/1986",,,,,,',
    f'"0","2019-10-21T00:10:27.297Z","op1","Chrome","paste","{_FORM}","11/03/1986",,,"Date-date",,"INPUT","text","date",,,,,,,',
    f'"0","2019-10-21T00:10:31.091Z","op1","Chrome","editField","{_FORM}",,,,"Date-date",,"INPUT","text","date","11-03-1986",,,,,,',
    f'"0","2019-10-21T00:10:35.000Z","op1","Chrome","editField","{_FORM}",,,,,,"TEXTAREA","textarea","Notes","line one",,,,,,',
    f'"0","2019-10-21T00:10:36.000Z","op1","Chrome","clickCheckbox","{_FORM}",,,,"Agree",,"INPUT","checkbox","Agree","on",,"true",,,,',
    f'"0","2019-10-21T00:10:36.001Z","op1","Chrome","editField","{_FORM}",,,,"Agree",,"INPUT","checkbox","Agree","on",,"true",,,,',
    f'"0","2019-10-21T00:10:37.513Z","op1","Chrome","clickButton","{_FORM}",,,,,,"BUTTON","submit",,"submit","Submit",,,,,"<em>Submit</em>"',
    f'"0","2019-10-21T00:10:41.741Z","op1","Chrome","clickLink","{_FORM}/thankyou",,,,,,"A",,,,"Add another response.",,"/form/NewRecord",,,"<b>Add</b>"',
    # case 1: a shorter task
    '"1","2019-10-21T00:12:04.330Z","op1","Excel","copyCell",,"Albert","Book.xlsx","Sheet1","A3",,,,,"Albert",,,,,,',
    f'"1","2019-10-21T00:12:09.464Z","op1","Chrome","paste","{_FORM}","Albert",,,,,"INPUT","text","Name",,,,,,,',
    f'"1","2019-10-21T00:12:10.104Z","op1","Chrome","editField","{_FORM}",,,,,,"INPUT","text","Name","Albert",,,,,,',
    f'"1","2019-10-21T00:12:11.000Z","op1","Chrome","clickButton","{_FORM}",,,,,,"BUTTON","submit",,"submit","Submit",,,,,"<em>Submit</em>"',
]
UILOG = "\n".join([UILOG_HEADER, *UILOG_ROWS]) + "\n"


@pytest.fixture
def tiny_xes() -> str:
    return TINY_XES


@pytest.fixture
def tiny_csv() -> str:
    return TINY_CSV


@pytest.fixture
def uilog_text() -> str:
    return UILOG


@pytest.fixture
def write_file(tmp_path: Path) -> Callable[..., Path]:
    """``write_file(name, text, gz=False)``: a file in tmp_path/logs, gzip-compressed when asked."""

    def write(name: str, text: str, gz: bool = False) -> Path:
        folder = tmp_path / "logs"
        folder.mkdir(exist_ok=True)
        path = folder / name
        data = text.encode("utf-8")
        path.write_bytes(gzip.compress(data) if gz else data)
        return path

    return write


@pytest.fixture
def out_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "out"
    folder.mkdir()
    return folder


def read_traces(path: Path) -> list[Trace]:
    """Parse every line with ``Trace.model_validate_json`` and check that every action fits its state's screen
    and that each state's etag matches its content (model_validate_json rejects a mismatch)."""
    traces = [Trace.model_validate_json(line) for line in path.read_text(encoding="utf-8").splitlines()]
    for trace in traces:
        for step in trace.steps:
            validate_action(step.action, step.state.screen)
            assert step.state.step == step.step
            assert step.state.case_id == trace.case_id
    return traces


@pytest.fixture
def load_traces() -> Callable[[Path], list[Trace]]:
    return read_traces
