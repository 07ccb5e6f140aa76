"""``autopilot import xes|csv|uilog``: import a real log as JSONL traces (one ``Trace`` per line).

Handlers import the importers lazily so that ``autopilot`` starts fast. Format errors are ``LogFormatError``
(a ValueError): ``service.cli`` prints them as ``error: ...`` with exit status 2, and the output file is then
neither created nor changed.
"""

from __future__ import annotations

import argparse
import codecs
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from importers.common import LogImport


def _history(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError("must be 0 or more")
    return value


def _encoding(text: str) -> str:
    try:
        codecs.lookup(text)
    except LookupError:
        raise argparse.ArgumentTypeError(f"unknown encoding {text!r}") from None
    return text


def _write(args: argparse.Namespace, prepare: Callable[[], LogImport]) -> int:
    from importers.jsonl import write_traces
    from schemas.progress import progress_bar

    log = prepare()  # reads and checks the whole input before the output is opened
    out = Path(args.out)
    progress = progress_bar(
        log.traces,
        total=log.cases,
        unit="trace",
        desc=Path(args.path).name,
        file=sys.stderr,
        disable=None,  # off when stderr is not a terminal
        leave=False,
    )
    summary = write_traces(out, progress)
    print(
        f"imported {summary.traces} traces, {summary.steps} steps ({log.events} events, process "
        f"{log.process_id!r}, {len(log.screen.controls)} controls) -> {summary.path}"
    )
    return 0


def _xes(args: argparse.Namespace) -> int:
    from importers.xes import import_xes

    return _write(
        args,
        lambda: import_xes(
            Path(args.path),
            process_id=args.process_id,
            vocabulary_from=[Path(p) for p in args.vocabulary_from],
            history=args.history,
            activity_with=args.activity_with,
        ),
    )


def _csv(args: argparse.Namespace) -> int:
    from importers.csv_log import Columns, import_csv

    columns = Columns(
        case=args.case_col,
        activity=args.activity_col,
        timestamp=args.timestamp_col,
        resource=args.resource_col,
        delimiter=args.delimiter,
        timestamp_format=args.timestamp_format,
        encoding=args.encoding,
    )
    return _write(
        args,
        lambda: import_csv(
            Path(args.path),
            columns=columns,
            process_id=args.process_id,
            vocabulary_from=[Path(p) for p in args.vocabulary_from],
            history=args.history,
            activity_with=args.activity_with,
        ),
    )


def _uilog(args: argparse.Namespace) -> int:
    from importers.uilog import import_uilog

    return _write(
        args,
        lambda: import_uilog(
            Path(args.path),
            process_id=args.process_id,
            case_column=args.case_col,
            vocabulary_from=[Path(p) for p in args.vocabulary_from],
            history=args.history,
        ),
    )


def _common(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("path", metavar="PATH", help=f"the {what} to import")
    parser.add_argument("--out", required=True, metavar="OUT.jsonl", help="output: one Trace JSON per line")
    parser.add_argument(
        "--process-id", metavar="ID", help="process id (default: the file name without split prefix and suffix)"
    )
    parser.add_argument(
        "--vocabulary-from",
        action="append",
        default=[],
        metavar="FILE",
        help=f"another {what} whose activities / controls join the screen (repeatable), so that imports of "
        "several splits share one screen",
    )
    parser.add_argument(
        "--history",
        type=_history,
        default=16,
        metavar="N",
        help="how many past actions a state carries in recent_actions (default 16)",
    )


def _activity_with(parser: argparse.ArgumentParser, what: str, example: str) -> None:
    parser.add_argument(
        "--activity-with",
        action="append",
        default=[],
        metavar="NAME",
        help=f"{what} whose value joins the activity name with '+' (repeatable), as an XES classifier's keys: "
        f"e.g. {example} in a log of start and complete events, or a role to predict who acts next",
    )


def register(commands: Any) -> None:
    parser: argparse.ArgumentParser = commands.add_parser(
        "import", help="import real logs as traces", description="Import a real log as JSONL traces."
    )
    formats = parser.add_subparsers(dest="import_command", required=True, metavar="FORMAT")

    xes = formats.add_parser("xes", help="an XES 2.0 event log (.xes or .xes.gz)")
    _common(xes, "XES log")
    _activity_with(xes, "an event attribute", "lifecycle:transition")
    xes.set_defaults(handler=_xes)

    csv = formats.add_parser("csv", help="a CSV event log (one row per event)")
    _common(csv, "CSV log")
    csv.add_argument("--case-col", metavar="NAME", help="case id column (default: detect case:concept:name ...)")
    csv.add_argument("--activity-col", metavar="NAME", help="activity column (default: detect concept:name ...)")
    csv.add_argument("--timestamp-col", metavar="NAME", help="timestamp column (default: detect time:timestamp ...)")
    csv.add_argument(
        "--timestamp-format",
        metavar="FMT",
        help="the timestamps' strptime format, e.g. '%%d/%%m/%%Y %%H:%%M' (default: ISO 8601, or a common export "
        "format such as 2012/10/09 14:50:17 read from the whole column)",
    )
    csv.add_argument("--resource-col", metavar="NAME", help="operator column (default: org:resource, if present)")
    csv.add_argument("--delimiter", metavar="CHAR", help="field separator (default: detect , ; tab |)")
    csv.add_argument(
        "--encoding", type=_encoding, default="utf-8", help="the file's text encoding (default utf-8; e.g. cp1252)"
    )
    _activity_with(csv, "a column", "lifecycle:transition")
    csv.set_defaults(handler=_csv)

    uilog = formats.add_parser("uilog", help="an Action-Logger UI log (CSV)")
    _common(uilog, "UI log")
    uilog.add_argument("--case-col", metavar="NAME", help="case column (default: caseID; without it one trace)")
    uilog.set_defaults(handler=_uilog)
