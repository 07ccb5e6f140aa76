"""How long the nightly retraining takes: the feature critic on 100,000 feedback rows (target <= 60 s on this
machine), and the generative critic's training and scoring rates.

The 100,000 rows are drawn with replacement from the sandbox copilot feedback that ``bench.critic_sandbox``
collected (about 36,000 distinct rows; re-drawn rows get new ids and consecutive timestamps). Duplicates make
the learning problem no harder or easier for timing purposes; the accuracy figures live in critic_sandbox.

Three timings for the feature critic, each a median of ``--repeats`` runs:
- fit: featurise + gradient boosting on the fit split alone;
- pipeline: fit + calibration + per-slice thresholds + the evaluation of the test split (what the job computes);
- job: ``autopilot critic retrain`` end to end from a JSONL file into a registry (reading and validating every
  row, training, registering, writing the report and plots).

    .venv/bin/python -m bench.critic_retrain_speed [--rows 100000] [--repeats 3]

Writes ``bench/results/critic_retrain_speed.{json,md}``.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
from threadpoolctl import threadpool_limits

from bench.common import ROOT, environment, peak_rss_kib, write_results
from bench.critic_sandbox import trained_policy_feedback
from critic.base import labels
from critic.feature_critic import FeatureCritic
from critic.feedback import SYNTHETIC_EPOCH, read_feedback, write_feedback
from critic.pipeline import PipelineConfig, split_by_time, train_critic
from critic.retrain import RetrainConfig, retrain
from schemas.feedback import FeedbackRecord

NAME = "critic_retrain_speed"
POLICY_DIR = ROOT / "out" / "bench" / "policy_default"
TARGET_S = 60.0


def resample(records: list[FeedbackRecord], rows: int, seed: int) -> list[FeedbackRecord]:
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(records), size=rows)
    return [
        records[int(i)].model_copy(
            update={"record_id": f"r{k:07d}", "created_at": SYNTHETIC_EPOCH + timedelta(seconds=k)}
        )
        for k, i in enumerate(picks)
    ]


def timed(fn: Any, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        out.append(time.perf_counter() - started)
    return out


def generative_rates(records: list[FeedbackRecord], budget: float) -> dict[str, Any]:
    """Train for ``budget`` seconds on up to 4,000 rows and score 1,000: rows per second both ways."""
    import torch

    from critic.generative import GenerativeCritic

    torch.set_num_threads(1)
    sample = records[:4000]
    critic = GenerativeCritic(policy_dir=str(POLICY_DIR), epochs=1, time_budget_s=budget, progress=True)
    started = time.perf_counter()
    critic.fit(sample, labels(sample))
    fit_s = time.perf_counter() - started
    history = critic.history_
    assert history is not None
    trained_rows = history.steps * critic.batch_size
    started = time.perf_counter()
    critic.predict_proba(records[:1000])
    score_s = time.perf_counter() - started
    return {
        "budget_s": budget,
        "fit_seconds": fit_s,
        "steps": history.steps,
        "training_rows_per_s": trained_rows / history.seconds if history.seconds else None,
        "scoring_rows_per_s": 1000 / score_s,
        "epoch_of_100k_rows_estimate_s": 100_000 / (trained_rows / history.seconds) if trained_rows else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--generative-budget", type=float, default=120.0, help="seconds; 0 skips it")
    args = parser.parse_args()

    feedback = trained_policy_feedback()
    if feedback is None or not feedback.exists():
        raise SystemExit(f"{feedback} is missing: run `python -m bench.critic_sandbox` first")
    base = read_feedback(feedback)
    records = resample(base, args.rows, seed=0)
    config = PipelineConfig(kind="feature", progress=False)
    splits = split_by_time(records, config.fractions)
    y_fit = labels(splits.fit)

    # One thread for the gradient boosting too: the machine has two cores and the job shares it in production.
    with threadpool_limits(limits=1):
        fit = timed(lambda: FeatureCritic().fit(splits.fit, y_fit), args.repeats)
        pipeline = timed(lambda: train_critic(records, config), args.repeats)
        with tempfile.TemporaryDirectory() as tmp:
            source = write_feedback(records, Path(tmp) / "feedback.jsonl")
            size_mib = source.stat().st_size / 2**20
            job = timed(
                lambda: retrain(str(source), Path(tmp) / "registry", RetrainConfig(pipeline=config, window_days=None)),
                args.repeats,
            )
    generative = generative_rates(base, args.generative_budget) if args.generative_budget > 0 else None
    result = {
        "environment": environment(),
        "rows": len(records),
        "distinct_source_rows": len(base),
        "fit_rows": len(splits.fit),
        "jsonl_mib": size_mib,
        "feature_fit_s": fit,
        "feature_pipeline_s": pipeline,
        "retrain_job_s": job,
        "median": {
            "fit": statistics.median(fit),
            "pipeline": statistics.median(pipeline),
            "job": statistics.median(job),
        },
        "target_s": TARGET_S,
        "generative": generative,
        "peak_rss_mib": peak_rss_kib() / 1024,
    }
    md = render(result)
    write_results(NAME, result, md)
    print(md)


def render(r: dict[str, Any]) -> str:
    m = r["median"]

    def verdict(seconds: float) -> str:
        return "met" if seconds <= TARGET_S else "**missed**"

    lines = [
        "# Critic retraining speed",
        "",
        f"{r['rows']:,} feedback rows (re-drawn from {r['distinct_source_rows']:,} sandbox rows; "
        f"{r['fit_rows']:,} in the fit split; JSONL {r['jsonl_mib']:.0f} MiB), one thread, medians of "
        f"{len(r['feature_fit_s'])} runs. Load average at the end: {r['environment']['load_average']}.",
        "",
        "| feature critic | median | target | |",
        "|---|---:|---:|---|",
        f"| fit (featurise + boosting, fit split) | {m['fit']:.1f} s | | |",
        f"| pipeline (fit, calibrate, thresholds, evaluate) | {m['pipeline']:.1f} s | {TARGET_S:.0f} s | "
        f"{verdict(m['pipeline'])} |",
        f"| nightly job end to end (read JSONL, pipeline, register, report) | {m['job']:.1f} s | | "
        f"{'within target' if m['job'] <= TARGET_S else 'over the target'} |",
        "",
    ]
    g = r["generative"]
    if g:
        lines += [
            "| generative critic (CPU, one thread) | value |",
            "|---|---:|",
            f"| training rows/s | {g['training_rows_per_s']:.1f} |",
            f"| scoring rows/s | {g['scoring_rows_per_s']:.1f} |",
            f"| one epoch over 100,000 rows (estimate) | {g['epoch_of_100k_rows_estimate_s'] / 60:.0f} min |",
            "",
        ]
    lines.append(f"Peak RSS {r['peak_rss_mib']:.0f} MiB.")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
