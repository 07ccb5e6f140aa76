"""``autopilot sandbox generate``: simulated operators work N cases; one Trace per line of JSONL."""

from __future__ import annotations

import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from sandbox.ceiling import CeilingSample, ceiling_samples, summarise
from sandbox.operators import operator_pool
from sandbox.platform import SandboxPlatform
from sandbox.scenario import Scenario
from sandbox.simulate import work_case
from schemas import Trace
from schemas.files import atomic_file
from schemas.progress import progress_bar


@dataclass
class GenerationSummary:
    sessions: int = 0
    steps: int = 0
    bytes_written: int = 0
    seconds: float = 0.0
    by_process: Counter[str] = field(default_factory=Counter)
    outcomes: Counter[str] = field(default_factory=Counter)
    correct: int = 0
    handling_time_s: float = 0.0
    ceiling_samples: list[CeilingSample] = field(default_factory=list)  # per step, for the ceiling table

    def add(self, trace: Trace, size: int) -> None:
        self.sessions += 1
        self.steps += len(trace.steps)
        self.bytes_written += size
        self.by_process[trace.process_id] += 1
        outcome = trace.ground_truth["outcome"]
        self.outcomes[str(outcome["status"])] += 1
        self.correct += int(bool(outcome["correct"]))
        self.handling_time_s += float(trace.attributes["handling_time_s"])
        self.ceiling_samples.extend(ceiling_samples([trace]))

    def render(self) -> str:
        rate = self.sessions / self.seconds if self.seconds else 0.0
        lines = [
            f"sessions: {self.sessions}  steps: {self.steps}  ({self.steps / max(1, self.sessions):.1f} per session)",
            f"speed: {rate:.0f} sessions/s  trace size: {self.bytes_written / max(1, self.sessions) / 1024:.1f} KiB"
            " per session",
            "processes: " + ", ".join(f"{p} {n}" for p, n in sorted(self.by_process.items())),
            "outcomes: " + ", ".join(f"{o} {n}" for o, n in sorted(self.outcomes.items())),
            f"correct resolution (all-manual): {self.correct / max(1, self.sessions):.1%}",
            f"average handling time: {self.handling_time_s / max(1, self.sessions):.0f} s",
            "Bayes ceiling (exact next action) by action type: "
            + ", ".join(f"{r.group} {r.action:.3f}" for r in summarise(self.ceiling_samples)),
        ]
        return "\n".join(lines)


def iter_traces(
    sessions: int, seed: int, scenario: Scenario | None = None, start_index: int = 0, progress: bool = False
) -> list[Trace]:
    """Generate traces in memory (for tests and benchmarks that do not need a file)."""
    out: list[Trace] = []
    _run(sessions, seed, scenario or Scenario(), start_index, progress, out.append)
    return out


def _run(
    sessions: int, seed: int, scenario: Scenario, start_index: int, progress: bool, sink: Callable[[Trace], None]
) -> None:
    platform = SandboxPlatform(scenario, seed)
    pool = operator_pool(scenario.operators, seed, scenario.world)
    for index in progress_bar(
        range(start_index, start_index + sessions), desc="cases", unit="case", disable=not progress, leave=False
    ):
        rng = random.Random(f"{seed}:{index}:operator")
        case_id = platform.open_case(case_index=index)
        operator = pool[rng.randrange(len(pool))]
        trace = work_case(platform, case_id, operator, pool, rng)
        platform.forget(case_id)
        sink(trace)


def generate(
    sessions: int,
    seed: int,
    out: Path,
    scenario: Scenario | None = None,
    start_index: int = 0,
    progress: bool = True,
) -> GenerationSummary:
    """Write ``sessions`` traces to ``out`` (JSONL). Written to a temporary file and renamed at the end, so an
    interrupted run leaves no partial file. Deterministic for (seed, scenario, start_index)."""
    if sessions < 1:
        raise ValueError("sessions: must be at least 1")
    out.parent.mkdir(parents=True, exist_ok=True)
    summary = GenerationSummary()
    started = time.perf_counter()
    with atomic_file(out) as handle:

        def write(trace: Trace) -> None:
            line = trace.model_dump_json() + "\n"
            handle.write(line)
            summary.add(trace, len(line))

        _run(sessions, seed, scenario or Scenario(), start_index, progress, write)
    summary.seconds = time.perf_counter() - started
    return summary
