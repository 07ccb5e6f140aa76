"""Progress of long work: a bar in a terminal, a few plain lines when the output is not one (a log file, CI).

tqdm redraws its bar with carriage returns several times a second; written to a file that is thousands of
overwritten fragments in one line. ``progress`` is ``tqdm`` with the same arguments, except that on a stream that
is not a terminal it writes one plain line at most every ``PLAIN_INTERVAL_S`` seconds (and the last one).
"""

from __future__ import annotations

import io
import sys
from collections.abc import Iterable
from typing import Any, TextIO, TypeVar

from tqdm import tqdm

T = TypeVar("T")
PLAIN_INTERVAL_S = 30.0


class _Lines(io.TextIOBase):
    """A stream for tqdm that turns each redraw into a line of its own and drops the blanking of a closed bar."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def write(self, text: str) -> int:
        line = text.replace("\r", "").strip()
        if line:
            self.stream.write(line + "\n")
            self.stream.flush()
        return len(text)

    def flush(self) -> None:
        self.stream.flush()


def is_terminal(stream: Any) -> bool:
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except ValueError:  # a closed stream
        return False


def progress_bar(iterable: Iterable[T] | None = None, **kwargs: Any) -> tqdm[T]:
    """``tqdm(iterable, **kwargs)`` on stderr (or ``file``), as plain lines when that is not a terminal."""
    stream = kwargs.pop("file", None) or sys.stderr
    if is_terminal(stream):
        return tqdm(iterable, file=stream, **kwargs)
    kwargs["mininterval"] = max(float(kwargs.get("mininterval", 0.0)), PLAIN_INTERVAL_S)
    kwargs["maxinterval"] = max(float(kwargs.get("maxinterval", 0.0)), kwargs["mininterval"])
    kwargs.pop("dynamic_ncols", None)
    kwargs.setdefault("ncols", 100)
    kwargs["ascii"] = True
    kwargs["leave"] = True  # the last line says how it ended
    return tqdm(iterable, file=_Lines(stream), **kwargs)
