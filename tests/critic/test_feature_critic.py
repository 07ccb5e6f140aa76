"""The feature critic, its featurizer, the policy-confidence baseline, and loading saved critics by kind."""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score
from threadpoolctl import threadpool_limits

from critic.artifact import CRITIC_FILE
from critic.base import Candidate, labels
from critic.confidence import PolicyConfidenceCritic
from critic.errors import NotFittedError
from critic.feature_critic import FeatureCritic
from critic.features import FEATURE_NAMES, UNKNOWN, CriticFeaturizer
from critic.persist import load_critic
from sandbox.copilot import run_copilot
from sandbox.simulate import StepModel
from schemas import Action, FeedbackRecord, UIState, Verdict
from schemas.actions import ActionValidationError, FillField, action_key, validate_action
from schemas.decision import RejectReason
from tests.critic.conftest import record_from_review


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    # HistGradientBoosting uses OpenMP; the tests share two cores with other suites.
    with threadpool_limits(limits=1):
        yield


def column(matrix: np.ndarray, name: str) -> np.ndarray:
    return matrix[:, FEATURE_NAMES.index(name)]


# ---- a data set where the policy's confidence misses one failure mode -------------------------------------------


def looping_feedback(sessions: int, seed: int) -> tuple[list[FeedbackRecord], np.ndarray]:
    """Copilot reviews of a policy that usually proposes the best action, sometimes another one the sandbox
    considers (often a slip), and now and then repeats its last action (a loop). Its confidence is informative
    but noisy about acceptance, except on loops, where it is as confident as on good proposals: only the
    context (``repeats_last_action``) can tell those apart. Returns the records and which of them are loops."""
    rng = random.Random(seed)
    loops: set[str] = set()

    def policy(state: UIState, model: StepModel) -> Action:
        recent = state.recent_actions
        if recent and rng.random() < 0.08:
            try:
                validate_action(recent[-1], state.screen)
            except ActionValidationError:
                pass
            else:
                loops.add(state.etag)
                return recent[-1]
        options = list(model.predictive.values())
        if rng.random() < 0.25:
            return rng.choice(options)[0]
        return max(options, key=lambda ap: ap[1])[0]

    records: list[FeedbackRecord] = []
    is_loop: list[bool] = []
    for step in run_copilot(sessions, seed, policy=policy):
        loop = step.state.etag in loops
        acceptable = step.verdict == Verdict.ACCEPT or step.reason == RejectReason.ACCEPTABLE_ALTERNATIVE
        p = min(0.999, max(0.001, rng.gauss(0.85 if acceptable or loop else 0.5, 0.2)))
        records.append(record_from_review(step, p, rng))
        is_loop.append(loop)
    return records, np.array(is_loop)


@pytest.fixture(scope="module")
def looping() -> tuple[list[FeedbackRecord], np.ndarray]:
    return looping_feedback(300, seed=3)


def session_split(records: list[FeedbackRecord], test_share: float = 0.4) -> np.ndarray:
    """True for rows of the last ``test_share`` of sessions: no session has rows on both sides."""
    sessions = sorted({r.state.session_id for r in records})
    test = set(sessions[int((1 - test_share) * len(sessions)) :])
    return np.array([r.state.session_id in test for r in records])


def pick(records: list[FeedbackRecord], mask: np.ndarray) -> list[FeedbackRecord]:
    return [records[i] for i in np.flatnonzero(mask)]


# ---- featurizer ---------------------------------------------------------------------------------------------


def test_featurizer_shape_names_and_values(feedback_records: list[FeedbackRecord]) -> None:
    featurizer = CriticFeaturizer().fit(feedback_records)
    matrix = featurizer.transform(feedback_records)
    assert matrix.shape == (len(feedback_records), len(FEATURE_NAMES))
    assert matrix.dtype == np.float32
    assert featurizer.feature_names_ == list(FEATURE_NAMES)
    assert list(featurizer.get_feature_names_out()) == list(FEATURE_NAMES)
    assert not np.isnan(matrix).any()
    categorical = [n for n, c in zip(FEATURE_NAMES, featurizer.categorical_mask_, strict=True) if c]
    assert categorical == ["action_type", "process", "screen"]
    increasing = [n for n, c in zip(FEATURE_NAMES, featurizer.monotonic_cst_, strict=True) if c == 1]
    assert increasing == ["logprob", "probability", "margin"] and featurizer.monotonic_cst_.min() == 0
    # Every training value has a known code; the reserved code is left for values seen later.
    for name in categorical:
        codes = column(matrix, name)
        assert codes.min() >= 1
        assert codes.max() == len(featurizer.categories_[name])
    assert set(featurizer.categories_["process"]) == {r.state.process_id for r in feedback_records}
    probability = np.array([r.proposal.features.probability for r in feedback_records], dtype=np.float32)
    np.testing.assert_array_equal(column(matrix, "probability"), probability)
    steps = np.array([r.state.step for r in feedback_records], dtype=np.float32)
    np.testing.assert_array_equal(column(matrix, "step"), steps)
    # fit_transform is fit then transform.
    np.testing.assert_array_equal(CriticFeaturizer().fit_transform(feedback_records), matrix)


