"""critic.fast_trees: the classifier's probabilities without scikit-learn's per-call machinery, equal to
``predict_proba``, and the model's own path whenever the two would disagree."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.ensemble import HistGradientBoostingClassifier

from critic.base import labels
from critic.fast_trees import FastTrees
from critic.feature_critic import FeatureCritic
from schemas.feedback import FeedbackRecord


def _data(seed: int, rows: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = np.column_stack(
        [
            rng.integers(0, 12, rows),  # categorical codes
            rng.normal(size=rows),
            rng.integers(0, 5, rows),  # categorical codes
            rng.uniform(size=rows),
        ]
    ).astype(np.float64)
    y = ((X[:, 0] % 3 == 0) ^ (X[:, 1] > 0.3) ^ (X[:, 2] == 4)).astype(np.int64)
    return X, y


@pytest.mark.parametrize("categorical", [[True, False, True, False], None])
def test_fast_trees_equal_predict_proba(categorical: list[bool] | None) -> None:
    X, y = _data(0, 2000)
    model = HistGradientBoostingClassifier(max_iter=40, categorical_features=categorical, random_state=0).fit(X, y)
    trees = FastTrees(model)
    test, _ = _data(1, 300)
    test[:5, 0] = 40.0  # a category the model never saw: the encoder's unknown value
    test[5:8, 2] = -1.0
    first = trees.predict_proba(test)  # the self-check
    assert trees.fast
    np.testing.assert_array_equal(first, model.predict_proba(test))
    for rows in (test[:1], test[:16], test):
        np.testing.assert_allclose(trees.predict_proba(rows), model.predict_proba(rows), rtol=0, atol=1e-12)


def test_fast_trees_keep_the_models_own_path_when_they_disagree(monkeypatch: pytest.MonkeyPatch) -> None:
    X, y = _data(2, 1000)
    model = HistGradientBoostingClassifier(max_iter=10, categorical_features=[True, False, True, False]).fit(X, y)
    trees = FastTrees(model)
    monkeypatch.setattr(trees, "_predict", lambda rows: np.full((len(rows), 2), 0.5))
    expected = model.predict_proba(X[:20])
    np.testing.assert_array_equal(trees.predict_proba(X[:20]), expected)
    assert not trees.fast
    np.testing.assert_array_equal(trees.predict_proba(X[:20]), expected)  # and from then on


def test_the_feature_critic_scores_as_its_model_does(feedback_records: list[FeedbackRecord]) -> None:
    cut = len(feedback_records) * 2 // 3
    critic = FeatureCritic(max_iter=30).fit(feedback_records[:cut], labels(feedback_records[:cut]))
    held_out = feedback_records[cut:]
    assert len(held_out) >= 50
    slow = critic.model_.predict_proba(critic.featurizer_.transform(held_out))
    np.testing.assert_allclose(critic.predict_proba(held_out), slow, rtol=0, atol=1e-12)
    assert critic._trees().fast
    one = critic.predict_proba(held_out[:1])
    np.testing.assert_allclose(one, slow[:1], rtol=0, atol=1e-12)
