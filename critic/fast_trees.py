"""``HistGradientBoostingClassifier.predict_proba`` without scikit-learn's per-call input machinery.

Why. With categorical features the classifier routes every call through a ``ColumnTransformer`` (an
``OrdinalEncoder`` for the categorical columns, input checks for the others, joblib's sequential ``Parallel``
around both), which costs 5-7 ms per call whatever the number of rows: for the one to sixteen proposals the
runtime and the copilot route score at a time that is most of the critic's time (profiled in decision 0013).

How. ``FastTrees`` does the same arithmetic with what the fitted model already holds: each categorical value is
mapped to its position among the encoder's categories (unknown: NaN, as the encoder's ``unknown_value``), the
columns are put in the transformer's output order (categorical first), and the fitted predictors add their leaf
values to the baseline, as ``_raw_predict`` does; the loss turns the sums into probabilities.

It reads private attributes of the fitted model (``_preprocessor``, ``_predictors``, ``_bin_mapper``,
``_baseline_prediction``, ``_loss``), so it checks itself: the first call also runs the model's own
``predict_proba`` and keeps the fast path only if the two agree to 1e-9 (and the model has those attributes);
otherwise every call uses ``predict_proba`` (and says so once in the log). A scikit-learn release that changes
these internals therefore costs speed, never a wrong probability.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
from sklearn.ensemble import HistGradientBoostingClassifier

log = logging.getLogger(__name__)

AGREEMENT = 1e-9


class FastTrees:
    """``predict_proba`` of a fitted ``HistGradientBoostingClassifier`` (see the module docstring)."""

    def __init__(self, model: HistGradientBoostingClassifier) -> None:
        self.model = model
        self._checked = False
        self._fast = False
        self._plan: dict[str, Any] | None = None

    @property
    def fast(self) -> bool:
        """Whether the fast path is in use (known only after the first call)."""
        return self._fast

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        if not self._checked:
            return self._first_call(X)
        if not self._fast:
            return np.asarray(self.model.predict_proba(X))
        return self._predict(X)

    def _first_call(self, X: np.ndarray) -> np.ndarray:
        expected = np.asarray(self.model.predict_proba(X))
        self._checked = True
        try:
            self._plan = self._make_plan()
            got = self._predict(X)
            self._fast = got.shape == expected.shape and bool(np.all(np.abs(got - expected) <= AGREEMENT))
        except Exception:  # an internal that is not there (another scikit-learn): the model's own path
            log.debug("FastTrees: fast path unavailable", exc_info=True)
            self._fast = False
        if not self._fast:
            log.warning("FastTrees: the fast path disagrees with predict_proba here; using predict_proba")
        return expected

    def _make_plan(self) -> dict[str, Any]:
        model = self.model
        if model._preprocessor is None:  # no categorical features: the input goes to the trees as it is
            categories: list[np.ndarray] = []
            cat_columns = np.zeros(0, dtype=np.int64)
            num_columns = np.arange(model.n_features_in_)
        else:
            encoder = model._preprocessor.named_transformers_["encoder"]
            categories = [np.asarray(c, dtype=np.float64) for c in encoder.categories_]
            categorical = np.asarray(model.is_categorical_, dtype=bool)
            cat_columns = np.flatnonzero(categorical)
            num_columns = np.flatnonzero(~categorical)
            order = model._preprocessor.output_indices_
            if order["encoder"].start != 0 or order["numerical"].start != len(cat_columns):
                raise ValueError("unexpected column order")
        bitsets, f_idx_map = model._bin_mapper.make_known_categories_bitsets()
        return {
            "categories": categories,
            "cat_columns": cat_columns,
            "num_columns": num_columns,
            "bitsets": bitsets,
            "f_idx_map": f_idx_map,
        }

    def _predict(self, X: np.ndarray) -> np.ndarray:
        plan = self._plan
        assert plan is not None
        model = self.model
        X = np.asarray(X, dtype=np.float64)
        parts = []
        for column, known in zip(plan["cat_columns"], plan["categories"], strict=True):
            values = X[:, column]
            at = np.searchsorted(known, values)
            at_clipped = np.minimum(at, len(known) - 1)
            found = (at < len(known)) & (known[at_clipped] == values)
            parts.append(np.where(found, at_clipped, np.nan))
        for column in plan["num_columns"]:
            parts.append(X[:, column])
        features = np.ascontiguousarray(np.column_stack(parts)) if parts else X
        raw = np.zeros((X.shape[0], model.n_trees_per_iteration_), dtype=model._baseline_prediction.dtype, order="F")
        raw += model._baseline_prediction
        for predictors in model._predictors:
            for k, predictor in enumerate(predictors):
                raw[:, k] += predictor.predict(features, plan["bitsets"], plan["f_idx_map"], 1)
        return np.asarray(model._loss.predict_proba(raw))
