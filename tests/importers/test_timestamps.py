"""Timestamp columns of CSV logs: ISO, common export formats read from the whole column, ambiguity is an error."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest

from importers.common import LogFormatError
from importers.csv_log import Columns, import_csv
from importers.timestamps import TimestampError, parse_column
from service.cli import main

Write = Callable[..., Path]


def _utc(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=UTC)  # type: ignore[arg-type, misc]


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        (["2012-10-09T14:50:17+02:00"], [datetime.fromisoformat("2012-10-09T14:50:17+02:00")]),
        (
            ["2012/10/09 14:50:17.000", "2012/10/10 08:01:02.500"],
            [_utc(2012, 10, 9, 14, 50, 17), _utc(2012, 10, 10, 8, 1, 2, 500000)],
        ),
        (["09/10/2012 14:50", "25/10/2012 08:01"], [_utc(2012, 10, 9, 14, 50), _utc(2012, 10, 25, 8, 1)]),  # day first
        (["10/9/2012 2:50:17 PM", "10/25/2012 8:01:00 AM"], [_utc(2012, 10, 9, 14, 50, 17), _utc(2012, 10, 25, 8, 1)]),
        (["09.10.2012 14:50:17"], [_utc(2012, 10, 9, 14, 50, 17)]),
        (["05/05/2012 10:00", "07/07/2012 11:00"], [_utc(2012, 5, 5, 10), _utc(2012, 7, 7, 11)]),  # both orders agree
    ],
)
def test_columns_that_read_one_way(values: list[str], expected: list[datetime]) -> None:
    assert parse_column(values) == expected


def test_a_column_both_orders_read_differently_is_ambiguous() -> None:
    with pytest.raises(TimestampError, match=r"ambiguous.*--timestamp-format") as excinfo:
        parse_column(["05/04/2012 10:00", "06/04/2012 11:00"])
    assert excinfo.value.index is None
    assert parse_column(["05/04/2012 10:00"], "%d/%m/%Y %H:%M") == [_utc(2012, 4, 5, 10)]


@pytest.mark.parametrize(
    ("values", "fmt", "index", "pattern"),
    [
        (["2012/10/09 14:50", "2012-10-10 08:01"], None, 1, r"not in the format of the column's earlier values"),
        (["2012-10-09 14:50", "2012/10/10 08:01"], None, 1, r"unparsable timestamp '2012/10/10 08:01'"),
        (["soon"], None, 0, r"unparsable timestamp 'soon'.*--timestamp-format"),
        (["2012-10-09"], "%d/%m/%Y", 0, r"does not match --timestamp-format '%d/%m/%Y'"),
    ],
)
def test_unreadable_values_are_named(values: list[str], fmt: str | None, index: int, pattern: str) -> None:
    with pytest.raises(TimestampError, match=pattern) as excinfo:
        parse_column(values, fmt)
    assert excinfo.value.index == index


# Disco's export: its own column names, slashes in the dates, the variant columns (dropped as in XES).
DISCO_CSV = """Case ID,Activity,Resource,Start Timestamp,Complete Timestamp,Variant,Variant index
Case 1,Assign seriousness,Value 1,2012/10/09 14:50:17.000,2012/10/09 14:50:17.000,Variant 1,1
Case 1,Take in charge ticket,Value 1,2012/10/09 14:51:01.000,2012/10/09 14:51:01.000,Variant 1,1
Case 2,Assign seriousness,Value 2,2012/10/10 09:00:00.000,2012/10/10 09:00:00.000,Variant 2,2
Case 1,Resolve ticket,Value 2,2012/10/12 15:02:56.000,2012/10/12 15:02:56.000,Variant 1,1
"""


def test_a_disco_export_imports_with_its_own_names(write_file: Write) -> None:
    log = import_csv(write_file("helpdesk.csv", DISCO_CSV))
    traces = list(log.traces)
    assert [t.case_id for t in traces] == ["Case 1", "Case 2"]
    first = traces[0]
    assert [s.timestamp for s in first.steps[:3]] == [
        _utc(2012, 10, 9, 14, 50, 17),
        _utc(2012, 10, 9, 14, 51, 1),
        _utc(2012, 10, 12, 15, 2, 56),
    ]
    assert [s.operator_id for s in first.steps[:3]] == ["Value 1", "Value 1", "Value 2"]
    fields = first.steps[1].state.panels["last_event"].fields
    assert fields["Complete Timestamp"] == "2012-10-09T14:50:17+00:00"
    assert not any(key.lower().startswith("variant") for key in fields)


def test_an_ambiguous_column_is_refused_until_named(write_file: Write, tmp_path: Path) -> None:
    path = write_file("log.csv", "case,activity,time\n1,a,05/04/2012 10:00\n1,b,06/04/2012 11:00\n")
    out = tmp_path / "out" / "traces.jsonl"
    out.parent.mkdir()
    with pytest.raises(LogFormatError, match=r"^log.csv: column 'time': ambiguous"):
        import_csv(path)
    assert main(["import", "csv", str(path), "--out", str(out)]) == 2
    assert not out.exists()
    named = ["--timestamp-format", "%m/%d/%Y %H:%M"]
    assert main(["import", "csv", str(path), "--out", str(out), *named]) == 0
    log = import_csv(path, columns=Columns(timestamp_format="%m/%d/%Y %H:%M"))
    assert [s.timestamp for s in next(iter(log.traces)).steps[:2]] == [_utc(2012, 5, 4, 10), _utc(2012, 6, 4, 11)]


def test_a_value_in_another_format_names_its_line(write_file: Write) -> None:
    path = write_file("log.csv", "case,activity,time\n1,a,2012/10/09 14:50\n\n1,b,2012-10-10 08:01\n")
    with pytest.raises(LogFormatError, match=r"^log.csv: line 4: column 'time': timestamp '2012-10-10 08:01'"):
        import_csv(path)
