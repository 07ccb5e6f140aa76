"""Atomic JSONL output: traces go to a temporary file beside the target, renamed over it only on success."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from schemas.files import atomic_file
from schemas.trace import Trace


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
    """The traces of a JSONL file (one ``Trace`` per line; blank lines skipped)."""
    with path.open(encoding="utf-8") as handle:
        return [Trace.model_validate_json(line) for line in handle if line.strip()]
