"""Reading traces back: memory per loaded step and read time, equal screens and actions shared or not.

Protocol: two real logs from the shared data are imported once each into a JSONL file in a temporary folder:

* the whole BPI 2012 W log (``BPI_Challenge_2012_W_Complete.xes.gz``, 6 activities), read ``--repeats`` times
  each way, alternating: as ``importers.jsonl.read_traces`` reads it, as it was read up to 2026-12-05
  (``Trace.model_validate_json`` per line, each state its own screen and actions: ``unshared``), and as it was read
  on 2026-12-06 before screens were validated once (each line validated, then equal parts shared by their JSON:
  ``shared_by_dump``). Memory is what ``tracemalloc`` counts as still allocated after a separate read of each kind
  (the traces alive), per step.
* the whole BPI 2013 incidents log with the activity joined to the acting role (``--activity-with org:role``:
  202 activities, so every state's screen has 202 buttons), read ``--large-repeats`` times by ``read_traces`` and
  by ``shared_by_dump``. Read time only: each state its own 202-button screen would not fit this machine's memory
  in the unshared reader, and tracemalloc would slow the read several-fold.

Read time is the median over the repeats.

    .venv/bin/python -m bench.traces_memory [--repeats 3] [--large-repeats 1]
"""

from __future__ import annotations

import argparse
import gc
import statistics
import tempfile
import time
import tracemalloc
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.common import environment, shared_data_dir, write_results
from importers.jsonl import read_traces, write_traces
from importers.xes import import_xes
from schemas.actions import Action
from schemas.screen import ScreenSchema
from schemas.trace import Trace


@dataclass(frozen=True)
class Log:
    file: str
    activity_with: tuple[str, ...]
    readers: tuple[str, ...]
    memory: bool


LOGS = {
    "w": Log("BPI_Challenge_2012_W_Complete.xes.gz", (), ("unshared", "shared_by_dump", "shared"), memory=True),
    "incidents_roles": Log("bpi_challenge_2013_incidents.xes.gz", ("org:role",), ("shared_by_dump", "shared"), False),
}


def read_unshared(path: Path) -> list[Trace]:
    """The baseline: every line validated on its own, each state with its own screen and actions."""
    with path.open(encoding="utf-8") as handle:
        return [Trace.model_validate_json(line) for line in handle if line.strip()]


def read_shared_by_dump(path: Path) -> list[Trace]:
    """The reader of 2026-12-06 before this one: each line validated on its own (each screen validated and its
    states' etags hashed through it), then its equal screens and actions shared, found by their JSON."""
    screens: dict[str, ScreenSchema] = {}
    actions: dict[str, Action] = {}
    traces: list[Trace] = []
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            if not line.strip():
                continue
            trace = Trace.model_validate_json(line)
            for step in trace.steps:
                state = step.state
                state.screen = screens.setdefault(state.screen.model_dump_json(), state.screen)
                state.recent_actions = [actions.setdefault(a.model_dump_json(), a) for a in state.recent_actions]
                step.action = actions.setdefault(step.action.model_dump_json(), step.action)
            traces.append(trace)
    return traces


READERS: dict[str, Callable[[Path], list[Trace]]] = {
    "unshared": read_unshared,
    "shared_by_dump": read_shared_by_dump,
    "shared": read_traces,
}


def _allocated(reader: Callable[[Path], list[Trace]], path: Path) -> tuple[int, int]:
    """Bytes still allocated with the traces alive, and their number of steps."""
    gc.collect()
    tracemalloc.start()
    traces = reader(path)
    allocated, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return allocated, sum(len(t.steps) for t in traces)


