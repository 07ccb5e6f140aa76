"""JSONL traces: written atomically (a temporary file beside the target, renamed over it only on success), read
with equal screens and actions shared."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from pydantic_core import from_json

from schemas.actions import Action
from schemas.base import validation_message
from schemas.files import atomic_file
from schemas.screen import ScreenSchema
from schemas.state import CANONICAL_SCREENS, canonical_screen_json
from schemas.trace import Trace


class TraceFileError(ValueError):
    """A line of a traces file is not a valid ``Trace``; the message names the file, the line and the field."""


@dataclass(frozen=True)
class WriteSummary:
    traces: int
    steps: int
    path: Path


def write_traces(path: Path, traces: Iterable[Trace]) -> WriteSummary:
    """Write one ``Trace.model_dump_json()`` per line to ``path``.

    Written atomically (``schemas.files.atomic_file``): any error while producing or writing traces, including
    an interrupt, removes the temporary file, so a reader never sees a partial import and a failed run leaves an
    existing output untouched.
    """
    directory = path.parent
    if not directory.is_dir():
        raise FileNotFoundError(f"output directory {str(directory)!r} does not exist")
    n_traces = n_steps = 0
    with atomic_file(path) as out:
        for trace in traces:
            out.write(trace.model_dump_json())
            out.write("\n")
            n_traces += 1
            n_steps += len(trace.steps)
    return WriteSummary(traces=n_traces, steps=n_steps, path=path)


def read_traces(path: Path) -> list[Trace]:
    """The traces of a JSONL file (one ``Trace`` per line; blank lines skipped).

    Equal screens and actions are loaded once and shared (``SharedParts``): every step carries its screen,
    the same one for most steps of a process, and the last actions, which the next steps repeat. On an event
    log they were most of a loaded step's memory (screen 7.8 and recent actions 3.3 of 14 KB; 11.9 GB for a
    580,000-event log before sharing). A screen is also validated once, and the states' etags are computed
    around its canonical JSON: on a log with 202 activities, validating each step's screen and hashing it into
    the state's etag took four fifths of the reading time (``bench/traces_memory.py``).

    A line that is not a valid ``Trace`` raises ``TraceFileError`` naming the file, the line number and the
    first offending field (a file of 10,000 traces is otherwise hard to mend from "5 validation errors").
    """
    shared = SharedParts()
    traces: list[Trace] = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                traces.append(shared.read(line))
            except ValidationError as error:
                count = error.error_count()
                more = f" (and {count - 1} more error{'s' if count > 2 else ''} in the line)" if count > 1 else ""
                raise TraceFileError(f"{path}:{number}: {validation_message(error)}{more}") from None
    return traces


MAX_SCREEN_VARIANTS = 64
"""Screens of one id, process, version and number of controls that are shared; a state whose screen is another
variant gets its own (a sandbox run has one variant of each of its 23 screens)."""


@dataclass
class SharedParts:
    """One instance per distinct screen and action, by content. Screens and actions are never changed in place,
    so states may share them; the etags stay as they are (the content is equal)."""

    screens: dict[tuple[object, ...], list[tuple[dict[str, Any], ScreenSchema]]] = field(default_factory=dict)
    canonical: dict[int, str] = field(default_factory=dict)  # id(shared screen) -> canonical_screen_json
    actions: dict[str, Action] = field(default_factory=dict)

    def read(self, line: str) -> Trace:
        """One JSONL line as a ``Trace`` whose screens and actions are shared. The errors are those of
        ``Trace.model_validate_json(line)``, field paths included."""
        try:
            data = from_json(line, cache_strings=True)  # pydantic's parser: repeated strings are one object
            for step in data["steps"]:
                step["state"]["screen"] = self._screen(step["state"]["screen"])
            trace = Trace.model_validate(data, context={CANONICAL_SCREENS: self.canonical})
        except (ValueError, TypeError, KeyError, AttributeError):
            # not JSON, a part missing or of another type, or invalid: pydantic says where, as it always did
            trace = Trace.model_validate_json(line)
        for step in trace.steps:
            state = step.state
            state.recent_actions = [self._action(a) for a in state.recent_actions]
            step.action = self._action(step.action)
        return trace

    def _screen(self, data: dict[str, Any]) -> ScreenSchema:
        """The shared screen equal to ``data`` (a screen's JSON object), validated the first time it is seen.
        Screens are told apart by comparing the parsed objects, which costs far less than validating them."""
        bucket = self.screens.setdefault(
            (data.get("screen_id"), data.get("process_id"), data.get("version"), len(data.get("controls", ()))), []
        )
        for seen, screen in bucket:
            if seen == data:
                return screen
        screen = ScreenSchema.model_validate(data)
        if len(bucket) >= MAX_SCREEN_VARIANTS:
            return screen  # not shared: comparing every state with ever more variants would cost more
        bucket.append((data, screen))
        self.canonical[id(screen)] = canonical_screen_json(screen)
        return screen

    def _action(self, action: Action) -> Action:
        return self.actions.setdefault(action.model_dump_json(), action)
