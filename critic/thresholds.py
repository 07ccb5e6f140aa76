"""Risk-controlled auto-execution thresholds per slice (Learn-then-Test with fixed-sequence testing).

For a group of rows (a slice, an action type, a process, or everything) we look for the lowest critic-score
threshold ``t`` such that proposals scored ``>= t`` can run in the background with a bounded error rate.

The guarantee. Fix ``alpha`` (tolerated error rate) and ``delta`` (tolerated failure probability). For each group
separately: with probability at least ``1 - delta`` over the draw of that group's calibration rows, the
threshold ``t`` returned for the group (if any) satisfies

    P(label = 0 | score >= t)  <=  alpha

for a future row of the group, i.e. the error rate among future auto-executed rows of the group is at most
``alpha``. This holds under two assumptions: (1) the group's calibration rows and its future rows are
exchangeable (i.i.d. draws from one distribution); (2) the score function (the critic, its calibration, and
this configuration, granularity included) was fixed before the calibration rows were seen, so these rows must not
be the critic's training or calibration data. When no threshold is returned the group stays in copilot mode,
which is always safe.

Over groups: with ``simultaneous`` (the default) ``delta`` is split over the groups that are tested
(Bonferroni), so with probability ``1 - delta`` every group's bound holds at once and the error among all
auto-executed rows is at most ``alpha``; without it the bound is per group only. What it does not say: it says nothing about a group whose rows drift
(new form version, new operators); and rerunning with another configuration after seeing the result spends the
guarantee. One approximation: the candidate thresholds are the calibration scores themselves, not a grid fixed in
advance, so each test also counts the boundary row that defines its threshold; the simulation in
``tests/critic/test_thresholds.py`` checks that the failure rate stays within ``delta``.

Why the procedure is valid. Each candidate ``t`` is the hypothesis "risk(t) > alpha"; it is rejected (``t``
passes) when the one-sided Clopper-Pearson ``(1 - delta)`` upper confidence bound on the error rate of the
rows executed at ``t`` is ``<= alpha``. Testing the candidates in an order fixed before looking at the labels
(highest threshold first) and stopping at the first failure controls the probability of passing any bad
threshold at ``delta`` without splitting ``delta`` across candidates (fixed-sequence testing, Angelopoulos
et al. 2021, "Learn then Test").
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal, get_args

import numpy as np
from scipy.special import bdtr
from scipy.stats import beta

from schemas.risk import SliceKey

Granularity = Literal["slice", "action_type", "process", "global"]
GRANULARITIES: tuple[str, ...] = get_args(Granularity)
GLOBAL_KEY = "*"


@dataclass(frozen=True, slots=True)
class ThresholdConfig:
    """``alpha``: tolerated error rate among executed rows; ``delta``: tolerated probability that the bound fails;
    ``min_rows``: a group with fewer calibration rows gets no threshold; ``min_executed``: a candidate threshold
    executing fewer rows is skipped (a bound on so few rows is useless and would spend the test); None (the
    default) uses :func:`planned_rows`, the fewest rows on which an error rate of ``alpha / 2`` would pass, so the
    sequence starts where a good slice can pass rather than at a handful of rows where one unlucky error ends it;
    ``granularity``: which rows share a threshold; ``max_candidates``: when set, test only this many candidates,
    evenly spaced in rank among the testable scores. Testing every distinct score (None) lets one unlucky error
    among the top scores end the sequence early; a coarser grid steps over such dips and is closer to the grid
    fixed in advance that the guarantee assumes. ``simultaneous``: split ``delta`` over the groups that have
    ``min_rows`` rows (Bonferroni), so that with probability ``1 - delta`` every group's threshold holds at once,
    and hence the error among all auto-executed rows, a weighted mean of the groups' errors, is at most
    ``alpha``; without it the bound holds per group only, and with many groups near the boundary one of them
    passing by luck becomes likely (measured: 13% of draws instead of 10% in bench/critic_sandbox.py)."""

    alpha: float = 0.05
    delta: float = 0.1
    min_rows: int = 100
    min_executed: int | None = None
    granularity: Granularity = "slice"
    max_candidates: int | None = None
    simultaneous: bool = True

    def __post_init__(self) -> None:
        if not 0.0 < self.alpha < 1.0:
            raise ValueError(f"alpha must be in (0, 1), got {self.alpha}")
        if not 0.0 < self.delta < 1.0:
            raise ValueError(f"delta must be in (0, 1), got {self.delta}")
        if self.min_rows < 1:
            raise ValueError(f"min_rows must be >= 1, got {self.min_rows}")
        if self.min_executed is not None and self.min_executed < 1:
            raise ValueError(f"min_executed must be >= 1 or None (auto), got {self.min_executed}")
        if self.max_candidates is not None and self.max_candidates < 1:
            raise ValueError(f"max_candidates must be >= 1 or None, got {self.max_candidates}")
        if self.granularity not in GRANULARITIES:
            raise ValueError(f"granularity must be one of {GRANULARITIES}, got {self.granularity!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ThresholdConfig:
        return cls(**data)


@dataclass(frozen=True, slots=True)
class ThresholdResult:
    """The threshold chosen for one group (None: stays in copilot mode) and the evidence behind it.

    ``n_executed``, ``errors``, ``empirical_error``, ``upper_bound`` and ``coverage`` describe the calibration rows
    with score ``>= threshold`` (0 / None when there is no threshold); ``reason`` says why in words."""

    threshold: float | None
    n_rows: int
    n_executed: int
    errors: int
    empirical_error: float | None
    upper_bound: float | None
    coverage: float
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ThresholdResult:
        return cls(**data)


def clopper_pearson_upper(errors: int, n: int, delta: float) -> float:
    """One-sided ``(1 - delta)`` Clopper-Pearson upper bound on an error rate from ``errors`` out of ``n``.

    With no rows nothing is known, so the bound is 1."""
    if not 0.0 < delta < 1.0:
        raise ValueError(f"delta must be in (0, 1), got {delta}")
    if n < 0 or not 0 <= errors <= n:
        raise ValueError(f"errors must be in [0, n] with n >= 0, got errors={errors}, n={n}")
    if n == 0 or errors == n:
        return 1.0
    return float(beta.ppf(1.0 - delta, errors + 1, n - errors))


def min_passing_rows(alpha: float, delta: float) -> int:
    """The fewest executed rows whose upper bound can be <= ``alpha``: with zero errors the Clopper-Pearson bound
    is ``1 - delta ** (1 / n)``, so ``n >= log(delta) / log(1 - alpha)``."""
    n = max(1, math.ceil(math.log(delta) / math.log1p(-alpha)))
    # Guard the float rounding of the logarithms at the boundary.
    while n > 1 and clopper_pearson_upper(0, n - 1, delta) <= alpha:
        n -= 1
    while clopper_pearson_upper(0, n, delta) > alpha:
        n += 1
    return n


@functools.lru_cache(maxsize=256)
def planned_rows(alpha: float, delta: float) -> int:
    """The fewest executed rows ``n`` on which ``floor(n * alpha / 2)`` errors (half the tolerated rate) keep the
    Clopper-Pearson bound <= ``alpha``: where fixed-sequence testing should start. Depends on ``alpha`` and
    ``delta`` only, never on labels, so starting there keeps the guarantee. Measured on 25,620 sandbox copilot
    rows (alpha 0.1, per action type): starting at 30 rows certified 1.1% of the steps, starting here about 60%."""
    n = min_passing_rows(alpha, delta)
    while clopper_pearson_upper(math.floor(n * alpha / 2), n, delta) > alpha:
        n += 1
    return n


def start_rows(config: ThresholdConfig) -> int:
    """Executed rows of the first tested candidate under ``config``."""
    floor = min_passing_rows(config.alpha, config.delta)
    if config.min_executed is None:
        return max(floor, planned_rows(config.alpha, config.delta))
    return max(floor, config.min_executed)


def _refuse(n_rows: int, reason: str) -> ThresholdResult:
    return ThresholdResult(None, n_rows, 0, 0, None, None, 0.0, reason)


def select_threshold(
    scores: np.ndarray | Sequence[float], labels: np.ndarray | Sequence[int], config: ThresholdConfig
) -> ThresholdResult:
    """The lowest score threshold whose error rate passes fixed-sequence testing (see the module docstring).

    ``labels`` are critic labels: 1 = acceptable, 0 = an error had the proposal been executed. Candidates are
    the distinct scores (or ``max_candidates`` of them), tested from the highest down; a candidate executing fewer
    than ``min_executed`` rows, or fewer than :func:`min_passing_rows` (too few to pass even without an error), is
    skipped without a test; testing stops at the first candidate whose upper bound exceeds ``alpha``."""
    s = np.asarray(scores, dtype=np.float64)
    lab = np.asarray(labels)
    if s.ndim != 1 or lab.ndim != 1:
        raise ValueError("scores and labels must be one-dimensional")
    if s.size != lab.size:
        raise ValueError(f"scores has {s.size} rows but labels has {lab.size}")
    if not np.isfinite(s).all():
        raise ValueError("scores must be finite (no NaN or inf)")
    if not np.isin(lab, (0, 1)).all():
        raise ValueError("labels must hold only 0 and 1")
    n = int(s.size)
    if n < config.min_rows:
        return _refuse(n, f"too few rows (n={n} < min_rows={config.min_rows})")

    neg_values, inverse = np.unique(-s, return_inverse=True)
    values = -neg_values  # distinct thresholds, highest first
    executed = np.cumsum(np.bincount(inverse, minlength=values.size))
    errors = np.cumsum(np.bincount(inverse, weights=1 - lab, minlength=values.size)).astype(np.int64)

    # Executed counts only grow as the threshold falls, so the testable candidates are a suffix. A candidate
    # that could not pass even with zero errors is skipped too: testing it would only end the sequence. Both
    # rules look at scores alone, never at labels, so skipping keeps the guarantee.
    needed = start_rows(config)
    first = int(np.searchsorted(executed, needed))
    if first == values.size:
        return _refuse(
            n,
            f"no threshold executes {needed} rows (min_executed={config.min_executed or 'auto'}; the test starts "
            f"where an error rate of alpha/2 could pass at alpha={config.alpha} with delta={config.delta:.4g})",
        )
    tested = np.arange(first, values.size)
    if config.max_candidates is not None and tested.size > config.max_candidates:
        # Evenly spaced in rank among the testable scores, always ending at the lowest (all rows executed).
        tested = first + np.unique(np.linspace(0, tested.size - 1, config.max_candidates).round().astype(np.int64))
    # Clopper-Pearson duality: UCB(k, n) <= alpha  <=>  P(Binomial(n, alpha) <= k) <= delta. The binomial CDF
    # is several times cheaper than the beta quantile, which is computed only for the rows we report.
    passes = bdtr(errors[tested], executed[tested], config.alpha) <= config.delta
    failed = np.flatnonzero(~passes)
    if failed.size and failed[0] == 0:
        t, k, m = float(values[first]), int(errors[first]), int(executed[first])
        ucb = clopper_pearson_upper(k, m, config.delta)
        return _refuse(
            n,
            f"no threshold passes: the highest testable one, {t:.6g}, executes {m} rows with {k} errors "
            f"(upper bound {ucb:.4f} > alpha {config.alpha})",
        )

    chosen = int(tested[failed[0] - 1] if failed.size else tested[-1])
    k, m = int(errors[chosen]), int(executed[chosen])
    if failed.size:
        stop = int(tested[failed[0]])
        k_stop, m_stop = int(errors[stop]), int(executed[stop])
        reason = (
            f"lowest passing threshold; the next candidate, {values[stop]:.6g}, executes {m_stop} rows with "
            f"{k_stop} errors (upper bound {clopper_pearson_upper(k_stop, m_stop, config.delta):.4f} > alpha "
            f"{config.alpha}), which stops the test"
        )
    else:
        reason = "every candidate passes: all rows are executed"
    return ThresholdResult(
        threshold=float(values[chosen]),
        n_rows=n,
        n_executed=m,
        errors=k,
        empirical_error=k / m,
        upper_bound=clopper_pearson_upper(k, m, config.delta),
        coverage=m / n,
        reason=reason,
    )


def group_key(slice_key: SliceKey, granularity: Granularity) -> str:
    """The name of the group a slice belongs to at ``granularity``."""
    if granularity == "slice":
        return str(slice_key)
    if granularity == "action_type":
        return slice_key.action_type.value
    if granularity == "process":
        return slice_key.process_id
    if granularity == "global":
        return GLOBAL_KEY
    raise ValueError(f"granularity must be one of {GRANULARITIES}, got {granularity!r}")


class SliceThresholds(Mapping[str, ThresholdResult]):
    """Thresholds per group (read-only mapping group key -> result) and the configuration that produced them."""

    def __init__(self, config: ThresholdConfig, results: Mapping[str, ThresholdResult]) -> None:
        self.config = config
        self._results = dict(sorted(results.items()))

    def __getitem__(self, key: str) -> ThresholdResult:
        return self._results[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._results)

    def __len__(self) -> int:
        return len(self._results)

    def threshold_for(self, slice_key: SliceKey) -> float | None:
        """The threshold of the slice's group; None (stay in copilot mode) for a group without one or unseen."""
        result = self._results.get(group_key(slice_key, self.config.granularity))
        return None if result is None else result.threshold

    def to_dict(self) -> dict[str, Any]:
        return {"config": self.config.to_dict(), "groups": {k: r.to_dict() for k, r in self._results.items()}}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SliceThresholds:
        return cls(
            ThresholdConfig.from_dict(data["config"]),
            {k: ThresholdResult.from_dict(r) for k, r in data["groups"].items()},
        )

    def render_markdown(self) -> str:
        def num(x: float | None, fmt: str) -> str:
            return "—" if x is None else format(x, fmt)

        lines = [
            "| group | rows | threshold | executed | coverage | empirical error | UCB | reason |",
            "|---|---:|---:|---:|---:|---:|---:|---|",
        ]
        for key, r in self._results.items():
            cells = [
                key,
                str(r.n_rows),
                num(r.threshold, ".4f"),
                str(r.n_executed),
                f"{r.coverage:.1%}",
                num(r.empirical_error, ".2%"),
                num(r.upper_bound, ".2%"),
                r.reason,
            ]
            lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
        return "\n".join(lines) + "\n"


