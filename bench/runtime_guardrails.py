"""The audited-acceptance guardrail's operating characteristics: false alarms on a good slice, time to demote a bad
one, for several ``min_audits`` settings, on the runtime's own ``AutonomyStages`` (no model, no sandbox).

A slice is promoted to autopilot, then fed a stream of audits (an audit is acceptable with probability ``p``),
each through ``AutonomyStages.record_audit`` exactly as the worker does; the guardrail demotes the slice when the
one-sided Clopper-Pearson bound on its acceptance falls below ``1 - alpha`` (``AutonomyConfig``: alpha 0.05,
delta 0.01, window 50). Per setting and ``--seeds`` random streams:

* false alarms: the share of runs of ``--audits`` audits at a steady acceptance above target (97%, 96%) that
  demote the slice at all;
* detection: audits until demotion after the acceptance drops from 97% (``--warmup`` audits) to 80%, and for a
  slice that fails outright from its first audit (10% acceptance); median and 95th percentile.

The claim it backs (``service/runtime/autonomy.py``): ``min_audits`` 5 demotes a slice failing outright at its 5th
audit instead of its 20th, with the same false-alarm rate as 10 or 20.

    .venv/bin/python -m bench.runtime_guardrails [--seeds 300] [--audits 2000] [--min-audits 5 10 20]

Writes ``bench/results/runtime_guardrails.{json,md}``.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from typing import Any

from tqdm import tqdm

from bench.common import environment, write_results
from schemas import ActionType, AutonomyStage, SliceKey
from schemas.progress import progress_bar
from service.runtime.autonomy import AutonomyConfig, AutonomyStages

NAME = "runtime_guardrails"
SLICE = SliceKey(process_id="bench", action_type=ActionType.FILL_FIELD)
STEADY = (0.97, 0.96)  # above the 95% target
DROP_FROM, DROP_TO, FAILING = 0.97, 0.80, 0.10


def _promoted(config: AutonomyConfig) -> AutonomyStages:
    stages = AutonomyStages(config)
    if stages.consider_promotion(SLICE, threshold=0.5, labels=10_000).stage != AutonomyStage.AUTOPILOT:
        raise RuntimeError("the bench slice was not promoted")
    return stages


def audits_until_demotion(stages: AutonomyStages, acceptance: float, limit: int, rng: random.Random) -> int | None:
    """Audits fed until the slice leaves autopilot (None: it stayed for ``limit`` audits)."""
    for n in range(1, limit + 1):
        stages.record_audit(SLICE, rng.random() < acceptance)
        if stages.stage(SLICE) != AutonomyStage.AUTOPILOT:
            return n
    return None


def _percentile(values: list[int], q: float) -> int:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _delays(delays: list[int | None]) -> dict[str, Any]:
    caught = [d for d in delays if d is not None]
    return {
        "runs": len(delays),
        "missed": len(delays) - len(caught),
        "median": statistics.median(caught) if caught else None,
        "p95": _percentile(caught, 0.95) if caught else None,
        "min": min(caught) if caught else None,
    }


def measure(min_audits: int, seeds: int, audits: int, warmup: int, bar: tqdm) -> dict[str, Any]:
    config = AutonomyConfig(min_audits=min_audits)
    false_alarms: dict[str, int] = {}
    for acceptance in STEADY:
        alarms = 0
        for seed in range(seeds):
            alarms += audits_until_demotion(_promoted(config), acceptance, audits, random.Random(seed)) is not None
            bar.update()
        false_alarms[f"{acceptance:.2f}"] = alarms
    drop: list[int | None] = []
    failing: list[int | None] = []
    for seed in range(seeds):
        rng = random.Random(10_000 + seed)
        stages = _promoted(config)
        if audits_until_demotion(stages, DROP_FROM, warmup, rng) is None:  # a false alarm here ends the run
            drop.append(audits_until_demotion(stages, DROP_TO, audits, rng))
        failing.append(audits_until_demotion(_promoted(config), FAILING, audits, random.Random(20_000 + seed)))
        bar.update()
    return {
        "min_audits": min_audits,
        "false_alarm_share": {key: count / seeds for key, count in false_alarms.items()},
        "false_alarms": false_alarms,
        "after_drop": _delays(drop),
        "failing_outright": _delays(failing),
    }


def render(result: dict[str, Any]) -> str:
    config = result["config"]
    lines = [
        "# Audited-acceptance guardrail: false alarms and time to demote",
        "",
        f"`AutonomyStages.record_audit` on one slice, {result['seeds']} random streams per cell; target acceptance "
        f"{1 - config['alpha']:.0%} (alpha {config['alpha']}), delta {config['delta']}, window "
        f"{config['audit_window']} audits. False alarms: runs of {result['audits']} audits at a steady acceptance "
        f"that demote the slice at all. Drop: {result['warmup']} audits at {DROP_FROM:.0%}, then {DROP_TO:.0%}; "
        f"failing outright: {FAILING:.0%} from the first audit. {result['seconds']:.0f} s.",
        "",
        "| min_audits | false alarms at 97% | at 96% | audits to demote after the drop (median / p95) "
        "| failing outright (median / p95, first) |",
        "|---:|---:|---:|---:|---:|",
    ]
    for row in result["settings"]:
        share = row["false_alarm_share"]
        drop, failing = row["after_drop"], row["failing_outright"]
        missed = f" ({drop['missed']} never demoted)" if drop["missed"] else ""
        lines.append(
            f"| {row['min_audits']} | {share['0.97']:.1%} | {share['0.96']:.1%} | {drop['median']:g} / "
            f"{drop['p95']}{missed} | {failing['median']:g} / {failing['p95']}, {failing['min']} |"
        )
    lines += [
        "",
        "The test is repeated after every audit, so a run's false-alarm rate is larger than delta per test, and "
        "larger the closer the slice sits to the target. A smaller `min_audits` lets the bound act as soon as it "
        "can: it only matters for a slice that fails badly from the start, since a good slice's bound stays above "
        "target for a few audits anyway.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--seeds", type=int, default=300)
    parser.add_argument("--audits", type=int, default=2000)
    parser.add_argument("--warmup", type=int, default=300, help="audits at 97%% before the drop")
    parser.add_argument("--min-audits", type=int, nargs="+", default=[5, 10, 20])
    args = parser.parse_args(argv)
    for name in ("seeds", "audits", "warmup"):
        if getattr(args, name) < 1:
            parser.error(f"--{name}: must be >= 1")
    if any(m < 1 or m > AutonomyConfig().audit_window for m in args.min_audits):
        parser.error(f"--min-audits: each must be in 1..{AutonomyConfig().audit_window}")
    started = time.perf_counter()
    total = len(args.min_audits) * args.seeds * (len(STEADY) + 1)
    with progress_bar(total=total, desc="runs", file=sys.stderr, mininterval=2.0) as bar:
        settings = [measure(m, args.seeds, args.audits, args.warmup, bar) for m in args.min_audits]
    result = {
        "config": AutonomyConfig().to_dict(),
        "seeds": args.seeds,
        "audits": args.audits,
        "warmup": args.warmup,
        "settings": settings,
        "seconds": round(time.perf_counter() - started, 1),
        "environment": environment(),
    }
    markdown = render(result)
    write_results(NAME, result, markdown)
    print(markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
