"""The realised error of autopilot: the share of auto-executed steps operators call unacceptable, from the QA
sample, with an exact-style confidence interval that treats sessions as clusters.

Why it is unbiased: the router samples a step for review by a hash of (seed, proposal id) compared with a fixed
``audit_rate``, among the critic-gated steps it executes, so the sample is a uniform random draw of executed steps
that does not depend on the critic's score, the slice or anything a reviewer will see; every executed step has the
same known inclusion probability ``audit_rate``. The share of unacceptable labels in the sample is then an unbiased
estimate of the share among all executed steps (with a rate that changed over time, weight each item by one over
its rate: Horvitz-Thompson; one rate needs no weights). Environment rejections are left out on both sides (they
are not a statement about the proposal); items not answered yet are left out too, which keeps the estimate
unbiased as long as answering does not depend on the label (reviewers see the item before they know its label).

The interval: steps of one session are not independent (a hard case makes several steps hard), so the variance is
estimated with sessions as clusters (the ratio estimator's between-cluster variance), turned into a design effect
``deff`` (at least 1), and the Clopper-Pearson interval is computed on the effective sample ``n / deff`` with
``errors / deff`` errors (Korn and Graubard 1998, "Confidence intervals for proportions with small expected number
of positive counts estimated from survey data"). With one item per session (the usual case at a 5% rate) ``deff``
is 1 and this is the plain Clopper-Pearson interval over the sampled steps.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

from scipy.stats import beta


@dataclass(frozen=True, slots=True)
class RealisedError:
    """Unacceptable among reviewed executed steps: counts, estimate, two-sided interval, the clusters behind it."""

    errors: int
    reviewed: int
    sessions: int
    design_effect: float
    estimate: float | None
    low: float | None
    high: float | None
    confidence: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def within(self, alpha: float) -> bool | None:
        """Whether the estimate is at most ``alpha`` (None without reviews)."""
        return None if self.estimate is None else self.estimate <= alpha


def _clopper_pearson(errors: float, n: float, confidence: float) -> tuple[float, float]:
    tail = (1.0 - confidence) / 2.0
    low = 0.0 if errors <= 0 else float(beta.ppf(tail, errors, n - errors + 1))
    high = 1.0 if errors >= n else float(beta.ppf(1.0 - tail, errors + 1, n - errors))
    return low, high


def realised_error(labels: Iterable[tuple[str, bool]], confidence: float = 0.95) -> RealisedError:
    """``labels``: one ``(session id, unacceptable)`` per reviewed step (environment rejections left out)."""
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence: must be in (0, 1), got {confidence}")
    per_session: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for session_id, unacceptable in labels:
        counts = per_session[session_id]
        counts[0] += int(bool(unacceptable))
        counts[1] += 1
    n = sum(m for _, m in per_session.values())
    errors = sum(y for y, _ in per_session.values())
    if n == 0:
        return RealisedError(0, 0, 0, 1.0, None, None, None, confidence)
    p = errors / n
    clusters = len(per_session)
    deff = 1.0
    if 0 < errors < n and clusters > 1:
        # Ratio estimator's variance with sessions as clusters, against the variance of n independent steps.
        between = sum((y - p * m) ** 2 for y, m in per_session.values()) * clusters / (clusters - 1) / n**2
        independent = p * (1.0 - p) / (n - 1)  # the same estimator's value with one step per session
        deff = max(1.0, between / independent)
    low, high = _clopper_pearson(errors / deff, n / deff, confidence)
    return RealisedError(errors, n, clusters, round(deff, 4), p, low, high, confidence)