def test_featurizer_reads_the_proposal_against_its_state(feedback_records: list[FeedbackRecord]) -> None:
    record = next(r for r in feedback_records if isinstance(r.proposal.action, FillField) and r.state.recent_actions)
    action = record.proposal.action
    assert isinstance(action, FillField)
    state = record.state
    last = state.recent_actions[-1]

    def row(new_action: Action) -> dict[str, float]:
        item = Candidate(state, record.proposal.model_copy(update={"action": new_action}))
        values = featurizer.transform([item])[0]
        return dict(zip(FEATURE_NAMES, values.tolist(), strict=True))

    featurizer = CriticFeaturizer().fit(feedback_records)
    as_proposed = row(action)
    copied = next(v for p in state.panels.values() for v in p.fields.values() if len(v) >= 3)
    assert row(action.model_copy(update={"value": copied}))["value_in_state"] == 1.0
    assert row(action.model_copy(update={"value": "Zq9-not-anywhere"}))["value_in_state"] == 0.0
    assert as_proposed["target_required"] in (0.0, 1.0)
    assert row(last)["repeats_last_action"] == 1.0
    assert as_proposed["repeats_last_action"] == float(action_key(action) == action_key(last))
    missing = row(FillField(control_id="no_such_control", value="x"))
    assert (missing["target_disabled"], missing["target_required"], missing["target_in_recent"]) == (1.0, 0.0, 0.0)
    chat_reply = next(r for r in feedback_records if r.proposal.action.type == "send_text_to_chat")
    values = dict(zip(FEATURE_NAMES, featurizer.transform([chat_reply])[0].tolist(), strict=True))
    assert values["reply_length"] == len(chat_reply.proposal.action.text)  # type: ignore[union-attr]
    assert values["target_required"] == values["value_in_state"] == -1.0


def test_unknown_categories_get_the_reserved_code(feedback_records: list[FeedbackRecord]) -> None:
    process = feedback_records[0].state.process_id
    seen = [r for r in feedback_records if r.state.process_id == process]
    unseen = [r for r in feedback_records if r.state.process_id != process]
    featurizer = CriticFeaturizer().fit(seen)
    matrix = featurizer.transform(unseen)
    assert (column(matrix, "process") == UNKNOWN).all()
    assert (column(matrix, "screen") == UNKNOWN).all()
    assert not np.isnan(matrix).any()
    # A capped vocabulary keeps the most frequent values; the rest share the reserved code.
    capped = CriticFeaturizer(max_categories=2).fit(feedback_records)
    codes = column(capped.transform(feedback_records), "screen")
    assert set(np.unique(codes)) == {UNKNOWN, 1, 2}
    with pytest.raises(ValueError, match="max_categories"):
        CriticFeaturizer(max_categories=300).fit(feedback_records)


def test_featurizer_input_errors(feedback_records: list[FeedbackRecord]) -> None:
    with pytest.raises(NotFittedError):
        CriticFeaturizer().transform(feedback_records)
    with pytest.raises(ValueError, match="X"):
        CriticFeaturizer().fit([])
    with pytest.raises(ValueError, match=r"X\[1\]"):
        CriticFeaturizer().fit([feedback_records[0], "not an input"])  # type: ignore[list-item]
    assert CriticFeaturizer().fit(feedback_records).transform([]).shape == (0, len(FEATURE_NAMES))


# ---- the critics -------------------------------------------------------------------------------------------


def test_feature_critic_beats_the_confidence_baseline_where_context_matters(
    looping: tuple[list[FeedbackRecord], np.ndarray],
) -> None:
    records, is_loop = looping
    y = labels(records)
    test = session_split(records)
    train = ~test
    assert (y[train] == 0).sum() > 100 and is_loop[test].sum() > 50  # enough of both for a meaningful AUC
    critic = FeatureCritic().fit(pick(records, train), y[train])
    baseline = PolicyConfidenceCritic().fit(pick(records, train), y[train])

    def auc(model: FeatureCritic | PolicyConfidenceCritic, mask: np.ndarray) -> float:
        return float(roc_auc_score(y[mask], model.predict_proba(pick(records, mask))[:, 1]))

    overall = auc(critic, test), auc(baseline, test)
    no_loops = auc(critic, test & ~is_loop), auc(baseline, test & ~is_loop)
    print(
        f"\nAUC feature/confidence: all {overall[0]:.3f}/{overall[1]:.3f}, no loops {no_loops[0]:.3f}/{no_loops[1]:.3f}"
    )
    # The confidence cannot see loops; the critic can, and so ranks the held-out sessions far better.
    assert overall[0] > overall[1] + 0.15
    # Where the confidence is the only signal, the critic keeps nearly all of it. It cannot quite match the
    # exact confidence on ~2,000 training rows, since it also fits noise in the other features: over seeds 1-7
    # of this data it trailed by 0 to 4.8 AUC points (and led by 1.2 once).
    assert no_loops[0] > 0.8
    assert no_loops[0] > no_loops[1] - 0.06
    importances = critic.feature_importances(pick(records, test), y[test], n_repeats=3)
    assert importances[0][0] == "repeats_last_action"
    assert {name for name, _ in importances} == set(FEATURE_NAMES)


