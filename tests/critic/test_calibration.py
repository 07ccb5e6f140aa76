"""Score calibration: the two maps and the automatic choice between them, and the calibrated critic wrapper."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Self

import numpy as np
import pytest
from sklearn.isotonic import IsotonicRegression

from critic.base import Critic, CriticInput, labels
from critic.calibration import CalibratedCritic, ScoreCalibrator
from critic.errors import NotFittedError
from critic.metrics import brier, expected_calibration_error
from schemas import FeedbackRecord


def logistic_data(seed: int, n: int = 3000) -> tuple[np.ndarray, np.ndarray]:
    """Raw scores sigmoid(2.5 x + 1) for a true P(accept) of sigmoid(x): overconfident and shifted, so Platt
    scaling on the logit should recover a = 0.4, b = -0.4."""
    rng = np.random.default_rng(seed)
    x = rng.normal(0.0, 1.5, n)
    y = (rng.random(n) < 1 / (1 + np.exp(-x))).astype(int)
    return 1 / (1 + np.exp(-(2.5 * x + 1))), y


def step_data(seed: int, n: int = 3000) -> tuple[np.ndarray, np.ndarray]:
    """P(accept) 0.3 below a score of 0.5 and 0.9 above: no logistic curve has two such plateaus."""
    rng = np.random.default_rng(seed)
    s = rng.random(n)
    return s, (rng.random(n) < np.where(s < 0.5, 0.3, 0.9)).astype(int)


def test_sigmoid_recovers_the_platt_parameters_and_improves_calibration() -> None:
    raw, y = logistic_data(0)
    calibrator = ScoreCalibrator("sigmoid").fit(raw, y)
    assert calibrator.method_ == "sigmoid"
    assert calibrator.a_ == pytest.approx(0.4, abs=0.05)
    assert calibrator.b_ == pytest.approx(-0.4, abs=0.08)
    fresh_raw, fresh_y = logistic_data(1)
    calibrated = calibrator.transform(fresh_raw)
    assert brier(calibrated, fresh_y) < brier(fresh_raw, fresh_y) - 0.02
    assert expected_calibration_error(calibrated, fresh_y) < 0.04 < expected_calibration_error(fresh_raw, fresh_y)


def test_isotonic_matches_sklearn_and_clips_outside_the_fitted_range() -> None:
    s, y = step_data(2, 500)
    s = 0.1 + 0.8 * s  # fitted on [0.1, 0.9] only
    calibrator = ScoreCalibrator("isotonic").fit(s, y)
    reference = IsotonicRegression(out_of_bounds="clip", y_min=0.0, y_max=1.0).fit(s, y)
    grid = np.linspace(0.0, 1.0, 201)
    np.testing.assert_allclose(calibrator.transform(grid), reference.predict(grid))
    assert calibrator.transform([0.0])[0] == calibrator.transform([0.1])[0]


@pytest.mark.parametrize("method", ["isotonic", "sigmoid"])
def test_transform_is_a_monotone_probability(method: str) -> None:
    raw, y = logistic_data(3, 1000)
    out = ScoreCalibrator(method).fit(raw, y).transform(np.linspace(0.0, 1.0, 1001))  # type: ignore[arg-type]
    assert out.min() >= 0.0 and out.max() <= 1.0
    assert np.all(np.diff(out) >= 0)


def test_auto_prefers_platt_on_logistic_data_and_isotonic_on_a_step() -> None:
    logistic = ScoreCalibrator().fit(*logistic_data(4))
    assert logistic.method_ == "sigmoid"
    assert logistic.cv_brier_["sigmoid"] < logistic.cv_brier_["isotonic"]
    step = ScoreCalibrator().fit(*step_data(4))
    assert step.method_ == "isotonic"
    assert step.cv_brier_["isotonic"] < step.cv_brier_["sigmoid"] - 0.01


def test_auto_takes_platt_on_small_or_one_sided_data_without_trying_isotonic() -> None:
    s, y = step_data(5, 199)
    small = ScoreCalibrator().fit(s, y)
    assert (small.method_, small.cv_brier_) == ("sigmoid", {})
    s, y = step_data(5, 2000)
    y = np.ones_like(y)
    y[:19] = 0  # 19 rejections: too few for isotonic
    one_sided = ScoreCalibrator().fit(s, y)
    assert (one_sided.method_, one_sided.cv_brier_) == ("sigmoid", {})
    y[:20] = 0
    assert ScoreCalibrator().fit(s, y).cv_brier_ != {}  # 20 of each class: compared


@pytest.mark.parametrize("data", [logistic_data, step_data])
def test_to_dict_round_trip_is_exact(data: object) -> None:
    raw, y = data(6)  # type: ignore[operator]
    calibrator = ScoreCalibrator().fit(raw, y)
    loaded = ScoreCalibrator.from_dict(json.loads(json.dumps(calibrator.to_dict())))
    assert loaded.method_ == calibrator.method_
    grid = np.linspace(0.0, 1.0, 301)
    np.testing.assert_array_equal(loaded.transform(grid), calibrator.transform(grid))
    keys = {"X_thresholds", "y_thresholds"} if calibrator.method_ == "isotonic" else {"a", "b"}
    assert keys <= set(calibrator.to_dict())


def test_bad_input_is_refused() -> None:
    with pytest.raises(ValueError, match="one label per score"):
        ScoreCalibrator().fit([0.1, 0.2, 0.3], [0, 1])
    with pytest.raises(ValueError, match=r"scores must lie in \[0, 1\]"):
        ScoreCalibrator().fit([0.1, 1.2], [0, 1])
    with pytest.raises(ValueError, match="NaN"):
        ScoreCalibrator().fit([0.1, float("nan")], [0, 1])
    with pytest.raises(ValueError, match="single class"):
        ScoreCalibrator().fit([0.1, 0.2], [1, 1])
    with pytest.raises(ValueError, match="method"):
        ScoreCalibrator("beta").fit([0.1, 0.2], [0, 1])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="cv"):
        ScoreCalibrator(cv=1).fit([0.1, 0.2], [0, 1])
    with pytest.raises(NotFittedError):
        ScoreCalibrator().transform([0.5])
    with pytest.raises(ValueError, match="method_"):
        ScoreCalibrator.from_dict({"method_": "beta"})
    fitted = ScoreCalibrator().fit([0.1, 0.9], [0, 1])
    with pytest.raises(ValueError, match="scores"):
        fitted.transform([-0.1])


# ---- the calibrated critic ---------------------------------------------------------------------------------------


class PowerCritic:
    """A real, deliberately miscalibrated critic: the policy's own confidence raised to a power (p ** 4 turns a
    typical 0.85 into 0.52). It is "already fitted"; ``fit`` counts calls so tests can see it is not refitted."""

    def __init__(self, power: float = 4.0, fail_save: bool = False) -> None:
        self.power = power
        self.fail_save = fail_save
        self.name = "power"
        self.fit_calls = 0

    def fit(self, X: Sequence[CriticInput], y: Sequence[int] | np.ndarray) -> Self:
        self.fit_calls += 1
        return self

    def predict_proba(self, X: Sequence[CriticInput]) -> np.ndarray:
        p = np.array([item.proposal.features.probability for item in X], dtype=np.float64) ** self.power
        return np.column_stack([1.0 - p, p])

    def save(self, path: str | Path) -> Path:
        if self.fail_save:
            raise OSError("disk full")
        out = Path(path)
        out.mkdir(parents=True)
        (out / "critic.json").write_text(json.dumps({"kind": "power", "power": self.power}))
        return out


def load_power(path: Path) -> Critic:
    meta = json.loads((path / "critic.json").read_text())
    assert meta["kind"] == "power"
    return PowerCritic(meta["power"])


@pytest.fixture
def split(feedback_records: list[FeedbackRecord]) -> tuple[list[FeedbackRecord], list[FeedbackRecord]]:
    half = len(feedback_records) // 2
    return feedback_records[:half], feedback_records[half:]


def test_calibrated_critic_improves_held_out_calibration(
    split: tuple[list[FeedbackRecord], list[FeedbackRecord]],
) -> None:
    calibration, held_out = split
    base = PowerCritic()
    critic = CalibratedCritic(base).fit(calibration, labels(calibration))
    assert base.fit_calls == 0  # prefit: only the calibrator learns
    assert isinstance(critic, Critic)
    assert critic.name == "power+sigmoid"  # ~120 rows: too few for isotonic
    proba = critic.predict_proba(held_out)
    assert proba.shape == (len(held_out), 2)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    y = labels(held_out)
    assert brier(proba[:, 1], y) < brier(base.predict_proba(held_out)[:, 1], y)


def test_calibrated_critic_save_load_round_trip(
    split: tuple[list[FeedbackRecord], list[FeedbackRecord]], tmp_path: Path
) -> None:
    calibration, held_out = split
    critic = CalibratedCritic(PowerCritic(), method="isotonic").fit(calibration, labels(calibration))
    target = tmp_path / "critics" / "calibrated"
    assert critic.save(target) == target
    meta = json.loads((target / "critic.json").read_text())
    assert meta["kind"] == "calibrated" and meta["name"] == "power+isotonic"
    assert meta["calibrator"]["method_"] == "isotonic"
    assert (target / "base" / "critic.json").is_file()
    loaded = CalibratedCritic.load(target, load_power)
    assert loaded.name == critic.name
    np.testing.assert_array_equal(loaded.predict_proba(held_out), critic.predict_proba(held_out))
    # Overwriting replaces the directory whole and leaves no temporary siblings behind.
    CalibratedCritic(PowerCritic(power=2.0)).fit(calibration, labels(calibration)).save(target)
    assert isinstance(CalibratedCritic.load(target, load_power).critic, PowerCritic)
    assert json.loads((target / "base" / "critic.json").read_text())["power"] == 2.0
    assert sorted(p.name for p in target.parent.iterdir()) == ["calibrated"]


def test_a_failed_save_leaves_the_old_directory_alone(
    split: tuple[list[FeedbackRecord], list[FeedbackRecord]], tmp_path: Path
) -> None:
    calibration, _ = split
    target = tmp_path / "calibrated"
    CalibratedCritic(PowerCritic()).fit(calibration, labels(calibration)).save(target)
    before = (target / "critic.json").read_text()
    broken = CalibratedCritic(PowerCritic(fail_save=True)).fit(calibration, labels(calibration))
    with pytest.raises(OSError, match="disk full"):
        broken.save(target)
    assert (target / "critic.json").read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["calibrated"]


def test_calibrated_critic_refuses_misuse(
    split: tuple[list[FeedbackRecord], list[FeedbackRecord]], tmp_path: Path
) -> None:
    calibration, _ = split
    critic = CalibratedCritic(PowerCritic())
    with pytest.raises(NotFittedError):
        critic.predict_proba(calibration)
    with pytest.raises(NotFittedError):
        critic.save(tmp_path / "x")
    with pytest.raises(ValueError, match="y has"):
        critic.fit(calibration, labels(calibration)[:-1])
    with pytest.raises(ValueError, match=r"critic\.json"):
        CalibratedCritic.load(tmp_path / "missing", load_power)
    other = tmp_path / "other"
    other.mkdir()
    (other / "critic.json").write_text(json.dumps({"kind": "feature"}))
    with pytest.raises(ValueError, match="kind"):
        CalibratedCritic.load(other, load_power)