def fit_slice_thresholds(
    scores: np.ndarray | Sequence[float],
    labels: np.ndarray | Sequence[int],
    slices: Sequence[SliceKey],
    config: ThresholdConfig | None = None,
) -> SliceThresholds:
    """One :func:`select_threshold` per group of rows, grouped by ``config.granularity``."""
    config = config or ThresholdConfig()
    s = np.asarray(scores, dtype=np.float64)
    lab = np.asarray(labels)
    if not s.size == lab.size == len(slices):
        raise ValueError(f"scores ({s.size}), labels ({lab.size}) and slices ({len(slices)}) differ in length")
    if s.size == 0:
        return SliceThresholds(config, {})
    codes: dict[str, int] = {}
    inverse = np.fromiter(
        (codes.setdefault(group_key(k, config.granularity), len(codes)) for k in slices), np.int64, len(slices)
    )
    order = np.argsort(inverse, kind="stable")
    counts = np.bincount(inverse, minlength=len(codes))
    bounds = np.cumsum(counts)[:-1]
    per_group = config
    tested = int(np.sum(counts >= config.min_rows))  # row counts only: choosing the split never looks at labels
    if config.simultaneous and tested > 1:
        per_group = dataclasses.replace(config, delta=config.delta / tested)
    results = {
        name: select_threshold(s[rows], lab[rows], per_group)
        for name, rows in zip(codes, np.split(order, bounds), strict=True)
    }
    return SliceThresholds(config, results)