def test_confidence_critic_scores_are_the_policy_confidence(feedback_records: list[FeedbackRecord]) -> None:
    y = labels(feedback_records)
    features = [r.proposal.features for r in feedback_records]
    expected = {
        "probability": [f.probability for f in features],
        "margin": [f.margin for f in features],
        "logprob": [math.exp(f.logprob) for f in features],
    }
    for feature, p in expected.items():
        critic = PolicyConfidenceCritic(feature).fit(feedback_records, y)  # type: ignore[arg-type]
        proba = critic.predict_proba(feedback_records)
        np.testing.assert_allclose(proba[:, 1], p)
        np.testing.assert_allclose(proba.sum(axis=1), 1.0)
        np.testing.assert_array_equal(critic.classes_, [0, 1])
    with pytest.raises(ValueError, match="feature"):
        PolicyConfidenceCritic("entropy").fit(feedback_records, y)  # type: ignore[arg-type]


def test_save_load_and_dispatch(feedback_records: list[FeedbackRecord], tmp_path: Path) -> None:
    y = labels(feedback_records)
    feature = FeatureCritic(max_iter=50, min_samples_leaf=10).fit(feedback_records, y)
    confidence = PolicyConfidenceCritic("margin").fit(feedback_records, y)
    expected_feature = feature.predict_proba(feedback_records)
    assert expected_feature.shape == (len(feedback_records), 2)
    assert np.ptp(expected_feature[:, 1]) > 0  # a constant model would make the round trip trivial

    path = feature.save(tmp_path / "feature")
    assert json.loads((path / CRITIC_FILE).read_text())["kind"] == "feature"
    loaded = FeatureCritic.load(path)
    assert loaded.get_params() == feature.get_params()
    np.testing.assert_array_equal(loaded.predict_proba(feedback_records), expected_feature)
    dispatched = load_critic(path)
    assert isinstance(dispatched, FeatureCritic)
    np.testing.assert_array_equal(dispatched.predict_proba(feedback_records), expected_feature)

    conf_path = confidence.save(tmp_path / "confidence")
    dispatched_conf = load_critic(conf_path)
    assert isinstance(dispatched_conf, PolicyConfidenceCritic) and dispatched_conf.feature == "margin"
    np.testing.assert_array_equal(
        dispatched_conf.predict_proba(feedback_records), confidence.predict_proba(feedback_records)
    )

    # Saving over an existing critic replaces it whole, leaving no temporary directories behind.
    confidence.save(path)
    assert isinstance(load_critic(path), PolicyConfidenceCritic)
    assert not (path / "model.joblib").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["confidence", "feature"]


def test_load_critic_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="nothing_here"):
        load_critic(tmp_path / "nothing_here")
    odd = tmp_path / "odd"
    odd.mkdir()
    (odd / CRITIC_FILE).write_text(json.dumps({"kind": "astrology"}))
    with pytest.raises(ValueError, match=r"odd.*astrology"):
        load_critic(odd)
    with pytest.raises(ValueError, match="kind"):
        FeatureCritic.load(odd)


def test_fit_input_errors(feedback_records: list[FeedbackRecord]) -> None:
    y = labels(feedback_records)
    for critic in (FeatureCritic(), PolicyConfidenceCritic()):
        with pytest.raises(NotFittedError):
            critic.predict_proba(feedback_records)
        with pytest.raises(NotFittedError):
            critic.save("/nonexistent/never-written")
        with pytest.raises(ValueError, match="X: empty"):
            critic.fit([], [])
        with pytest.raises(ValueError, match=r"y: .* labels for"):
            critic.fit(feedback_records, y[:-1])
        with pytest.raises(ValueError, match="one class"):
            critic.fit(feedback_records, np.ones(len(feedback_records), dtype=int))
        with pytest.raises(ValueError, match="y: labels must be"):
            critic.fit(feedback_records, np.full(len(feedback_records), 2))
    fitted = FeatureCritic().fit(feedback_records, y)
    assert fitted.predict_proba([]).shape == (0, 2)
    np.testing.assert_array_equal(fitted.classes_, [0, 1])


def test_featurising_and_fitting_twenty_thousand_rows(feedback_records: list[FeedbackRecord]) -> None:
    """Timing sanity only (printed, not asserted: the machine is shared)."""
    reps = 20_000 // len(feedback_records) + 1
    rows = (feedback_records * reps)[:20_000]
    y = np.tile(labels(feedback_records), reps)[:20_000]
    start = time.perf_counter()
    matrix = CriticFeaturizer().fit_transform(rows)
    featurised = time.perf_counter() - start
    critic = FeatureCritic().fit(rows, y)
    total = time.perf_counter() - start
    print(f"\n20,000 rows: featurise {featurised:.2f} s; critic fit (featurise + trees) {total - featurised:.2f} s")
    assert matrix.shape == (20_000, len(FEATURE_NAMES))
    assert critic.predict_proba(rows[:10]).shape == (10, 2)
