"""The training procedure (splits, calibration, thresholds, comparison) and the nightly retraining job with a real
registry: promotion, keeping the champion, and its failure modes (registry left untouched)."""

from __future__ import annotations

import itertools
import json
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest

from critic.base import labelled, labels
from critic.feedback import SYNTHETIC_EPOCH, write_feedback
from critic.pipeline import (
    BASELINE_NAME,
    PipelineConfig,
    check_thresholds,
    clopper_pearson_lower,
    split_by_time,
    train_critic,
)
from critic.registry import CriticRegistry
from critic.retrain import RetrainConfig, provenance, retrain
from critic.store import FeedbackStore
from critic.thresholds import SliceThresholds, ThresholdConfig, ThresholdResult
from schemas import FeedbackRecord
from schemas.actions import ActionType
from schemas.feedback import FeedbackSource
from schemas.risk import SliceKey
from service.cli import main
from tests.critic.conftest import synthetic_feedback

SMALL = ThresholdConfig(min_rows=40, min_executed=20, max_candidates=20)


@pytest.fixture(scope="module")
def records() -> list[FeedbackRecord]:
    # Times one minute apart in a known order, so the splits can be checked.
    rows = synthetic_feedback(150, 5)
    return [r.model_copy(update={"created_at": SYNTHETIC_EPOCH + timedelta(minutes=i)}) for i, r in enumerate(rows)]


def test_splits_are_consecutive_in_time_and_disjoint(records: list[FeedbackRecord]) -> None:
    splits = split_by_time(records[::-1], (0.5, 0.15, 0.2, 0.15))
    parts = [splits.fit, splits.calibrate, splits.threshold, splits.test]
    assert sum(len(p) for p in parts) == len(records)
    for earlier, later in itertools.pairwise(parts):
        assert max(r.created_at for r in earlier) < min(r.created_at for r in later)
    assert splits.sizes()["fit"] == round(0.5 * len(records))


def test_training_gives_a_calibrated_critic_that_beats_confidence(
    records: list[FeedbackRecord], tmp_path: Path
) -> None:
    # The paper's label: the made-up confidence follows the sandbox's truth, which under the default label is
    # almost the label itself; against the accept label the critic has something to add.
    config = PipelineConfig(label="accepted", thresholds=SMALL, progress=False)
    trained = train_critic(records, config, plots_dir=tmp_path)
    names = [e.name for e in trained.comparison.evaluations]
    assert names == [BASELINE_NAME, trained.critic.name]
    assert trained.critic.name.startswith("feature+")
    critic = trained.comparison.by_name(trained.critic.name)
    baseline = trained.comparison.by_name(BASELINE_NAME)
    # The feature critic sees the policy confidence and the state: it ranks at least as well as confidence alone.
    assert critic.aurc <= baseline.aurc + 0.01
    assert critic.oracle_aurc <= critic.aurc
    assert (tmp_path / "reliability.png").stat().st_size > 0
    assert (tmp_path / "risk_coverage.png").stat().st_size > 0
    probs = trained.critic.predict_proba(trained.splits.test)
    assert probs.shape == (len(trained.splits.test), 2)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0)
    # Every slice in the threshold split is reported, with or without a threshold, with a reason.
    assert all(r.reason for r in trained.thresholds.values())
    metrics = trained.metrics()
    assert 0.0 <= metrics["threshold_coverage"] <= 1.0


def test_bad_windows_are_refused_before_anything_is_trained(records: list[FeedbackRecord]) -> None:
    with pytest.raises(ValueError, match="rows in the window"):
        train_critic(records[:50], PipelineConfig(progress=False))
    accepted = [r for r in records if labels([r])[0] == 1]
    with pytest.raises(ValueError, match="both labels"):
        train_critic(accepted, PipelineConfig(progress=False))
    with pytest.raises(ValueError, match="fractions"):
        PipelineConfig(fractions=(0.5, 0.5, 0.0, 0.0))
    with pytest.raises(ValueError, match="policy_dir"):
        PipelineConfig(kind="generative")


def test_hold_check_fails_only_when_fresh_error_is_significantly_above_alpha() -> None:
    key = SliceKey(process_id="p", action_type=ActionType.CLICK_CONTROL)
    config = ThresholdConfig(alpha=0.05, delta=0.1, min_rows=10, min_executed=5)
    result = ThresholdResult(0.5, 100, 80, 2, 0.025, 0.05, 0.8, "ok")
    thresholds = SliceThresholds(config, {str(key): result})
    scores = np.full(200, 0.9)
    slices = [key] * 200
    good = np.array([1] * 192 + [0] * 8)  # 4% error: under alpha
    bad = np.array([1] * 170 + [0] * 30)  # 15% error: far above
    assert check_thresholds(thresholds, scores, good, slices).holds
    check = check_thresholds(thresholds, scores, bad, slices)
    assert not check.holds
    assert check.realised_error == pytest.approx(0.15)
    lower = check.groups[str(key)].lower_bound
    assert lower is not None and lower > 0.05
    # Rows under the threshold are not executed and cannot break it.
    low = np.full(200, 0.1)
    assert check_thresholds(thresholds, low, bad, slices).executed == 0
    assert clopper_pearson_lower(0, 10, 0.1) == 0.0
    assert 0.0 < clopper_pearson_lower(5, 10, 0.1) < 0.5


