"""A gradient-boosted-trees next-action baseline: hand-made features of the UI state, one multi-class model.

It is the strong non-LM reference for real event logs (issue 3): unlike the n-gram floors it sees the attributes
of the last event and of the case and the timing of the prefix, and unlike a neural model it trains in under a
minute on one core.

Features, computed from the ``UIState`` alone (nothing of the trace beyond the state):

* the last ``n_last`` actions (``recent_actions``), each a categorical code of its type and target (no value:
  ``click_control:assign``), missing when the prefix is shorter;
* the prefix length (``state.step``); per action (the ``max_counted_actions`` most frequent ones), how often it
  occurs in ``recent_actions``; how many times the last action repeats at the end; how many distinct actions
  ``recent_actions`` holds;
* every panel field seen in training (``case`` and ``last_event`` for imported logs), by a kind learned from
  the training values:

  - a duration (a numeric field whose name ends in ``_s``: ``elapsed_s``, ``since_last_s``): ``log1p`` of the
    seconds;
  - a date (``REG_DATE``): the signed ``log1p`` of the seconds from it to the last event's ``time:timestamp``
    and to the case's first event (that time minus ``elapsed_s``), and the date's own hour and weekday. The
    last event's ``time:timestamp`` is only this reference, never a feature itself (an absolute time does not
    carry over to a later test period); its clock time comes in the ``hour`` and ``weekday`` fields;
  - a number (``hour``, ``AMOUNT_REQ``, a numeric resource id): its value, and also a category when it has at
    most 64 distinct values;
  - anything else (``org:resource``, ``org:group``, ``impact``, ``product``, ``weekday`` ...): a category. The
    ``max_categories`` most frequent training values get codes, 254 per column (the most
    ``HistGradientBoostingClassifier`` takes), so a field with many values gets several columns; the other
    values share one code, and such a field also gets the ``log1p`` of its value's training frequency. A field
    whose coded values cover under a fifth of its rows (an id, a raw timestamp) is left out.

The classifier is scikit-learn's ``HistGradientBoostingClassifier`` with native categorical splits. It predicts
the next action's ``action_key`` among the keys seen as targets in training; the confidence is the predicted
probability of that key. The default hyper-parameters were chosen on the train -> val splits of the two BPI logs
(never on their test splits): ``l2_regularization`` matters most (without it accuracy collapses as boosting
rounds are added), then a large ``max_categories`` (resource, group and product have hundreds of values).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal, Self

import numpy as np
from sklearn.ensemble import HistGradientBoostingClassifier
from threadpoolctl import threadpool_limits

from policy.predictor import Prediction
from schemas.actions import Action, action_key, action_target
from schemas.state import UIState
from schemas.trace import Trace

FieldKind = Literal["duration", "date", "number", "category"]

REFERENCE_TIME = ("last_event", "time:timestamp")
"""The panel field that dates are measured against: the time of the last event."""

ELAPSED = "elapsed_s"
"""The field of the reference panel that gives the seconds from the case's first event to the last one."""

OTHER = "\x00other"
"""The class of the actions beyond ``max_classes`` (no action key starts with a NUL)."""

BLOCK = 254
"""Values coded per categorical column: HistGradientBoostingClassifier takes the codes 0 .. 254; code ``BLOCK``
(254) stands for every other value. A field with more frequent values gets one column per block of 254."""

_NUMERIC_SHARE = 0.99  # a field is numeric when this share of its training values parse as numbers
_DATE_SHARE = 0.95  # ... a date when this share parse as ISO 8601 dates (and they are not plain numbers)
_NUMBER_CATEGORIES = 64  # a numeric field with at most this many values is also a category (an hour, a code)
_MIN_COVERAGE = 0.2  # a categorical field is kept when its coded values cover at least this share of its rows


