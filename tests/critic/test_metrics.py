"""Critic metrics on small hand-computed examples, their limiting cases, speed, and the plots that draw them."""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import pytest

from critic.metrics import (
    aurc,
    brier,
    coverage_at_risk,
    excess_aurc,
    expected_calibration_error,
    log_loss,
    operating_point,
    oracle_aurc,
    oracle_coverage,
    precision_at_recall,
    reliability_table,
    risk_coverage,
    threshold_at_recall,
)
from critic.plots import plot_reliability, plot_risk_coverage, plot_time_to_autonomy

# Five rows, ranked: accept, accept, error, accept, error.
S = np.array([0.9, 0.8, 0.7, 0.6, 0.5])
Y = np.array([1, 1, 0, 1, 0])


def test_operating_point_counts_the_positive_class() -> None:
    op = operating_point(S, Y, 0.7)
    assert op.precision == pytest.approx(2 / 3)
    assert op.recall == pytest.approx(2 / 3)
    assert op.f1 == pytest.approx(2 / 3)
    assert op.coverage == pytest.approx(0.6)
    assert op.positive_rate == pytest.approx(0.6)
    op = operating_point(S, Y, 0.85)
    assert (op.precision, op.recall, op.coverage) == pytest.approx((1.0, 1 / 3, 0.2))
    assert op.f1 == pytest.approx(2 * (1 / 3) / (4 / 3))


def test_operating_point_executing_nothing_has_zero_precision() -> None:
    op = operating_point(S, Y, 2.0)
    assert (op.precision, op.recall, op.f1, op.coverage) == (0.0, 0.0, 0.0, 0.0)


def test_threshold_at_recall_is_the_highest_that_reaches_it() -> None:
    assert threshold_at_recall(S, Y, 1.0) == 0.6
    assert threshold_at_recall(S, Y, 0.5) == 0.8  # 1.5 of 3 positives -> needs 2
    assert threshold_at_recall(S, Y, 1 / 3) == 0.9
    op = precision_at_recall(S, Y, 1.0)
    assert (op.threshold, op.precision, op.recall, op.coverage) == pytest.approx((0.6, 0.75, 1.0, 0.8))


def test_risk_coverage_and_aurc_by_hand() -> None:
    coverage, risk = risk_coverage(S, Y)
    np.testing.assert_allclose(coverage, [0.2, 0.4, 0.6, 0.8, 1.0])
    np.testing.assert_allclose(risk, [0, 0, 1 / 3, 1 / 4, 2 / 5])
    assert aurc(S, Y) == pytest.approx((1 / 3 + 1 / 4 + 2 / 5) / 5)
    assert oracle_aurc(Y) == pytest.approx((1 / 4 + 2 / 5) / 5)  # accepts first: errors at k = 4, 5
    assert excess_aurc(S, Y) == pytest.approx(1 / 15)


def test_ties_spread_their_errors_evenly() -> None:
    scores = [0.9, 0.9, 0.5, 0.5]
    y = [1, 0, 1, 1]
    _, risk = risk_coverage(scores, y)
    np.testing.assert_allclose(risk, [0.5, 0.5, 1 / 3, 1 / 4])
    assert aurc(scores, y) == pytest.approx((0.5 + 0.5 + 1 / 3 + 1 / 4) / 4)
    # A threshold cannot split a tie group: coverage 0.25 at risk 0 is not reachable.
    assert coverage_at_risk(scores, y, 0.3) == 1.0
    assert coverage_at_risk(scores, y, 0.2) == 0.0
    # Row order must not matter.
    assert aurc([0.5, 0.9, 0.5, 0.9], [1, 0, 1, 1]) == pytest.approx(aurc(scores, y))


def test_coverage_at_risk_and_oracle_coverage_by_hand() -> None:
    assert coverage_at_risk(S, Y, 0.0) == pytest.approx(0.4)
    assert coverage_at_risk(S, Y, 0.25) == pytest.approx(0.8)  # k = 4: 1 error in 4
    assert coverage_at_risk(S, Y, 0.4) == pytest.approx(1.0)
    assert oracle_coverage(Y) == pytest.approx(0.6)
    assert oracle_coverage(Y, alpha=0.25) == pytest.approx(0.8)  # 3 accepts + 1 error
    perfect = Y + np.linspace(0.5, 0.1, 5)  # accepts first, no ties
    assert oracle_coverage(Y, alpha=0.25) == coverage_at_risk(perfect, Y, 0.25)


def test_perfect_ranking_reaches_the_oracle() -> None:
    rng = np.random.default_rng(0)
    y = (rng.random(500) < 0.7).astype(int)
    scores = y + rng.random(500) * 0.5  # every accept above every error, no ties
    assert aurc(scores, y) == pytest.approx(oracle_aurc(y))
    assert aurc(y.astype(float), y) == pytest.approx(oracle_aurc(y))  # binary scores: ties inside each class
    assert excess_aurc(scores, y) == pytest.approx(0.0, abs=1e-12)
    assert coverage_at_risk(scores, y, 0.0) == pytest.approx(oracle_coverage(y))
    reversed_scores = -scores
    assert aurc(reversed_scores, y) > 2 * aurc(scores, y)


def test_random_ranking_has_the_base_error_rate() -> None:
    rng = np.random.default_rng(1)
    y = (rng.random(20_000) < 0.8).astype(int)
    assert aurc(rng.random(20_000), y) == pytest.approx(1 - y.mean(), abs=0.01)


