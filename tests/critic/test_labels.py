"""The label rules: risk as operators mean it (the default), the paper's accept label, the graded variant."""

from __future__ import annotations

from datetime import timedelta

import pytest

from critic.base import (
    BASELINE_LABEL,
    DEFAULT_LABEL,
    LABEL_RULES,
    critic_label,
    has_label,
    labelled,
    labels,
    review_label,
)
from critic.feedback import SYNTHETIC_EPOCH
from critic.pipeline import PipelineConfig, check_feedback, train_critic
from schemas import FeedbackRecord, RejectReason
from tests.critic.conftest import synthetic_feedback

REASONS = (None, *RejectReason)


def test_the_default_rule_counts_model_errors_and_other_as_errors_only() -> None:
    assert DEFAULT_LABEL == "unacceptable" and BASELINE_LABEL == "accepted"
    table = {reason: review_label(reason is None, reason) for reason in REASONS}
    assert table == {
        None: 1,  # accepted
        RejectReason.MODEL_ERROR: 0,
        RejectReason.OTHER: 0,  # unexplained: an error, to stay on the safe side
        RejectReason.ACCEPTABLE_ALTERNATIVE: 1,  # a preference, not an error
        RejectReason.ENVIRONMENT: None,  # no label: re-observe and retry
    }
    # The paper's label: every rejection is an error. The graded variant: alternatives are fine, the rest not.
    assert [review_label(r is None, r, "accepted") for r in REASONS] == [1, 0, 0, 0, 0]
    assert {r: review_label(r is None, r, "acceptable") for r in RejectReason} == {
        RejectReason.MODEL_ERROR: 0,
        RejectReason.ACCEPTABLE_ALTERNATIVE: 1,
        RejectReason.ENVIRONMENT: 0,
        RejectReason.OTHER: 0,
    }
    # The runtime's check ``reason in LABEL_RULES[DEFAULT_LABEL]`` (does not count against the proposal).
    assert LABEL_RULES[DEFAULT_LABEL] == {RejectReason.ACCEPTABLE_ALTERNATIVE, RejectReason.ENVIRONMENT}
    with pytest.raises(ValueError, match="unknown rule"):
        review_label(False, RejectReason.OTHER, "nope")  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def records() -> list[FeedbackRecord]:
    rows = synthetic_feedback(60, 12)
    assert {r.reason for r in rows} >= {RejectReason.ENVIRONMENT, RejectReason.MODEL_ERROR}
    return rows


def test_environment_rows_carry_no_label_and_are_left_out(records: list[FeedbackRecord]) -> None:
    environment = [r for r in records if r.reason == RejectReason.ENVIRONMENT]
    assert environment and not any(has_label(r) for r in environment)
    assert all(has_label(r, "accepted") for r in environment)
    kept = labelled(records)
    assert len(kept) == len(records) - len(environment) and kept == [r for r in records if r not in environment]
    assert labelled(records, "accepted") == records
    # ``labels`` stays total: an unlabelled row counts as not against the proposal.
    assert [critic_label(r) for r in environment] == [1] * len(environment)
    assert list(labels(kept)) == [review_label(r.accepted, r.reason) for r in kept]


def test_the_pipeline_trains_on_labelled_rows_only(records: list[FeedbackRecord]) -> None:
    rows = [r.model_copy(update={"created_at": SYNTHETIC_EPOCH + timedelta(minutes=i)}) for i, r in enumerate(records)]
    trained = train_critic(rows, PipelineConfig(progress=False, min_rows=50))
    used = trained.splits.fit + trained.splits.calibrate + trained.splits.threshold + trained.splits.test
    assert len(used) == len(labelled(rows))
    assert not any(r.reason == RejectReason.ENVIRONMENT for r in used)
    check_feedback(rows, 50)  # enough labelled rows
    with pytest.raises(ValueError, match="rows in the window"):
        check_feedback(rows, len(labelled(rows)) + 1)