@dataclass(frozen=True)
class FieldSpec:
    """How one panel field becomes columns: its kind, and for categories the code of each frequent value."""

    panel: str
    name: str
    kind: FieldKind
    codes: dict[str, int] = field(default_factory=dict)  # value -> frequency rank (empty: no categorical column)
    counts: dict[str, int] | None = None  # value -> training frequency, for high-cardinality fields

    @property
    def blocks(self) -> int:
        """How many categorical columns the field has (one per ``BLOCK`` coded values)."""
        return -(-len(self.codes) // BLOCK)

    @property
    def key(self) -> str:
        return f"{self.panel}.{self.name}"


@dataclass(frozen=True)
class FeatureSpec:
    """Every column of the feature matrix, learned from the training states."""

    n_last: int
    actions: dict[str, int]  # action token (type:target) -> code (the most frequent ones)
    fields: tuple[FieldSpec, ...]
    names: tuple[str, ...]
    categorical: tuple[bool, ...]
    counted: tuple[str, ...] | None = None  # the action tokens with a count column (None: all of ``actions``)

    def transform(self, states: Sequence[UIState]) -> np.ndarray:
        return np.array([self._row(state) for state in states], dtype=np.float64).reshape(len(states), len(self.names))

    def _row(self, state: UIState) -> list[float]:
        nan = math.nan
        codes = self.actions
        other_action = float(BLOCK)
        keys = [action_token(a) for a in state.recent_actions]
        row: list[float] = []
        for k in range(1, self.n_last + 1):
            row.append(float(codes.get(keys[-k], other_action)) if len(keys) >= k else nan)
        row.append(float(state.step))
        counts = Counter(keys)
        row.extend(float(counts.get(key, 0)) for key in (codes if self.counted is None else self.counted))
        run = 0
        for key in reversed(keys):
            if key != keys[-1]:
                break
            run += 1
        row.append(float(run))
        row.append(float(len(counts)))
        reference, elapsed = _reference_time(state)
        for spec in self.fields:
            panel = state.panels.get(spec.panel)
            value = panel.fields.get(spec.name) if panel is not None else None
            row.extend(_field_columns(spec, value, reference, elapsed))
        return row


def action_token(action: Action) -> str:
    """A past action as a feature: its type and target, without the value (``fill_field:email``)."""
    return f"{action.type}:{action_target(action)}"


def _start_time(trace: Trace) -> float | None:
    """When the case started (its first step's timestamp, POSIX seconds); None when the trace has no times."""
    stamp = trace.steps[0].timestamp if trace.steps else None
    return stamp.timestamp() if stamp is not None else None


def _reference_time(state: UIState) -> tuple[datetime | None, float | None]:
    """The last event's time and the seconds from the case's first event to it (``elapsed_s``)."""
    panel = state.panels.get(REFERENCE_TIME[0])
    if panel is None:
        return None, None
    text = panel.fields.get(REFERENCE_TIME[1])
    elapsed = panel.fields.get(ELAPSED)
    return (
        _parse_date(text) if text is not None else None,
        _parse_number(elapsed) if elapsed is not None else None,
    )


def _parse_number(text: str) -> float | None:
    try:
        number = float(text)
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def _parse_date(text: str) -> datetime | None:
    if len(text) < 10 or text[4:5] != "-":  # cheap reject: "2011-10-01..." only
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else None  # only zone-aware dates subtract safely


def _signed_log1p(x: float) -> float:
    return math.copysign(math.log1p(abs(x)), x)


def _field_columns(
    spec: FieldSpec, value: str | None, reference: datetime | None, elapsed: float | None
) -> list[float]:
    """The columns of one field (see ``_field_names`` for their order); NaN where the value is missing."""
    nan = math.nan
    if spec.kind == "duration":
        number = _parse_number(value) if value is not None else None
        return [math.log1p(max(number, 0.0)) if number is not None else nan]
    if spec.kind == "date":
        moment = _parse_date(value) if value is not None else None
        if moment is None:
            return [nan, nan, nan, nan]
        clock = [float(moment.hour), float(moment.weekday())]
        if reference is None:
            return [nan, nan, *clock]
        age = (reference - moment).total_seconds()
        at_start = age - elapsed if elapsed is not None else nan
        return [_signed_log1p(age), _signed_log1p(at_start), *clock]
    columns: list[float] = []
    if spec.kind == "number":
        number = _parse_number(value) if value is not None else None
        columns.append(number if number is not None else nan)
    if spec.codes:
        rank = spec.codes.get(value, -1) if value is not None else None
        for block in range(spec.blocks):
            if rank is None:
                columns.append(nan)
            elif block * BLOCK <= rank < (block + 1) * BLOCK:
                columns.append(float(rank - block * BLOCK))
            else:
                columns.append(float(BLOCK))  # a value of another block, or a rare one
    if spec.counts is not None:
        columns.append(math.log1p(spec.counts.get(value, 0)) if value is not None else nan)
    return columns


def _field_names(spec: FieldSpec) -> list[tuple[str, bool]]:
    """(column name, is categorical) of one field's columns, in ``_field_columns`` order."""
    if spec.kind == "duration":
        return [(f"{spec.key}:duration", False)]
    if spec.kind == "date":
        return [(f"{spec.key}:{part}", False) for part in ("age", "age_at_start", "hour", "weekday")]
    names: list[tuple[str, bool]] = []
    if spec.kind == "number":
        names.append((f"{spec.key}:number", False))
    names.extend((f"{spec.key}:category" + (f".{block}" if block else ""), True) for block in range(spec.blocks))
    if spec.counts is not None:
        names.append((f"{spec.key}:frequency", False))
    return names


def _top(counter: Counter[str], limit: int) -> list[str]:
    """The ``limit`` most frequent values, ties broken by value (deterministic)."""
    return [value for value, _ in sorted(counter.items(), key=lambda item: (-item[1], item[0]))[:limit]]


def _learn_field(panel: str, name: str, values: Counter[str], rows: int, max_categories: int) -> FieldSpec | None:
    """The kind and codes of one field from its training values (``rows``: how many states show it)."""
    if (panel, name) == REFERENCE_TIME:
        return None
    numeric = sum(n for value, n in values.items() if _parse_number(value) is not None)
    if numeric >= _NUMERIC_SHARE * rows and name.endswith("_s"):
        return FieldSpec(panel, name, "duration")
    if numeric < _NUMERIC_SHARE * rows:
        dates = sum(n for value, n in values.items() if _parse_date(value) is not None)
        if dates >= _DATE_SHARE * rows:
            return FieldSpec(panel, name, "date")
    kind: FieldKind = "number" if numeric >= _NUMERIC_SHARE * rows else "category"
    limit = max_categories
    top = _top(values, limit)
    covered = sum(values[value] for value in top)
    many = len(values) > limit
    if kind == "number" and len(values) > _NUMBER_CATEGORIES:
        return FieldSpec(panel, name, "number")  # many distinct numbers (an amount): the value alone
    if covered < _MIN_COVERAGE * rows:
        return None  # an id or a raw timestamp: no value recurs enough to learn from
    codes = {value: rank for rank, value in enumerate(top)}
    return FieldSpec(panel, name, kind, codes=codes, counts=dict(values) if many else None)


def learn_features(
    states: Iterable[UIState],
    *,
    n_last: int,
    max_categories: int,
    exclude: Iterable[str] = (),
    max_counted_actions: int = BLOCK,
) -> FeatureSpec:
    """The feature spec of a training set: action codes, a count column for each of the ``max_counted_actions``
    most frequent actions, and the kind and codes of every panel field except the ``exclude``d ones (a field
    name, ``hour``, or a panel and field name, ``last_event.hour``)."""
    excluded = set(exclude)
    action_counts: Counter[str] = Counter()
    field_values: dict[tuple[str, str], Counter[str]] = {}
    field_rows: Counter[tuple[str, str]] = Counter()
    for state in states:
        action_counts.update(action_token(a) for a in state.recent_actions)
        for panel_id, panel in state.panels.items():
            for name, value in panel.fields.items():
                key = (panel_id, name)
                field_rows[key] += 1
                field_values.setdefault(key, Counter())[value] += 1
    actions = {key: code for code, key in enumerate(_top(action_counts, BLOCK))}
    counted = tuple(_top(action_counts, max_counted_actions))
    fields = [
        spec
        for (panel_id, name) in sorted(field_values)
        if name not in excluded and f"{panel_id}.{name}" not in excluded
        if (
            spec := _learn_field(
                panel_id, name, field_values[panel_id, name], field_rows[panel_id, name], max_categories
            )
        )
        is not None
    ]
    columns: list[tuple[str, bool]] = [(f"last_{k}", True) for k in range(1, n_last + 1)]
    columns.append(("step", False))
    columns.extend((f"count:{key}", False) for key in counted)
    columns.append(("run", False))
    columns.append(("distinct", False))
    for spec in fields:
        columns.extend(_field_names(spec))
    return FeatureSpec(
        n_last=n_last,
        actions=actions,
        fields=tuple(fields),
        names=tuple(name for name, _ in columns),
        categorical=tuple(cat for _, cat in columns),
        counted=counted,
    )


class GradientBoostingBaseline:
    """Next action = argmax of a gradient-boosted multi-class model over hand-made state features.

    Hyper-parameters are set in ``__init__`` and not changed by ``fit``; what ``fit`` learns ends in ``_``.

    * ``exclude_fields``: panel fields that are not features (``hour`` or ``last_event.hour``). On a log whose
      clock times do not carry over from the training period to a later one, leaving out the timing fields is
      a choice to make on a validation split (``bench.policy_eventlog_baseline`` does).
    * ``recency_half_life``: a share of the training period (None: off); a case is weighted by 0.5 ** (the
      distance of its start from the latest start / the half-life), for a process that drifts.
    * ``max_samples`` caps the training rows (a seeded random subset); ``include_first_step`` says whether the
      states before the first event (step 0) are training rows. A target seen only once in training is dropped
      (nothing can be learned from it).
    * ``max_classes``: at most this many actions are classes (None: every action). The others, rarer, become one
      class ``OTHER`` that is never proposed: boosting fits one tree per class and round, so a log with hundreds
      of activities would take minutes per fit, while its rare ones are few of its steps.
    * ``max_counted_actions``: how many actions (the most frequent) get a count column. Every column costs
      every tree its time, and a log with hundreds of activities would otherwise have hundreds of them.
    * ``n_threads`` limits the OpenMP threads of fit and predict (None: all cores). The default is one: on a
      small machine shared with other work, OpenMP threads waiting for each other made fitting several times
      slower than one thread.
    """

    name = "gbm"

    def __init__(
        self,
        *,
        n_last: int = 5,
        max_categories: int = 2 * BLOCK,
        max_iter: int = 300,
        learning_rate: float = 0.05,
        max_leaf_nodes: int = 31,
        min_samples_leaf: int = 20,
        l2_regularization: float = 10.0,
        early_stopping: bool | Literal["auto"] = "auto",
        validation_fraction: float = 0.1,
        n_iter_no_change: int = 10,
        exclude_fields: Sequence[str] = (),
        max_samples: int | None = None,
        recency_half_life: float | None = None,
        include_first_step: bool = True,
        max_classes: int | None = None,
        max_counted_actions: int = 32,
        n_threads: int | None = 1,
        random_state: int = 0,
    ) -> None:
        self.n_last = n_last
        self.max_categories = max_categories
        self.max_iter = max_iter
        self.learning_rate = learning_rate
        self.max_leaf_nodes = max_leaf_nodes
        self.min_samples_leaf = min_samples_leaf
        self.l2_regularization = l2_regularization
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.n_iter_no_change = n_iter_no_change
        self.exclude_fields = exclude_fields
        self.max_samples = max_samples
        self.recency_half_life = recency_half_life
        self.include_first_step = include_first_step
        self.max_classes = max_classes
        self.max_counted_actions = max_counted_actions
        self.n_threads = n_threads
        self.random_state = random_state

    def get_params(self) -> dict[str, object]:
        return {name: getattr(self, name) for name in _PARAMS}

    def fit(self, traces: Sequence[Trace]) -> Self:
        pairs = [
            (step, _start_time(trace))
            for trace in traces
            for step in trace.steps
            if self.include_first_step or step.state.step > 0
        ]
        if not pairs:
            raise ValueError("no training steps: the traces are empty")
        if self.max_classes is not None and self.max_classes < 1:
            raise ValueError(f"max_classes must be at least 1, not {self.max_classes}")
        if self.max_samples is not None and len(pairs) > self.max_samples:
            rng = np.random.default_rng(self.random_state)
            keep = np.sort(rng.choice(len(pairs), size=self.max_samples, replace=False))
            pairs = [pairs[i] for i in keep]
        # a target seen once cannot be learned, and it breaks the stratified split of early stopping
        seen = Counter(action_key(step.action) for step, _ in pairs)
        if len(seen) > 1:
            pairs = [(step, start) for step, start in pairs if seen[action_key(step.action)] >= 2]
        states = [step.state for step, _ in pairs]
        targets = [action_key(step.action) for step, _ in pairs]
        counts = Counter(targets)
        if self.max_classes is not None and len(counts) > self.max_classes:
            frequent = {key for key, _ in counts.most_common(self.max_classes)}
            targets = [key if key in frequent else OTHER for key in targets]
        self.features_ = learn_features(
            states,
            n_last=self.n_last,
            max_categories=self.max_categories,
            exclude=self.exclude_fields,
            max_counted_actions=self.max_counted_actions,
        )
        self.actions_: dict[str, Action] = {}
        for (step, _), key in zip(pairs, targets, strict=True):
            if key != OTHER:
                self.actions_.setdefault(key, step.action)
        # the actions, then OTHER when some were merged into it: the first len(actions_) columns are proposable
        self.classes_ = sorted(self.actions_) + ([OTHER] if OTHER in targets else [])
        index = {key: i for i, key in enumerate(self.classes_)}
        y = np.array([index[key] for key in targets], dtype=np.int64)
        X = self.features_.transform(states)
        # a column without any value in training (a date field with no reference time) carries nothing, and
        # HistGradientBoostingClassifier cannot bin it
        self.columns_ = np.flatnonzero(~np.isnan(X).all(axis=0))
        X = X[:, self.columns_]
        weights = self._recency_weights([start for _, start in pairs])
        self.n_features_in_ = X.shape[1]
        self.n_train_ = len(pairs)
        self.model_: HistGradientBoostingClassifier | None = None
        self.n_iter_ = 0
        if len(self.classes_) > 1:
            self.model_ = HistGradientBoostingClassifier(
                categorical_features=np.array(self.features_.categorical, dtype=bool)[self.columns_],
                max_iter=self.max_iter,
                learning_rate=self.learning_rate,
                max_leaf_nodes=self.max_leaf_nodes,
                min_samples_leaf=self.min_samples_leaf,
                l2_regularization=self.l2_regularization,
                early_stopping=self.early_stopping,
                validation_fraction=self.validation_fraction,
                n_iter_no_change=self.n_iter_no_change,
                random_state=self.random_state,
            )
            with threadpool_limits(limits=self.n_threads, user_api="openmp"):
                self.model_.fit(X, y, sample_weight=weights)
            self.n_iter_ = int(self.model_.n_iter_)
        return self

    def _recency_weights(self, starts: list[float | None]) -> np.ndarray | None:
        """Sample weights halving every ``recency_half_life`` (a share of the training period) back from the
        latest case start; None when not asked for or when the traces carry no times."""
        if self.recency_half_life is None:
            return None
        known = [t for t in starts if t is not None]
        if not known or max(known) == min(known):
            return None
        latest, span = max(known), max(known) - min(known)
        ages = np.array([(latest - t) / span if t is not None else 1.0 for t in starts])
        return np.power(0.5, ages / self.recency_half_life)

    def predict_proba(self, states: Sequence[UIState]) -> np.ndarray:
        """Probabilities over ``classes_`` (action keys), one row per state."""
        if not states:
            return np.zeros((0, len(self.classes_)))
        if self.model_ is None:
            return np.ones((len(states), 1))
        with threadpool_limits(limits=self.n_threads, user_api="openmp"):
            proba: np.ndarray = self.model_.predict_proba(self._matrix(states))
        # the model's classes are the indices 0..n-1 of classes_ that occurred, i.e. all of them
        return proba

    def _proposable(self, states: Sequence[UIState]) -> np.ndarray:
        """``predict_proba`` without the ``OTHER`` column (rows need not sum to one then)."""
        return self.predict_proba(states)[:, : len(self.actions_)]

    def predict(self, states: Sequence[UIState]) -> list[Prediction]:
        proba = self._proposable(states)
        best = proba.argmax(axis=1) if len(states) else np.zeros(0, dtype=np.int64)
        return [
            Prediction(action=self.actions_[self.classes_[int(i)]], confidence=float(proba[row, int(i)]))
            for row, i in enumerate(best)
        ]

    def rank(self, states: Sequence[UIState], k: int = 5) -> list[list[tuple[Action, float]]]:
        """Per state the ``k`` most probable next actions (as seen in training) with their probabilities."""
        proba = self._proposable(states)
        out: list[list[tuple[Action, float]]] = []
        for row in proba:
            top = np.argsort(-row, kind="stable")[:k]
            out.append([(self.actions_[self.classes_[int(i)]], float(row[int(i)])) for i in top])
        return out

    def feature_importance(
        self, states: Sequence[UIState], actions: Sequence[Action], *, repeats: int = 3
    ) -> dict[str, float]:
        """Permutation importance of each feature group on (states, true actions): the drop in accuracy when
        the group's columns are shuffled across rows. Groups: ``last_k``, ``step``, ``counts`` (all
        ``count:*`` columns), ``run``, ``distinct`` and one per panel field."""
        X = self._matrix(states)
        index = {key: i for i, key in enumerate(self.classes_)}
        y = np.array([index.get(action_key(a), -1) for a in actions])
        groups: dict[str, list[int]] = {}
        for column, name in enumerate(self.feature_names_):
            group = "counts" if name.startswith("count:") else name.rsplit(":", 1)[0]
            groups.setdefault(group, []).append(column)
        base = self._accuracy(X, y)
        rng = np.random.default_rng(self.random_state)
        result: dict[str, float] = {}
        for group, columns in groups.items():
            drops = []
            for _ in range(repeats):
                shuffled = X.copy()
                order = rng.permutation(len(X))
                shuffled[:, columns] = X[order][:, columns]
                drops.append(base - self._accuracy(shuffled, y))
            result[group] = float(np.mean(drops))
        return dict(sorted(result.items(), key=lambda item: -item[1]))

    @property
    def feature_names_(self) -> list[str]:
        """The names of the model's columns (``features_.names`` less the columns empty in training)."""
        return [self.features_.names[i] for i in self.columns_]

    def _matrix(self, states: Sequence[UIState]) -> np.ndarray:
        return self.features_.transform(states)[:, self.columns_]

    def _accuracy(self, X: np.ndarray, y: np.ndarray) -> float:
        if self.model_ is None:
            return float(np.mean(y == 0)) if len(y) else 0.0
        if not len(y):
            return 0.0
        with threadpool_limits(limits=self.n_threads, user_api="openmp"):
            return float(np.mean(self.model_.predict(X) == y))


_PARAMS = (
    "n_last",
    "max_categories",
    "max_classes",
    "max_counted_actions",
    "max_iter",
    "learning_rate",
    "max_leaf_nodes",
    "min_samples_leaf",
    "l2_regularization",
    "early_stopping",
    "validation_fraction",
    "n_iter_no_change",
    "exclude_fields",
    "max_samples",
    "recency_half_life",
    "include_first_step",
    "n_threads",
    "random_state",
)
