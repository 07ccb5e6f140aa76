"""Reading traces back: memory per loaded step and read time, equal screens and actions shared or not.

Protocol: the whole BPI 2012 W log (``BPI_Challenge_2012_W_Complete.xes.gz`` from the shared data) is imported
once into a JSONL file in a temporary folder. It is then read ``--repeats`` times each way, alternating: as
``importers.jsonl.read_traces`` reads it (one instance per distinct screen and action), and as it was read before
(``Trace.model_validate_json`` per line, the baseline). Read time is the median over the repeats; memory is what
``tracemalloc`` counts as still allocated after a separate read of each kind (the traces alive), per step.

    .venv/bin/python -m bench.traces_memory [--repeats 3]
"""

from __future__ import annotations

import argparse
import gc
import statistics
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.common import environment, shared_data_dir, write_results
from importers.jsonl import read_traces, write_traces
from importers.xes import import_xes
from schemas.trace import Trace

LOG = "BPI_Challenge_2012_W_Complete.xes.gz"


def read_unshared(path: Path) -> list[Trace]:
    """The baseline: every line validated on its own, each state with its own screen and actions."""
    with path.open(encoding="utf-8") as handle:
        return [Trace.model_validate_json(line) for line in handle if line.strip()]


READERS: dict[str, Callable[[Path], list[Trace]]] = {"unshared": read_unshared, "shared": read_traces}


def _allocated(reader: Callable[[Path], list[Trace]], path: Path) -> tuple[int, int]:
    """Bytes still allocated with the traces alive, and their number of steps."""
    gc.collect()
    tracemalloc.start()
    traces = reader(path)
    allocated, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return allocated, sum(len(t.steps) for t in traces)


def run(repeats: int) -> dict[str, Any]:
    source = shared_data_dir() / "eventlogs" / LOG
    if not source.is_file():
        raise FileNotFoundError(f"{source} is missing (the shared data folder)")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "w.jsonl"
        tick = time.perf_counter()
        summary = write_traces(path, import_xes(source).traces)
        import_s = time.perf_counter() - tick
        print(f"imported {summary.steps:,} steps in {import_s:.0f} s", flush=True)
        seconds: dict[str, list[float]] = {name: [] for name in READERS}
        for r in range(repeats):
            for name, reader in READERS.items():
                gc.collect()
                tick = time.perf_counter()
                reader(path)
                seconds[name].append(round(time.perf_counter() - tick, 3))
            print(
                f"repeat {r + 1}/{repeats}: " + ", ".join(f"{n} {s[-1]:.1f} s" for n, s in seconds.items()), flush=True
            )
        memory = {name: _allocated(reader, path) for name, reader in READERS.items()}
        jsonl_bytes = path.stat().st_size
    steps = summary.steps
    per_step = {name: round(allocated / steps) for name, (allocated, _) in memory.items()}
    median = {name: statistics.median(values) for name, values in seconds.items()}
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "log": LOG,
        "traces": summary.traces,
        "steps": steps,
        "jsonl_bytes": jsonl_bytes,
        "repeats": repeats,
        "read_s": seconds,
        "read_s_median": median,
        "read_ratio": round(median["shared"] / median["unshared"], 3),
        "bytes_per_step": per_step,
        "memory_ratio": round(per_step["shared"] / per_step["unshared"], 3),
        "environment": environment(),
    }


def render(result: dict[str, Any]) -> str:
    per_step, median = result["bytes_per_step"], result["read_s_median"]
    return "\n".join(
        [
            "# Reading traces back: equal screens and actions shared",
            "",
            f"{result['log']}: {result['traces']:,} traces, {result['steps']:,} steps, "
            f"{result['jsonl_bytes'] / 2**20:.0f} MiB of JSONL; median of {result['repeats']} reads, "
            f"measured {result['date']}.",
            "",
            "| read | memory per loaded step | read time (median) |",
            "|---|---:|---:|",
            f"| each state its own screen and actions (before) | {per_step['unshared'] / 1024:.1f} KiB "
            f"| {median['unshared']:.1f} s |",
            f"| `read_traces` (shared) | {per_step['shared'] / 1024:.1f} KiB | {median['shared']:.1f} s |",
            f"| ratio | {result['memory_ratio']:.2f} | {result['read_ratio']:.2f} |",
            "",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    result = run(args.repeats)
    json_path, md_path = write_results("traces_memory", result, render(result))
    print(render(result))
    print(f"wrote {json_path} and {md_path}")


if __name__ == "__main__":
    main()