def test_retrain_registers_promotes_and_keeps_a_champion_that_is_not_beaten(
    records: list[FeedbackRecord], tmp_path: Path
) -> None:
    source = write_feedback(records, tmp_path / "feedback.jsonl")
    registry_dir = tmp_path / "registry"
    config = RetrainConfig(pipeline=PipelineConfig(thresholds=SMALL, progress=False), window_days=None)
    first = retrain(str(source), registry_dir, config)
    registry = CriticRegistry(registry_dir)
    assert first.promoted, first.reason  # no champion yet
    assert registry.champion() == first.version
    assert first.report.is_file() and "Thresholds" in first.report.read_text()
    # Where the rows came from (issue 17): the source and the rows per FeedbackSource, in the outcome and report.
    assert first.provenance["source"] == str(source) and first.provenance["rows"] == len(records)
    assert sum(first.provenance["by_source"].values()) == len(records)
    assert f"rows came from: {source}" in first.report.read_text()
    assert (first.report.parent / "risk_coverage.png").is_file()
    manifest = registry.manifest(first.version)
    # Environment rejections carry no label under the default rule and are left out.
    assert manifest.rows.train + manifest.rows.calibration + manifest.rows.test == len(labelled(records))
    assert registry.thresholds(first.version) is not None

    # The same data again: the challenger ties the champion on the same fresh rows and is not promoted.
    second = retrain(str(source), registry_dir, config)
    assert not second.promoted
    assert second.champion_metrics is not None
    assert registry.champion() == first.version
    assert [e.kind for e in registry.events()] == ["register", "promote", "register", "reject"]


def test_retrain_failures_leave_the_registry_untouched(records: list[FeedbackRecord], tmp_path: Path) -> None:
    registry_dir = tmp_path / "registry"
    config = RetrainConfig(pipeline=PipelineConfig(thresholds=SMALL, progress=False), window_days=None)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    bad = tmp_path / "bad.jsonl"
    bad.write_text(records[0].model_dump_json() + "\n" + '{"record_id": "x"}\n')
    few = write_feedback(records[:30], tmp_path / "few.jsonl")
    for source, message in [
        (empty, "no feedback rows"),
        (bad, "bad.jsonl:2"),
        (few, "rows in the window"),
        (tmp_path / "missing.jsonl", "missing.jsonl"),
    ]:
        with pytest.raises(ValueError, match=message):
            retrain(str(source), registry_dir, config)
    assert not registry_dir.exists() or CriticRegistry(registry_dir).versions() == []


def test_cli_train_evaluate_retrain_and_rollback(records: list[FeedbackRecord], tmp_path: Path) -> None:
    from service.cli import main

    source = write_feedback(records, tmp_path / "feedback.jsonl")
    common = ["--min-rows", "40", "--min-executed", "20", "--window-days", "all"]
    out = tmp_path / "trained"
    assert main(["critic", "train", "--feedback", str(source), "--out", str(out), *common]) == 0
    assert (out / "critic" / "critic.json").is_file()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["critic"].startswith("feature+")
    assert main(["critic", "evaluate", "--feedback", str(source), "--critic", str(out / "critic"),
                 "--out", str(tmp_path / "eval")]) == 0  # fmt: skip
    evaluation = json.loads((tmp_path / "eval" / "evaluation.json").read_text())
    assert "thresholds_hold" in evaluation

    registry = tmp_path / "registry"
    for _ in range(2):
        assert main(["critic", "retrain", "--feedback", str(source), "--registry", str(registry), *common]) == 0
    versions = CriticRegistry(registry).versions()
    assert len(versions) == 2
    assert main(["critic", "promote", "--registry", str(registry), "--version", versions[1].version,
                 "--reason", "manual"]) == 0  # fmt: skip
    assert main(["critic", "rollback", "--registry", str(registry), "--reason", "test"]) == 0
    assert CriticRegistry(registry).champion() == versions[0].version
    # Nothing to roll back to any more: a clear error, non-zero exit.
    assert main(["critic", "rollback", "--registry", str(registry), "--reason", "again"]) != 0
    assert main(["critic", "retrain", "--feedback", str(tmp_path / "nope.jsonl"), "--registry", str(registry)]) == 2
    assert len(CriticRegistry(registry).versions()) == 2


def test_generative_kind_runs_through_the_same_pipeline_and_reloads(
    records: list[FeedbackRecord], tiny_policy: tuple[object, Path], tmp_path: Path
) -> None:
    from critic.persist import load_critic

    _, policy_dir = tiny_policy
    config = PipelineConfig(
        kind="generative", policy_dir=str(policy_dir), generative_epochs=1, time_budget_s=15, thresholds=SMALL,
        progress=False,
    )  # fmt: skip
    trained = train_critic(records, config)
    assert trained.critic.name.startswith("generative+")
    path = trained.critic.save(tmp_path / "critic")
    again = load_critic(path)
    np.testing.assert_allclose(
        again.predict_proba(trained.splits.test), trained.critic.predict_proba(trained.splits.test), atol=1e-6
    )


def test_imported_rows_are_marked_and_reported_as_imports(records: list[FeedbackRecord], tmp_path: Path) -> None:
    source = write_feedback(records[:20], tmp_path / "elsewhere.jsonl")
    url = f"sqlite:///{tmp_path / 'feedback.db'}"
    assert main(["critic", "import-feedback", str(source), "--feedback", url]) == 0
    with FeedbackStore(url) as store:
        stored = store.read()
    assert len(stored) == 20
    assert {r.source for r in stored} == {FeedbackSource.IMPORT}
    assert all(r.record_id.startswith("import-") for r in stored)
    assert provenance(url, stored)["by_source"] == {"import": 20}
