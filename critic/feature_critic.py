"""FeatureCritic: gradient-boosted trees on hand-made features of the proposal, the policy's confidence and the state.

The policy's own confidence says how sure the model is; the critic learns when that is misleading: which
screens, action types and situations (a repeated action, a value found nowhere in the state, a reply while the
customer has not answered) operators reject at a given confidence. The features are those of
:class:`critic.features.CriticFeaturizer`; the model is scikit-learn's ``HistGradientBoostingClassifier`` with
native categorical splits on action type, process and screen, and monotonic constraints on the confidence
columns (see the featurizer for why). Fitting 100,000 rows takes seconds on one core.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Self

import joblib
import numpy as np
import sklearn
from sklearn.base import BaseEstimator
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.inspection import permutation_importance

from critic.artifact import read_critic_meta, write_critic_dir
from critic.base import CriticInput
from critic.errors import NotFittedError
from critic.fast_trees import FastTrees
from critic.features import CriticFeaturizer, check_training_set

KIND = "feature"
MODEL_FILE = "model.joblib"
FORMAT_VERSION = 1
# Early stopping holds out a stratified tenth of the rows; below this many rows of the rarer class that
# validation split has too few of them to score (or, under 2, cannot be stratified at all), so it is skipped.
MIN_MINORITY_FOR_EARLY_STOPPING = 20


class FeatureCritic(BaseEstimator):
    """P(acceptable) from :class:`CriticFeaturizer` features with a ``HistGradientBoostingClassifier``."""

    name = "feature"

    def __init__(
        self,
        max_iter: int = 300,
        learning_rate: float = 0.06,
        max_leaf_nodes: int = 31,
        l2_regularization: float = 1.0,
        min_samples_leaf: int = 40,
        early_stopping: bool = True,
        random_state: int | None = 0,
    ) -> None:
        self.max_iter = max_iter
        self.learning_rate = learning_rate
        self.max_leaf_nodes = max_leaf_nodes
        self.l2_regularization = l2_regularization
        self.min_samples_leaf = min_samples_leaf
        self.early_stopping = early_stopping
        self.random_state = random_state

    # ---- fitting and scoring -------------------------------------------------------------------------------

    def fit(self, X: Sequence[CriticInput], y: Sequence[int] | np.ndarray) -> Self:
        labels = check_training_set(X, y)
        featurizer = CriticFeaturizer()
        matrix = featurizer.fit_transform(X)
        minority = int(min(labels.sum(), len(labels) - labels.sum()))
        model = HistGradientBoostingClassifier(
            max_iter=self.max_iter,
            learning_rate=self.learning_rate,
            max_leaf_nodes=self.max_leaf_nodes,
            l2_regularization=self.l2_regularization,
            min_samples_leaf=self.min_samples_leaf,
            early_stopping=bool(self.early_stopping) and minority >= MIN_MINORITY_FOR_EARLY_STOPPING,
            categorical_features=featurizer.categorical_mask_,
            monotonic_cst=featurizer.monotonic_cst_,
            random_state=self.random_state,
        )
        model.fit(matrix, labels)
        self.featurizer_ = featurizer
        self.model_ = model
        self.classes_ = np.array([0, 1], dtype=np.int64)
        self.n_iter_ = int(model.n_iter_)
        return self

    def _require(self) -> tuple[CriticFeaturizer, HistGradientBoostingClassifier]:
        if not hasattr(self, "model_"):
            raise NotFittedError("FeatureCritic: call fit (or FeatureCritic.load) before predicting")
        return self.featurizer_, self.model_

    def _trees(self) -> FastTrees:
        """The model's ``predict_proba`` without scikit-learn's per-call overhead (``critic.fast_trees``; it
        checks itself against the model on its first call)."""
        trees: FastTrees | None = getattr(self, "_fast_trees", None)
        if trees is None or trees.model is not self.model_:  # none yet, or the model was refitted or reloaded
            trees = self._fast_trees = FastTrees(self.model_)
        return trees

    def predict_proba(self, X: Sequence[CriticInput]) -> np.ndarray:
        featurizer, _ = self._require()
        if len(X) == 0:
            return np.zeros((0, 2), dtype=np.float64)
        proba = self._trees().predict_proba(featurizer.transform(X))
        # The model's classes are the sorted labels [0, 1], so column 1 is already P(acceptable).
        return np.asarray(proba, dtype=np.float64)

    def feature_importances(
        self,
        X: Sequence[CriticInput],
        y: Sequence[int] | np.ndarray,
        *,
        max_samples: int = 5000,
        n_repeats: int = 5,
        random_state: int = 0,
    ) -> list[tuple[str, float]]:
        """Permutation importance of each feature (the mean drop in ROC AUC when it is shuffled) on at most
        ``max_samples`` rows of ``(X, y)``, most important first. Meant for held-out data and for docs."""
        featurizer, model = self._require()
        labels = check_training_set(X, y)
        rng = np.random.default_rng(random_state)
        rows = np.arange(len(labels))
        if len(rows) > max_samples:
            rows = np.sort(rng.choice(rows, size=max_samples, replace=False))
        if len(np.unique(labels[rows])) < 2:
            raise ValueError("y: the sample holds one class only; ROC AUC needs both")
        matrix = featurizer.transform([X[int(i)] for i in rows])
        result = permutation_importance(
            model, matrix, labels[rows], scoring="roc_auc", n_repeats=n_repeats, random_state=random_state
        )
        pairs = [(name, float(v)) for name, v in zip(featurizer.feature_names_, result.importances_mean, strict=True)]
        return sorted(pairs, key=lambda p: (-p[1], p[0]))

    # ---- persistence ---------------------------------------------------------------------------------------

    def save(self, path: str | Path) -> Path:
        """A directory with ``critic.json`` and the fitted featurizer and model (``model.joblib``)."""
        featurizer, model = self._require()
        meta = {
            "kind": KIND,
            "format_version": FORMAT_VERSION,
            "params": self.get_params(),
            "feature_names": featurizer.feature_names_,
            "n_iter": self.n_iter_,
            "sklearn_version": sklearn.__version__,
            "model_file": MODEL_FILE,
        }

        def write(tmp: Path) -> None:
            # scikit-learn's own persistence (pickle via joblib). Loading a pickle runs code, so critic
            # directories are trusted input only: the model registry hashes these files and checks the hash
            # before a critic is loaded.
            joblib.dump({"featurizer": featurizer, "model": model}, tmp / MODEL_FILE)

        return write_critic_dir(path, meta, write)

    @classmethod
    def load(cls, path: str | Path) -> FeatureCritic:
        meta = read_critic_meta(path, KIND)
        if meta.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{path}: unsupported feature critic format_version {meta.get('format_version')!r}")
        model_path = Path(path) / meta.get("model_file", MODEL_FILE)
        if not model_path.is_file():
            raise ValueError(f"{path}: the model file {model_path.name} is missing")
        critic = cls(**meta["params"])
        fitted = joblib.load(model_path)  # trusted input only (see save)
        critic.featurizer_ = fitted["featurizer"]
        critic.model_ = fitted["model"]
        critic.classes_ = np.array([0, 1], dtype=np.int64)
        critic.n_iter_ = int(meta.get("n_iter", critic.model_.n_iter_))
        return critic
