"""Atomic JSONL output: traces go to a temporary file beside the target, renamed over it only on success."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from schemas.trace import Trace


@dataclass(frozen=True)
class WriteSummary:
    traces: int
    steps: int
    path: Path


def write_traces(path: Path, traces: Iterable[Trace]) -> WriteSummary:
    """Write one ``Trace.model_dump_json()`` per line to ``path``.

    The lines go to a temporary file in the target's own directory (so the final rename stays on one file
    system and is atomic) that replaces ``path`` only once every trace has been written and flushed. Any error
    while producing or writing traces, including an interrupt, removes the temporary file: a reader never sees a
    partial import and a failed run leaves an existing output untouched.
    """
    directory = path.parent
    if not directory.is_dir():
        raise FileNotFoundError(f"output directory {str(directory)!r} does not exist")
    fd, tmp_name = tempfile.mkstemp(dir=directory, prefix=f".{path.name}.", suffix=".tmp")
    tmp = Path(tmp_name)
    n_traces = n_steps = 0
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as out:
            for trace in traces:
                out.write(trace.model_dump_json())
                out.write("\n")
                n_traces += 1
                n_steps += len(trace.steps)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; an import is an ordinary data file
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    return WriteSummary(traces=n_traces, steps=n_steps, path=path)


def read_traces(path: Path) -> list[Trace]:
    """The traces of a JSONL file (one ``Trace`` per line; blank lines skipped)."""
    with path.open(encoding="utf-8") as handle:
        return [Trace.model_validate_json(line) for line in handle if line.strip()]