def _measure(name: str, log: Log, repeats: int, folder: Path) -> dict[str, Any]:
    source = shared_data_dir() / "eventlogs" / log.file
    if not source.is_file():
        raise FileNotFoundError(f"{source} is missing (the shared data folder)")
    path = folder / f"{name}.jsonl"
    tick = time.perf_counter()
    imported = import_xes(source, activity_with=log.activity_with)
    summary = write_traces(path, imported.traces)
    import_s = time.perf_counter() - tick
    print(f"{name}: imported {summary.steps:,} steps in {import_s:.0f} s", flush=True)
    seconds: dict[str, list[float]] = {reader: [] for reader in log.readers}
    for r in range(repeats):
        for reader in log.readers:
            gc.collect()
            tick = time.perf_counter()
            READERS[reader](path)
            seconds[reader].append(round(time.perf_counter() - tick, 3))
        print(
            f"{name} repeat {r + 1}/{repeats}: " + ", ".join(f"{n} {s[-1]:.1f} s" for n, s in seconds.items()),
            flush=True,
        )
    median = {reader: statistics.median(values) for reader, values in seconds.items()}
    result: dict[str, Any] = {
        "log": log.file,
        "activity_with": list(log.activity_with),
        "controls": len(imported.screen.controls),
        "traces": summary.traces,
        "steps": summary.steps,
        "jsonl_bytes": path.stat().st_size,
        "import_s": round(import_s, 1),
        "repeats": repeats,
        "read_s": seconds,
        "read_s_median": median,
        "read_ratio": {
            f"shared/{base}": round(median["shared"] / median[base], 3) for base in log.readers if base != "shared"
        },
    }
    if log.memory:
        memory = {reader: _allocated(READERS[reader], path) for reader in log.readers}
        per_step = {reader: round(allocated / summary.steps) for reader, (allocated, _) in memory.items()}
        result["bytes_per_step"] = per_step
        result["memory_ratio"] = round(per_step["shared"] / per_step["unshared"], 3)
    path.unlink()
    return result


def run(repeats: int, large_repeats: int, names: Sequence[str] = tuple(LOGS)) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        logs = {
            name: _measure(name, LOGS[name], repeats if LOGS[name].memory else large_repeats, Path(tmp))
            for name in names
        }
    return {"date": datetime.now(UTC).isoformat(timespec="seconds"), "logs": logs, "environment": environment()}


LABELS = {
    "unshared": "each state its own screen and actions (up to 2026-12-05)",
    "shared_by_dump": "each line validated, then equal parts shared (2026-12-06, before)",
    "shared": "`read_traces`: each screen validated once (now)",
}


def render(result: dict[str, Any]) -> str:
    lines = ["# Reading traces back: equal screens and actions shared", "", f"Measured {result['date']}."]
    for data in result["logs"].values():
        joined = f", activity joined with {' + '.join(data['activity_with'])}" if data["activity_with"] else ""
        per_step = data.get("bytes_per_step", {})
        lines += [
            "",
            f"## {data['log']}{joined}",
            "",
            f"{data['traces']:,} traces, {data['steps']:,} steps, {data['controls']} activities (buttons per "
            f"screen), {data['jsonl_bytes'] / 2**20:,.0f} MiB of JSONL (import {data['import_s']:.0f} s); "
            f"median of {data['repeats']} read(s).",
            "",
            "| read | memory per loaded step | read time (median) |",
            "|---|---:|---:|",
        ]
        for reader, median in data["read_s_median"].items():
            memory = f"{per_step[reader] / 1024:.1f} KiB" if reader in per_step else "–"
            lines.append(f"| {LABELS[reader]} | {memory} | {median:.1f} s |")
        ratios = ", ".join(f"{k} {v:.2f}" for k, v in data["read_ratio"].items())
        memory_ratio = f"; memory shared/unshared {data['memory_ratio']:.2f}" if "memory_ratio" in data else ""
        lines += ["", f"Read time {ratios}{memory_ratio}."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="reads of the W log each way")
    parser.add_argument("--large-repeats", type=int, default=1, help="reads of the 202-activity log each way")
    parser.add_argument("--logs", nargs="+", choices=sorted(LOGS), default=list(LOGS))
    args = parser.parse_args()
    result = run(args.repeats, args.large_repeats, args.logs)
    json_path, md_path = write_results("traces_memory", result, render(result))
    print(render(result))
    print(f"wrote {json_path} and {md_path}")


if __name__ == "__main__":
    main()
