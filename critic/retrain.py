"""The nightly retraining job: read the rolling window of feedback, retrain, recalibrate, re-threshold, evaluate
against the champion on the same fresh rows, register the challenger, promote it or keep the champion, and write
a report (markdown + plots).

Failure modes are loud and harmless: unreadable, empty or one-label feedback raises before anything is written, so
the registry is untouched; a registry problem (corrupt champion, lock) raises ``RegistryError``. A challenger that
is merely not better is not a failure: it is registered, logged as rejected, and the job succeeds.
"""

from __future__ import annotations

import json
import tempfile
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from critic.base import accept_scores, labels
from critic.evaluate import evaluate_scores
from critic.feedback import load_feedback_source, time_window
from critic.persist import load_critic
from critic.pipeline import PipelineConfig, TrainedCritic, summary, train_critic
from critic.registry import (
    CriticRegistry,
    Manifest,
    PromotionDecision,
    RowCounts,
    data_hash,
    decide_promotion,
    new_version,
)
from schemas.feedback import FeedbackRecord

PROMOTION_METRIC = "aurc"  # lower is better: the area under the risk-coverage curve on the fresh rows


@dataclass
class RetrainConfig:
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    window_days: float | None = 28.0  # None: every row the source holds
    min_gain: float = 0.0  # how much lower the challenger's AURC must be than the champion's
    policy_version: str = "unknown"


@dataclass
class RetrainOutcome:
    version: str
    promoted: bool
    reason: str
    champion: str | None  # the champion after the job
    report: Path
    metrics: dict[str, float]
    champion_metrics: dict[str, float] | None
    provenance: dict[str, Any] = field(default_factory=dict)


def provenance(source: str, records: Sequence[FeedbackRecord]) -> dict[str, Any]:
    """Where the rows came from: the source (a database URL without its password, or a path), and the rows per
    ``FeedbackSource`` (copilot, deferral, audit: observed by the service; import: loaded from elsewhere)."""
    shown = source
    if "://" in source:
        from sqlalchemy.engine import make_url

        shown = make_url(source).render_as_string(hide_password=True)
    counts = Counter(record.source.value for record in records)
    return {"source": shown, "rows": len(records), "by_source": {k: counts[k] for k in sorted(counts)}}


def _champion_metrics(registry: CriticRegistry, trained: TrainedCritic) -> dict[str, float] | None:
    """The champion as it stands, scored on the challenger's fresh test rows (the same rows, so comparable)."""
    version = registry.champion()
    if version is None:
        return None
    champion = load_critic(registry.artifact_path(version))
    scores = accept_scores(champion, trained.splits.test)
    e = evaluate_scores(version, scores, trained.test_labels, trained.test_slices)
    return {"aurc": e.aurc, "ece": e.ece, "brier": e.brier, "auc": e.auc if e.auc is not None else float("nan")}


