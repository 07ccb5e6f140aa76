"""CriticFeaturizer: one numeric row per (state, proposal), the input of the feature critic.

Every feature is read straight from the pydantic attributes of the state and the proposal (no serialisation, no
``model_dump``), so a row costs a few microseconds and 100,000 rows featurise in a few seconds on one core.

=========================== ============ ==========================================================================
Feature                      Kind         Meaning
=========================== ============ ==========================================================================
``logprob``                  policy       sequence log-probability of the proposed action
``probability``              policy       its normalised probability over the policy's candidates
``margin``                   policy       probability margin to the runner-up candidate
``entropy``                  policy       entropy of the candidate distribution (nats)
``rank``                     policy       0 for the policy's top proposal
``runner_up_probability``    policy       probability of ``alternatives[0]``; 0 without alternatives
``n_alternatives``           policy       number of runner-up candidates the proposal carries
``action_type``              categorical  the action type (``fill_field``, ``send_text_to_chat`` ...)
``target_required``          proposal     1 if the target control is required; -1 for an action without a control
``target_has_value``         proposal     1 if the target control already holds a non-empty value; -1 as above
``target_disabled``          proposal     1 if the target control is disabled or not on the screen; -1 as above
``value_in_state``           proposal     fill / select only (else -1): 1 if the value occurs verbatim in the state
                                          (a screen value, a panel field or table cell, or, from 3 characters on,
                                          inside a chat message), else 0
``reply_length``             proposal     characters of a ``send_text_to_chat`` reply; 0 for other actions
``repeats_last_action``      proposal     1 if the proposal has the ``action_key`` of the last recent action
``target_in_recent``         proposal     1 if a recent action targeted the same control; -1 without a control
``process``                  categorical  ``state.process_id``
``screen``                   categorical  ``process_id:screen_id`` (screen ids are only unique per process)
``step``                     state        ``state.step``
``n_chat_messages``          state        messages in the chat
``last_from_customer``       state        1 if the last chat message is the customer's
``last_customer_length``     state        characters of the customer's latest message; 0 without one
``n_panels``                 state        read-only panels on the screen
``n_required_empty``         state        required value-holding controls (text, number, date, select ...) that
                                          are still empty
``customer_asked``           state        1 if the customer's latest message asks something (holds a "?")
``first_customer_length``    state        characters of the customer's first message (a second request makes it
                                          long)
``customer_exclamations``    state        "!" in the customer's messages (an upset customer)
``table_rows``               state        the most rows any panel shows (a tool result to read a row from)
``reply_unsupported_facts``  proposal     replies only (else -1): identifiers, dates and amounts the reply states
                                          that no value of the state holds (``policy.replies.unsupported_facts``)
``reply_row_mismatch``       proposal     replies only (else -1): 1 if the reply quotes a table value from a row
                                          other than the one it is about (``policy.replies.row_consistent``)
=========================== ============ ==========================================================================

The policy-confidence columns ``logprob``, ``probability`` and ``margin`` are marked monotonically increasing
(``monotonic_cst_``): other things equal, a more confident policy is never less likely to be right. The trees may
still lower P(acceptable) for a confident proposal through another feature (a repeated action), but they cannot
fit noise in sparse ranges of the confidence; measured on sandbox reviews with ~2,000 training rows, this gained
up to 3.5 AUC points where the confidence was the only signal and cost nothing elsewhere.

A categorical column holds integer codes learned by ``fit``: the ``max_categories`` most frequent training values
get the codes ``1 .. max_categories`` and everything else, including values first seen after fitting, the reserved
code ``UNKNOWN`` (0). ``categorical_mask_`` marks these columns for ``HistGradientBoostingClassifier``'s
``categorical_features``, which takes codes below its ``max_bins`` (255); a code the classifier never saw in
training (such as ``UNKNOWN``) is treated by it as a missing value.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Self

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin

from critic.base import CriticInput
from critic.errors import NotFittedError
from policy.replies import row_consistent, unsupported_facts
from policy.values import MAX_ROWS, MIN_SOURCE_CHARS
from schemas.actions import (
    ClickControl,
    FillField,
    SelectOption,
    SendTextToChat,
    ToggleCheckbox,
    action_key,
)
from schemas.proposal import Proposal
from schemas.screen import VALUE_KINDS, ControlKind
from schemas.state import ChatRole, UIState

UNKNOWN = 0
"""The code of a category not in the fitted vocabulary."""
MAX_CODES = 254
"""HistGradientBoostingClassifier takes categorical codes 0 .. 254 (its default ``max_bins`` is 255)."""

CATEGORICAL = ("action_type", "process", "screen")
NUMERIC = (
    "logprob",
    "probability",
    "margin",
    "entropy",
    "rank",
    "runner_up_probability",
    "n_alternatives",
    "target_required",
    "target_has_value",
    "target_disabled",
    "value_in_state",
    "reply_length",
    "repeats_last_action",
    "target_in_recent",
    "step",
    "n_chat_messages",
    "last_from_customer",
    "last_customer_length",
    "n_panels",
    "n_required_empty",
    "customer_asked",
    "first_customer_length",
    "customer_exclamations",
    "table_rows",
    "reply_unsupported_facts",
    "reply_row_mismatch",
)
FEATURE_NAMES: tuple[str, ...] = CATEGORICAL + NUMERIC
INCREASING = ("logprob", "probability", "margin")

# Controls that hold a value a required-field check can find empty.
_VALUED_KINDS = VALUE_KINDS | {ControlKind.SELECT, ControlKind.CHECKBOX}
_CONTROL_ACTIONS = (FillField, SelectOption, ToggleCheckbox, ClickControl)


def check_training_set(X: Sequence[CriticInput], y: Sequence[int] | np.ndarray) -> np.ndarray:
    """The labels of a critic's training set as int64 0/1, after checking what every critic's ``fit`` needs:
    a non-empty ``X``, one label per input, labels in {0, 1}, and both classes present (a critic that only saw
    one class cannot rank proposals)."""
    if len(X) == 0:
        raise ValueError("X: empty; a critic needs at least one labelled proposal")
    labels = np.asarray(y)
    if labels.ndim != 1:
        raise ValueError(f"y: expected a 1-D sequence of labels, got shape {labels.shape}")
    if len(labels) != len(X):
        raise ValueError(f"y: {len(labels)} labels for {len(X)} inputs in X")
    if labels.dtype == bool:
        labels = labels.astype(np.int64)
    if labels.dtype.kind not in "iuf" or not np.isin(labels, (0, 1)).all():
        raise ValueError("y: labels must be 0 (not acceptable) or 1 (acceptable)")
    labels = labels.astype(np.int64)
    if len(np.unique(labels)) < 2:
        raise ValueError(f"y: only one class ({int(labels[0])}); a critic needs accepted and rejected proposals")
    return labels


def _in_state(value: str, state: UIState) -> bool:
    """Whether ``value`` occurs verbatim among the state's values: a cheap stand-in for the policy's
    ``value_sources``, which also extracts chat entities and costs ~75 µs a state, several times a whole feature
    row here; a substring test of the chat answers the same question for a copied value."""
    text = value.strip()
    if not text:
        return False
    for current in state.values.values():
        if current is not None and not isinstance(current, bool) and str(current).strip() == text:
            return True
    for panel in state.panels.values():
        for field in panel.fields.values():
            if field.strip() == text:
                return True
        for row in panel.rows[:MAX_ROWS]:
            for cell in row.values():
                if cell.strip() == text:
                    return True
    if len(text) >= MIN_SOURCE_CHARS:  # "on" or "1" would occur inside unrelated words and numbers
        for message in state.chat:
            if text in message.text:
                return True
    return False


def _row(state: UIState, proposal: Proposal) -> tuple[list[float], tuple[str, str, str]]:
    """The numeric features (in ``NUMERIC`` order) and the raw categorical values of one input."""
    features = proposal.features
    alternatives = proposal.alternatives
    action = proposal.action
    controls = state.screen.controls
    values = state.values
    recent = state.recent_actions

    control_id = action.control_id if isinstance(action, _CONTROL_ACTIONS) else None
    target = None
    required_empty = 0
    for control in controls:
        if control.id == control_id:
            target = control
        if control.required and control.kind in _VALUED_KINDS:
            current = values.get(control.id)
            if current is None or current == "":
                required_empty += 1

    if control_id is None:
        required = has_value = disabled = in_recent = -1.0
    else:
        if target is None:  # a control the screen lacks cannot be acted on: it counts as disabled
            required, has_value, disabled = 0.0, 0.0, 1.0
        else:
            current = values.get(control_id)
            required = float(target.required)
            has_value = float(current is not None and current != "")
            disabled = float(not target.enabled)
        in_recent = float(any(getattr(a, "control_id", None) == control_id for a in recent))

    if isinstance(action, FillField):
        value_in_state = float(_in_state(action.value, state))
    elif isinstance(action, SelectOption):
        value_in_state = float(_in_state(action.option, state))
    else:
        value_in_state = -1.0
    reply_length = float(len(action.text)) if isinstance(action, SendTextToChat) else 0.0
    repeats = float(bool(recent) and action_key(recent[-1]) == action_key(action))

    chat = state.chat
    customer = [m.text for m in chat if m.role == ChatRole.CUSTOMER]
    last_customer = len(customer[-1]) if customer else 0
    if isinstance(action, SendTextToChat):
        unsupported = float(len(unsupported_facts(action.text, state)))
        row_mismatch = float(row_consistent(action.text, state) != action.text)
    else:
        unsupported = row_mismatch = -1.0

    numeric = [
        features.logprob,
        features.probability,
        features.margin,
        features.entropy,
        float(features.rank),
        alternatives[0].features.probability if alternatives else 0.0,
        float(len(alternatives)),
        required,
        has_value,
        disabled,
        value_in_state,
        reply_length,
        repeats,
        in_recent,
        float(state.step),
        float(len(chat)),
        float(bool(chat) and chat[-1].role == ChatRole.CUSTOMER),
        float(last_customer),
        float(len(state.panels)),
        float(required_empty),
        float(bool(customer) and "?" in customer[-1]),
        float(len(customer[0])) if customer else 0.0,
        float(sum(text.count("!") for text in customer)),
        float(max((len(panel.rows) for panel in state.panels.values()), default=0)),
        unsupported,
        row_mismatch,
    ]
    categories = (str(action.type), state.process_id, f"{state.process_id}:{state.screen.screen_id}")
    return numeric, categories


def _extract(X: Sequence[CriticInput]) -> tuple[np.ndarray, list[tuple[str, str, str]]]:
    rows: list[list[float]] = []
    categories: list[tuple[str, str, str]] = []
    for i, item in enumerate(X):
        try:
            numeric, raw = _row(item.state, item.proposal)
        except AttributeError as exc:
            raise ValueError(f"X[{i}]: not a CriticInput (a state and a proposal): {exc}") from None
        rows.append(numeric)
        categories.append(raw)
    matrix = np.array(rows, dtype=np.float64).reshape(len(rows), len(NUMERIC))
    return matrix, categories


class CriticFeaturizer(TransformerMixin, BaseEstimator):
    """(state, proposal) -> float32 feature row; see the module docstring for the features.

    ``fit`` learns the vocabularies of the categorical columns (``categories_``); ``transform`` returns an
    ``(n, len(feature_names_))`` float32 array, categorical codes first (``categorical_mask_``), with the
    monotonic constraints of its columns in ``monotonic_cst_``."""

    def __init__(self, max_categories: int = MAX_CODES) -> None:
        self.max_categories = max_categories

    def fit(self, X: Sequence[CriticInput], y: object = None) -> Self:
        self._fit_raw(_extract(X)[1])
        return self

    def fit_transform(self, X: Sequence[CriticInput], y: object = None, **fit_params: object) -> np.ndarray:
        numeric, raw = _extract(X)
        self._fit_raw(raw)
        return self._assemble(numeric, raw)

    def transform(self, X: Sequence[CriticInput]) -> np.ndarray:
        if not hasattr(self, "categories_"):
            raise NotFittedError("CriticFeaturizer: call fit before transform")
        numeric, raw = _extract(X)
        return self._assemble(numeric, raw)

    def get_feature_names_out(self, input_features: object = None) -> np.ndarray:
        return np.asarray(FEATURE_NAMES, dtype=object)

    def _fit_raw(self, raw: list[tuple[str, str, str]]) -> None:
        if not 1 <= self.max_categories <= MAX_CODES:
            raise ValueError(f"max_categories: {self.max_categories} is outside 1..{MAX_CODES}")
        if not raw:
            raise ValueError("X: empty; nothing to learn categories from")
        self.categories_: dict[str, list[str]] = {}
        self.codes_: dict[str, dict[str, int]] = {}
        for column, name in enumerate(CATEGORICAL):
            counts = Counter(r[column] for r in raw)
            # Most frequent first, ties by name: the vocabulary (and so every code) is deterministic.
            kept = sorted(counts, key=lambda v: (-counts[v], v))[: self.max_categories]
            self.categories_[name] = kept
            self.codes_[name] = {value: code for code, value in enumerate(kept, start=UNKNOWN + 1)}
        self.feature_names_: list[str] = list(FEATURE_NAMES)
        self.categorical_mask_: np.ndarray = np.array([n in CATEGORICAL for n in FEATURE_NAMES], dtype=bool)
        self.monotonic_cst_: np.ndarray = np.array([int(n in INCREASING) for n in FEATURE_NAMES], dtype=np.int8)
        self.n_features_in_ = len(FEATURE_NAMES)

    def _assemble(self, numeric: np.ndarray, raw: list[tuple[str, str, str]]) -> np.ndarray:
        out = np.empty((len(raw), len(FEATURE_NAMES)), dtype=np.float32)
        for column, name in enumerate(CATEGORICAL):
            codes = self.codes_[name]
            out[:, column] = [codes.get(r[column], UNKNOWN) for r in raw]
        out[:, len(CATEGORICAL) :] = numeric
        return out
