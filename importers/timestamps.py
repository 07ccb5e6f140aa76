"""A CSV log's timestamp column: ISO 8601, or one of the formats common exports write, chosen for the column.

Disco and many process-mining CSVs write ``2012/10/09 14:50:17.000``, spreadsheets ``09/10/2012 14:50`` or
``10/9/2012 2:50:17 PM``. Which of day and month comes first is decided by the whole column, never by one value:
``05/04/2012`` reads either way, ``25/04/2012`` only day first. A column that both orders read completely, with
different dates, is ambiguous and is an error that asks for ``--timestamp-format``: guessing would shift events
silently. A timestamp without a zone is taken as UTC (``parse_timestamp``).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

from importers.common import parse_timestamp

_DATES = ("%Y/%m/%d", "%Y.%m.%d", "%d/%m/%Y", "%m/%d/%Y", "%d-%m-%Y", "%m-%d-%Y", "%d.%m.%Y")
_TIMES = ("%H:%M:%S.%f", "%H:%M:%S", "%H:%M", "%I:%M:%S %p", "%I:%M:%S.%f %p", "%I:%M %p")
FORMATS: tuple[str, ...] = (
    tuple(f"{date}{sep}{time}" for date in _DATES for sep in (" ", "T") for time in _TIMES) + _DATES
)
"""The formats tried, besides ISO 8601, when a column's first timestamp is not ISO (``strptime`` directives)."""


class TimestampError(ValueError):
    """A timestamp column cannot be read. ``index`` is the offending value's position (None: the whole column)."""

    def __init__(self, message: str, index: int | None = None) -> None:
        super().__init__(message)
        self.index = index


def _strptime(value: str, fmt: str) -> datetime | None:
    try:
        moment = datetime.strptime(value, fmt)
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def parse_column(values: Sequence[str], fmt: str | None = None) -> list[datetime]:
    """Every value of a timestamp column as a datetime (UTC when the text has no zone).

    ``fmt``: a ``strptime`` format the caller names; without one, ISO 8601 when the first value is ISO, else
    the formats of ``FORMATS`` that read every value. Raises ``TimestampError`` naming the first value that no
    remaining format reads, or the formats left when the column is ambiguous."""
    texts = [v.strip() for v in values]
    if fmt is not None:
        return [_named(text, fmt, i) for i, text in enumerate(texts)]
    if not texts:
        return []
    try:
        parse_timestamp(texts[0])
    except ValueError:
        return _detected(texts)
    out = []
    for i, text in enumerate(texts):
        try:
            out.append(parse_timestamp(text))
        except ValueError as exc:
            raise TimestampError(str(exc), i) from None
    return out


def _named(text: str, fmt: str, index: int) -> datetime:
    moment = _strptime(text, fmt)
    if moment is None:
        raise TimestampError(f"timestamp {text!r} does not match --timestamp-format {fmt!r}", index)
    return moment


def _detected(texts: Sequence[str]) -> list[datetime]:
    """The column read with the formats that read all of it (those that agree; ambiguous ones are an error)."""
    readings = {fmt: [moment] for fmt in FORMATS if (moment := _strptime(texts[0], fmt)) is not None}
    if not readings:
        raise TimestampError(
            f"unparsable timestamp {texts[0]!r} (expected ISO 8601 or a common export format such as "
            "2012/10/09 14:50:17; name it with --timestamp-format)",
            0,
        )
    for i, text in enumerate(texts[1:], start=1):
        for fmt in list(readings):
            moment = _strptime(text, fmt)
            if moment is None:
                del readings[fmt]
            else:
                readings[fmt].append(moment)
        if not readings:
            raise TimestampError(
                f"timestamp {text!r} is not in the format of the column's earlier values (e.g. {texts[0]!r})", i
            )
    columns = list(readings.values())
    if any(column != columns[0] for column in columns[1:]):
        raise TimestampError(
            f"ambiguous timestamps (e.g. {texts[0]!r}): {' and '.join(repr(f) for f in readings)} read every value "
            "with different dates; name the format with --timestamp-format"
        )
    return columns[0]