def retrain(
    source: str,
    registry_dir: str | Path,
    config: RetrainConfig | None = None,
    *,
    now: datetime | None = None,
    report_dir: str | Path | None = None,
) -> RetrainOutcome:
    config = config or RetrainConfig()
    records = time_window(load_feedback_source(source), config.window_days, now)
    origin = provenance(source, records)
    registry = CriticRegistry(registry_dir)
    registry.champion()  # a corrupt champion file fails here, before any work
    version = new_version()
    with tempfile.TemporaryDirectory(prefix="critic-retrain-") as tmp:
        plots = Path(tmp) / "plots"
        trained = train_critic(records, config.pipeline, plots_dir=plots)
        sizes = trained.splits.sizes()
        challenger_metrics = trained.metrics()
        champion_before = registry.champion()
        champion_metrics = _champion_metrics(registry, trained)
        decision = decide_promotion(
            champion_metrics,
            challenger_metrics,
            thresholds_hold=trained.hold.holds,
            min_gain=config.min_gain,
            metric=PROMOTION_METRIC,
            lower_is_better=True,
        )
        artifact = trained.critic.save(Path(tmp) / "artifact")
        fit_rows = trained.splits.fit
        manifest = Manifest(
            version=version,
            kind=trained.critic.name,
            window_start=trained.window[0],
            window_end=trained.window[1],
            rows=RowCounts(
                train=sizes["fit"],
                calibration=sizes["calibrate"] + sizes["threshold"],
                test=sizes["test"],
            ),
            data_hash=data_hash([r.record_id for r in fit_rows], [int(v) for v in labels(fit_rows, trained.label)]),
            metrics={k: v for k, v in challenger_metrics.items() if np.isfinite(v)},
            thresholds={k: r.threshold for k, r in trained.thresholds.items()},
            policy_version=config.policy_version,
            alpha=config.pipeline.thresholds.alpha,
            delta=config.pipeline.thresholds.delta,
            notes=decision.reason,
        )
        registry.register(artifact, manifest, trained.thresholds.to_dict())
        if decision.promote:
            registry.promote(version, decision.reason)
        else:
            registry.record_rejection(version, decision.reason)
        out = Path(report_dir) if report_dir is not None else Path(registry_dir) / "reports" / version
        report = write_report(out, version, trained, decision, champion_before, champion_metrics, plots, origin)
    return RetrainOutcome(
        version=version,
        promoted=decision.promote,
        reason=decision.reason,
        champion=registry.champion(),
        report=report,
        metrics=challenger_metrics,
        champion_metrics=champion_metrics,
        provenance=origin,
    )


def write_report(
    out: Path,
    version: str,
    trained: TrainedCritic,
    decision: PromotionDecision,
    champion: str | None,
    champion_metrics: dict[str, float] | None,
    plots: Path,
    origin: dict[str, Any] | None = None,
) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    for png in sorted(plots.glob("*.png")):
        (out / png.name).write_bytes(png.read_bytes())
    m = trained.metrics()
    lines = [
        f"# Critic retraining: {version}",
        "",
        f"- window: {trained.window[0].isoformat()} .. {trained.window[1].isoformat()}",
        f"- rows: {trained.splits.sizes()}",
        f"- rows came from: {_origin_line(origin)}",
        f"- critic: {trained.critic.name} (fitted and calibrated in {trained.fit_seconds:.1f} s)",
        f"- decision: **{'promoted' if decision.promote else 'kept the champion'}**: {decision.reason}",
        f"- champion before: {champion or 'none'}"
        + (f" (AURC {champion_metrics['aurc']:.4f} on the same fresh rows)" if champion_metrics else ""),
        f"- challenger AURC {m['aurc']:.4f} (oracle {m['oracle_aurc']:.4f}), ECE {m['ece']:.4f}",
        f"- thresholds hold on the fresh rows: {trained.hold.holds} (realised error among executed rows: "
        + (f"{trained.hold.realised_error:.4f}" if trained.hold.realised_error is not None else "none executed")
        + f", coverage {trained.hold.coverage:.1%})",
        "",
        "## Against the policy's own confidence (fresh rows)",
        "",
        trained.comparison.render_markdown(),
        "",
        "## Thresholds",
        "",
        trained.thresholds.render_markdown(),
        "",
        "![reliability](reliability.png) ![risk-coverage](risk_coverage.png)",
        "",
    ]
    (out / "report.md").write_text("\n".join(lines))
    (out / "report.json").write_text(
        json.dumps({"version": version, "promoted": decision.promote, "reason": decision.reason,
                    "provenance": origin or {}, **summary(trained)}, indent=1, default=str)
    )  # fmt: skip
    return out / "report.md"


def _origin_line(origin: dict[str, Any] | None) -> str:
    if not origin:
        return "unknown"
    parts = ", ".join(f"{count} {name}" for name, count in origin["by_source"].items())
    return f"{origin['source']}: {origin['rows']} rows in the window ({parts})"