def test_constant_scores() -> None:
    y = np.array([1, 0, 1, 1, 1, 0, 1, 1])
    scores = np.full(8, 0.7)
    _, risk = risk_coverage(scores, y)
    np.testing.assert_allclose(risk, 0.25)
    assert aurc(scores, y) == pytest.approx(0.25)
    assert coverage_at_risk(scores, y, 0.25) == 1.0
    assert coverage_at_risk(scores, y, 0.2) == 0.0
    assert threshold_at_recall(scores, y, 0.5) == 0.7
    assert operating_point(scores, y, 0.7).precision == pytest.approx(0.75)


def test_calibration_metrics_by_hand() -> None:
    probs = [0.1, 0.2, 0.8, 0.9]
    y = [0, 1, 1, 1]
    # Two bins: mean 0.15 vs observed 0.5, mean 0.85 vs observed 1.0, two rows each.
    assert expected_calibration_error(probs, y, bins=2) == pytest.approx((0.35 * 2 + 0.15 * 2) / 4)
    table = reliability_table(probs, y, bins=2)
    np.testing.assert_allclose(table.mean_prediction, [0.15, 0.85])
    np.testing.assert_allclose(table.observed_rate, [0.5, 1.0])
    np.testing.assert_array_equal(table.count, [2, 2])
    np.testing.assert_allclose(table.lower, [0.0, 0.5])
    assert brier(probs, y) == pytest.approx((0.01 + 0.64 + 0.04 + 0.01) / 4)
    assert log_loss(probs, y) == pytest.approx(-(math.log(0.9) + math.log(0.2) + math.log(0.8) + math.log(0.9)) / 4)


def test_reliability_table_keeps_only_filled_bins_and_puts_one_in_the_last() -> None:
    table = reliability_table([0.0, 1.0, 1.0], [0, 1, 1], bins=10)
    np.testing.assert_allclose(table.lower, [0.0, 0.9])
    np.testing.assert_array_equal(table.count, [1, 2])
    assert expected_calibration_error([0.0, 1.0, 1.0], [0, 1, 1]) == 0.0


def test_log_loss_of_a_confident_miss_is_finite() -> None:
    assert math.isfinite(log_loss([0.0, 1.0], [1, 0]))
    assert log_loss([0.0, 1.0], [1, 0]) > 30


@pytest.mark.parametrize(
    "call",
    [
        lambda: aurc([], []),
        lambda: oracle_aurc([]),
        lambda: risk_coverage([], []),
        lambda: coverage_at_risk([], [], 0.1),
        lambda: oracle_coverage([]),
        lambda: operating_point([], [], 0.5),
        lambda: threshold_at_recall([], [], 0.5),
        lambda: expected_calibration_error([], []),
        lambda: reliability_table([], []),
        lambda: brier([], []),
        lambda: log_loss([], []),
    ],
)
def test_empty_input_is_refused(call: object) -> None:
    with pytest.raises(ValueError, match="empty"):
        call()  # type: ignore[operator]


def test_bad_input_names_the_argument() -> None:
    with pytest.raises(ValueError, match="y has 2 rows"):
        aurc([0.1, 0.2, 0.3], [1, 0])
    with pytest.raises(ValueError, match="0 and 1"):
        aurc([0.1, 0.2], [1, 2])
    with pytest.raises(ValueError, match="probs must lie in"):
        brier([0.5, 1.2], [1, 0])
    with pytest.raises(ValueError, match="scores must be finite"):
        aurc([0.5, float("nan")], [1, 0])
    with pytest.raises(ValueError, match="recall"):
        threshold_at_recall(S, Y, 0.0)
    with pytest.raises(ValueError, match="no acceptable row"):
        threshold_at_recall(S, np.zeros(5, dtype=int), 0.5)
    with pytest.raises(ValueError, match="alpha"):
        coverage_at_risk(S, Y, 1.5)


def test_hundred_thousand_rows_take_well_under_a_second() -> None:
    rng = np.random.default_rng(2)
    scores = rng.random(100_000)
    y = (rng.random(100_000) < scores).astype(int)
    start = time.perf_counter()
    aurc(scores, y)
    excess_aurc(scores, y)
    coverage_at_risk(scores, y, 0.05)
    precision_at_recall(scores, y, 0.8)
    expected_calibration_error(scores, y)
    brier(scores, y)
    log_loss(scores, y)
    assert time.perf_counter() - start < 1.0


def test_plots_write_png_files(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    probs = rng.random(300)
    y = (rng.random(300) < probs).astype(int)
    curves = {"calibrated": (probs, y), "flat": (np.full(300, 0.5), y)}
    written = [
        plot_reliability(curves, tmp_path / "a" / "reliability.png", "Reliability"),
        plot_risk_coverage(curves, tmp_path / "b" / "risk.png", "Risk-coverage", alpha=0.1),
        plot_time_to_autonomy([25, 50, 100, 200], [0.0, 0.1, 0.35, 0.6], tmp_path / "c" / "tta.png", "TTA"),
    ]
    for path in written:
        assert path.is_file()
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert path.stat().st_size > 1000
    with pytest.raises(ValueError, match="covered_share"):
        plot_time_to_autonomy([1, 2], [0.5], tmp_path / "bad.png", "bad")
