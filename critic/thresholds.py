"""Risk-controlled auto-execution thresholds (Learn-then-Test with fixed-sequence testing), per group of slices.

For a group of rows (a cell of the pooled hierarchy, a slice, an action type, a process, or everything) we look
for the lowest critic-score threshold ``t`` such that proposals scored ``>= t`` can run in the background with a
bounded error rate.

The guarantee. Fix ``alpha`` (tolerated error rate) and ``delta`` (tolerated failure probability). For each group
separately: with probability at least ``1 - delta`` over the draw of that group's calibration rows (sessions, when
they are given), the threshold ``t`` returned for the group (if any) satisfies

    P(label = 0 | score >= t)  <=  alpha

for a future row of the group, i.e. the error rate among future auto-executed rows of the group is at most
``alpha``. This holds under two assumptions: (1) the group's calibration sessions and its future sessions are
exchangeable (i.i.d. draws from one distribution; rows of one session may depend on each other when sessions are
given, see "Sessions" below); (2) the score function (the critic, its calibration, and
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

Sessions. Steps of one session are not independent: a hard case produces several errors. When the rows carry
their session (``sessions=``), the bound on each candidate is the session-level one: the Clopper-Pearson bound
at the effective sample size ``n / deff`` (Korn and Graubard 1998, for proportions from clustered samples),
where the design effect ``deff >= 1`` is the ratio of the session-clustered (ratio-estimator) variance of the
error rate to the binomial one. It equals the plain bound when errors are spread as if independent, and widens
as errors cluster in sessions. A group also needs ``min_sessions`` sessions. Without sessions every row is its
own session (the plain bound).

Pooling (``granularity="pooled"``): the hierarchy global -> action type -> slice. Which rows share a threshold is
decided from row counts alone, before any label is read: a slice with at least ``own_cell_rows`` rows is a cell
of its own; the other slices of an action type pool into the action type's cell if together they have that many
rows; what is left pools into one global cell. A slice with fewer than ``min_slice_rows`` rows is in no cell and
gets no threshold (it stays in copilot mode). Each cell is tested as above with delta split over the cells
tested (Bonferroni), so with probability >= 1 - delta every cell's error is at most alpha at once, and so is the
error among all auto-executed steps (a weighted mean of the cells'). A slice with few labels thereby runs under
its action type's or the global threshold; the guarantee covers the pool, not each small slice alone (per-slice
monitoring and demotion in the runtime watch those). With admission rows (``admitted_slices``, rows apart from the
threshold rows), a slice whose errors the critic underestimates never pools: with ``min_rows`` threshold rows it
is a cell of its own, its threshold resting on its own rows only, else it is in no cell. The cells still depend
on counts and on rows the threshold test never reads, so the guarantee is unchanged.

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
from scipy.special import bdtr, betainc
from scipy.stats import beta, poisson

from schemas.risk import SliceKey

Granularity = Literal["slice", "action_type", "process", "global", "pooled"]
GRANULARITIES: tuple[str, ...] = get_args(Granularity)
AdmissionCorrection = Literal["holm", "none"]
ADMISSION_CORRECTIONS: tuple[str, ...] = get_args(AdmissionCorrection)
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
    passing by luck becomes likely (measured: 13% of draws instead of 10% in bench/critic_sandbox.py).
    ``min_sessions``: with sessions given, a group needs at least this many for its session-level bound;
    ``own_cell_rows`` and ``min_slice_rows``: the pooled hierarchy's cells (see the module docstring);
    ``admission_level``: the significance of the admission check (:func:`admitted_slices`);
    ``admission_correction``: "holm" tests the slices as a family (``admission_level`` bounds the chance of refusing
    any slice the critic is right about), "none" each slice at ``admission_level`` alone (more refusals by chance,
    more power against one misjudged slice)."""

    alpha: float = 0.05
    delta: float = 0.1
    min_rows: int = 100
    min_executed: int | None = None
    granularity: Granularity = "slice"
    max_candidates: int | None = None
    simultaneous: bool = True
    min_sessions: int = 20
    own_cell_rows: int = 1000
    min_slice_rows: int = 30
    admission_level: float = 0.05
    admission_correction: AdmissionCorrection = "holm"

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
        for name in ("min_sessions", "own_cell_rows", "min_slice_rows"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0.0 < self.admission_level < 1.0:
            raise ValueError(f"admission_level must be in (0, 1), got {self.admission_level}")
        if self.admission_correction not in ADMISSION_CORRECTIONS:
            raise ValueError(
                f"admission_correction must be one of {ADMISSION_CORRECTIONS}, got {self.admission_correction!r}"
            )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ThresholdConfig:
        return cls(**data)


@dataclass(frozen=True, slots=True)
class ThresholdResult:
    """The threshold chosen for one group (None: stays in copilot mode) and the evidence behind it.

    ``n_executed``, ``errors``, ``empirical_error``, ``upper_bound`` and ``coverage`` describe the calibration rows
    with score ``>= threshold`` (0 / None when there is no threshold); ``reason`` says why in words;
    ``n_sessions`` the group's sessions (0 when rows were not grouped by session) and ``design_effect`` the
    clustering inflation of the bound at the threshold (1 = as if independent)."""

    threshold: float | None
    n_rows: int
    n_executed: int
    errors: int
    empirical_error: float | None
    upper_bound: float | None
    coverage: float
    reason: str
    n_sessions: int = 0
    design_effect: float | None = None

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


def effective_upper(errors: float, n: float, design_effect: float, delta: float) -> float:
    """The one-sided ``(1 - delta)`` Clopper-Pearson bound at the effective sample size ``n / design_effect``
    (Korn and Graubard 1998): ``errors / deff`` errors among ``n / deff`` rows, with the beta quantile taken at
    these non-integer counts. ``design_effect = 1`` gives the plain bound."""
    if design_effect < 1.0:
        raise ValueError(f"design_effect must be >= 1, got {design_effect}")
    if n <= 0 or errors >= n:
        return 1.0
    n_eff, k_eff = n / design_effect, errors / design_effect
    return float(beta.ppf(1.0 - delta, k_eff + 1.0, n_eff - k_eff))


def _effective_passes(
    errors: np.ndarray, n: np.ndarray, design_effect: np.ndarray, alpha: float, delta: float
) -> np.ndarray:
    """``effective_upper(...) <= alpha`` over arrays, by duality: the beta quantile is <= alpha exactly when the
    beta distribution function at alpha is >= 1 - delta (the regularized incomplete beta, far cheaper)."""
    n_eff, k_eff = n / design_effect, errors / design_effect
    out = np.zeros(n.shape, dtype=bool)
    ok = (n > 0) & (errors < n)
    out[ok] = betainc(k_eff[ok] + 1.0, n_eff[ok] - k_eff[ok], alpha) >= 1.0 - delta
    return out


def design_effects(
    errors: np.ndarray, executed: np.ndarray, s_ee: np.ndarray, s_en: np.ndarray, s_nn: np.ndarray, m: np.ndarray
) -> np.ndarray:
    """The design effect of the error rate among executed rows, per candidate: the session-clustered variance of
    the ratio estimator p = sum(E_i) / sum(N_i) (``m/(m-1) * sum((E_i - p N_i)^2) / n^2``, from the running sums
    ``s_ee = sum E_i^2``, ``s_en = sum E_i N_i``, ``s_nn = sum N_i^2`` over the ``m`` sessions with executed rows)
    over the binomial ``p (1 - p) / n``; at least 1, and 1 where it is undefined (no error, one session)."""
    n = executed.astype(np.float64)
    p = errors / np.maximum(n, 1.0)
    clustered = (s_ee - 2.0 * p * s_en + p * p * s_nn) / np.maximum(n * n, 1.0)
    clustered *= np.where(m > 1, m / np.maximum(m - 1, 1), 0.0)
    binomial = p * (1.0 - p) / np.maximum(n, 1.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(binomial > 0, clustered / binomial, 1.0)
    return np.maximum(ratio, 1.0)


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


def _refuse(n_rows: int, reason: str, n_sessions: int = 0) -> ThresholdResult:
    return ThresholdResult(None, n_rows, 0, 0, None, None, 0.0, reason, n_sessions)


def _session_codes(sessions: Sequence[Any] | np.ndarray | None, n: int) -> tuple[np.ndarray, int]:
    """Integer session codes per row (each row its own session when ``sessions`` is None) and their count."""
    if sessions is None:
        return np.arange(n, dtype=np.int64), n
    if len(sessions) != n:
        raise ValueError(f"sessions has {len(sessions)} rows but scores has {n}")
    if n == 0:
        return np.zeros(0, dtype=np.int64), 0
    raw = np.asarray(sessions)
    if raw.dtype.kind in "iu":
        _, codes = np.unique(raw, return_inverse=True)
    else:  # ids as strings (or anything hashable): number them in order of appearance
        seen: dict[Any, int] = {}
        codes = np.fromiter((seen.setdefault(x, len(seen)) for x in sessions), np.int64, n)
    return codes.astype(np.int64), int(codes.max()) + 1


def _clustered_sums(order: np.ndarray, codes: np.ndarray, err: np.ndarray) -> tuple[np.ndarray, ...]:
    """Running sums over rows taken in ``order`` (highest score first): sum E_i^2, sum E_i N_i, sum N_i^2 over
    sessions i (E_i errors, N_i rows executed so far in session i) and the number of sessions touched."""
    sess, e = codes[order], err[order].astype(np.float64)
    position = np.arange(order.size)
    by_session = np.lexsort((position, sess))  # each session's rows, in score order
    sorted_sess, sorted_e = sess[by_session], e[by_session]
    first = np.r_[True, sorted_sess[1:] != sorted_sess[:-1]]
    group_start = np.maximum.accumulate(np.where(first, np.arange(order.size), 0))
    cum_e = np.cumsum(sorted_e)
    n_before = np.empty(order.size)
    e_before = np.empty(order.size)
    n_before[by_session] = np.arange(order.size) - group_start
    e_before[by_session] = cum_e - sorted_e - (cum_e[group_start] - sorted_e[group_start])
    # Adding one row (error e) to a session with E errors among N rows changes E^2 by 2Ee + e, E N by E + eN + e,
    # N^2 by 2N + 1.
    s_ee = np.cumsum(2.0 * e_before * e + e)
    s_en = np.cumsum(e_before + e * n_before + e)
    s_nn = np.cumsum(2.0 * n_before + 1.0)
    m = np.cumsum(n_before == 0)
    return s_ee, s_en, s_nn, m


def select_threshold(
    scores: np.ndarray | Sequence[float],
    labels: np.ndarray | Sequence[int],
    config: ThresholdConfig,
    sessions: Sequence[Any] | np.ndarray | None = None,
) -> ThresholdResult:
    """The lowest score threshold whose error rate passes fixed-sequence testing (see the module docstring).

    ``labels`` are critic labels: 1 = acceptable, 0 = an error had the proposal been executed; ``sessions`` the
    session of each row (None: rows are independent). Candidates are the distinct scores (or ``max_candidates``
    of them), tested from the highest down; a candidate executing fewer than ``min_executed`` rows, or fewer
    than :func:`min_passing_rows` (too few to pass even without an error), is skipped without a test; testing
    stops at the first candidate whose upper bound (session-level with sessions) exceeds ``alpha``."""
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
    codes, n_sessions = _session_codes(sessions, n)
    reported_sessions = n_sessions if sessions is not None else 0
    if n < config.min_rows:
        return _refuse(n, f"too few rows (n={n} < min_rows={config.min_rows})", reported_sessions)
    if sessions is not None and n_sessions < config.min_sessions:
        return _refuse(n, f"too few sessions ({n_sessions} < min_sessions={config.min_sessions})", reported_sessions)

    order = np.argsort(-s, kind="stable")
    neg_values, inverse = np.unique(-s, return_inverse=True)
    values = -neg_values  # distinct thresholds, highest first
    executed = np.cumsum(np.bincount(inverse, minlength=values.size))
    errors = np.cumsum(np.bincount(inverse, weights=1 - lab, minlength=values.size)).astype(np.int64)
    if sessions is not None:
        sums = _clustered_sums(order, codes, 1 - lab)
        last = executed - 1  # the last row (in score order) of each candidate's executed set
        deff = design_effects(errors, executed, *(x[last] for x in sums))
    else:
        deff = np.ones(values.size)

    def bound(i: int, delta: float) -> float:
        return effective_upper(float(errors[i]), float(executed[i]), float(deff[i]), delta)

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
            reported_sessions,
        )
    tested = np.arange(first, values.size)
    if config.max_candidates is not None and tested.size > config.max_candidates:
        # Evenly spaced in rank among the testable scores, always ending at the lowest (all rows executed).
        tested = first + np.unique(np.linspace(0, tested.size - 1, config.max_candidates).round().astype(np.int64))
    if sessions is None:
        # Clopper-Pearson duality: UCB(k, n) <= alpha  <=>  P(Binomial(n, alpha) <= k) <= delta. The binomial
        # CDF is several times cheaper than the beta quantile, which is computed only for the rows we report.
        passes = bdtr(errors[tested], executed[tested], config.alpha) <= config.delta
    else:
        passes = _effective_passes(errors[tested], executed[tested], deff[tested], config.alpha, config.delta)
    failed = np.flatnonzero(~passes)
    if failed.size and failed[0] == 0:
        t, k, m = float(values[first]), int(errors[first]), int(executed[first])
        return _refuse(
            n,
            f"no threshold passes: the highest testable one, {t:.6g}, executes {m} rows with {k} errors "
            f"(upper bound {bound(first, config.delta):.4f} > alpha {config.alpha})",
            reported_sessions,
        )

    chosen = int(tested[failed[0] - 1] if failed.size else tested[-1])
    k, m = int(errors[chosen]), int(executed[chosen])
    if failed.size:
        stop = int(tested[failed[0]])
        k_stop, m_stop = int(errors[stop]), int(executed[stop])
        reason = (
            f"lowest passing threshold; the next candidate, {values[stop]:.6g}, executes {m_stop} rows with "
            f"{k_stop} errors (upper bound {bound(stop, config.delta):.4f} > alpha {config.alpha}), which stops "
            "the test"
        )
    else:
        reason = "every candidate passes: all rows are executed"
    return ThresholdResult(
        threshold=float(values[chosen]),
        n_rows=n,
        n_executed=m,
        errors=k,
        empirical_error=k / m,
        upper_bound=bound(chosen, config.delta),
        coverage=m / n,
        reason=reason,
        n_sessions=reported_sessions,
        design_effect=float(deff[chosen]) if sessions is not None else None,
    )


def group_key(slice_key: SliceKey, granularity: Granularity) -> str:
    """The name of the group a slice belongs to at ``granularity`` (for "pooled" the cell depends on the
    calibration rows' counts: use ``SliceThresholds.group_of``)."""
    if granularity == "slice":
        return str(slice_key)
    if granularity == "action_type":
        return slice_key.action_type.value
    if granularity == "process":
        return slice_key.process_id
    if granularity == "global":
        return GLOBAL_KEY
    if granularity == "pooled":
        raise ValueError("pooled: a slice's cell depends on the calibration rows; use SliceThresholds.group_of")
    raise ValueError(f"granularity must be one of {GRANULARITIES}, got {granularity!r}")


def level_of(cell: str) -> str:
    """The hierarchy level a pooled cell key names: "slice", "action_type" or "global"."""
    if cell == GLOBAL_KEY:
        return "global"
    return "slice" if "/" in cell else "action_type"


def _slice_names(slices: Sequence[SliceKey]) -> list[tuple[str, str]]:
    """(slice key, action type) per row as strings, each distinct slice formatted once."""
    cache: dict[tuple[str, str], tuple[str, str]] = {}
    out = []
    for key in slices:
        raw = (key.process_id, key.action_type)
        named = cache.get(raw)
        if named is None:
            named = cache[raw] = (str(key), key.action_type.value)
        out.append(named)
    return out


def pooled_cells(
    slices: Sequence[SliceKey],
    config: ThresholdConfig,
    names: list[tuple[str, str]] | None = None,
    admitted: set[str] | None = None,
) -> dict[str, str]:
    """Slice key -> cell key of the pooled hierarchy, from row counts only (never the threshold rows' labels): a
    slice with at least ``own_cell_rows`` rows is its own cell; the other slices of an action type share the
    action type's cell when they have that many rows together; the rest share the global cell. Slices with fewer
    than ``min_slice_rows`` rows are in no cell. With ``admitted`` given, a slice outside it never pools: it is a
    cell of its own when it has ``min_rows`` rows (its threshold then rests on its own rows alone, so the critic's
    misjudging it costs coverage, not the guarantee), else in no cell."""
    counts: dict[str, int] = {}
    types: dict[str, str] = {}
    for name, kind in names if names is not None else _slice_names(slices):
        counts[name] = counts.get(name, 0) + 1
        types[name] = kind
    alone = {
        name: name
        for name, c in counts.items()
        if admitted is not None and name not in admitted and c >= config.min_rows
    }
    eligible = {
        name: c for name, c in counts.items() if c >= config.min_slice_rows and (admitted is None or name in admitted)
    }
    members = {name: name for name, c in eligible.items() if c >= config.own_cell_rows} | alone
    pooled: dict[str, int] = {}
    for name, c in eligible.items():
        if name not in members:
            pooled[types[name]] = pooled.get(types[name], 0) + c
    for name in eligible:
        if name not in members:
            kind = types[name]
            members[name] = kind if pooled[kind] >= config.own_cell_rows else GLOBAL_KEY
    return dict(sorted(members.items()))


@dataclass(frozen=True)
class Admission:
    """Labelled rows apart from the threshold rows (the pipeline's calibration split) on which a slice must show
    that the critic's scores hold for it before it may run under a pooled threshold (see ``admitted_slices``)."""

    scores: np.ndarray | Sequence[float]
    labels: np.ndarray | Sequence[int]
    slices: Sequence[SliceKey]


def admitted_slices(admission: Admission, config: ThresholdConfig) -> tuple[set[str], dict[str, str]]:
    """The slices whose admission rows do not contradict the critic, and the others with the reason.

    A pooled threshold is certified for its cell as a whole; a slice whose errors the critic underestimates (a new
    process it never saw, say) would ride on its neighbours' record. So before the cells are formed, each slice's
    errors on the admission rows are compared with the errors its scores predict (the sum of 1 - score): if more
    errors are observed than that prediction makes plausible (a one-sided Poisson test per slice; with
    ``admission_correction="holm"`` Holm's step-down over the slices tested, so that ``admission_level`` bounds
    the chance of refusing any slice the critic is right about), the slice may not pool (``pooled_cells``: a cell
    of its own with ``min_rows`` rows, else none); so is a slice with fewer than ``min_slice_rows // 3``
    admission rows, or none (no evidence yet). The check reads only rows the threshold test does not use, so the
    cells are fixed before the threshold rows' labels are read and the guarantee is unchanged."""
    s = np.asarray(admission.scores, dtype=np.float64)
    y = np.asarray(admission.labels)
    if not s.size == y.size == len(admission.slices):
        raise ValueError("admission: scores, labels and slices differ in length")
    predicted: dict[str, float] = {}
    observed: dict[str, int] = {}
    for (name, _), score, label in zip(_slice_names(admission.slices), s, y, strict=True):
        predicted[name] = predicted.get(name, 0.0) + (1.0 - float(score))
        observed[name] = observed.get(name, 0) + int(label == 0)
    ok: set[str] = set()
    refused: dict[str, str] = {}
    rows = {name: 0 for name in observed}
    for name, _ in _slice_names(admission.slices):
        rows[name] += 1
    needed = max(1, config.min_slice_rows // 3)
    p_values: dict[str, float] = {}
    for name, errors in observed.items():
        if rows[name] < needed:
            refused[name] = f"{rows[name]} admission rows (< {needed}): too few to check the critic on it"
            continue
        p_values[name] = float(poisson.sf(errors - 1, predicted[name])) if errors > 0 else 1.0
    # Holm's step-down over the slices tested: each is refused only while its p-value stays under the level
    # divided by the slices not yet refused, so a critic that is right about every slice has every slice
    # refused with probability at most admission_level (at 0.05 each, 35 slices would see one or more refused
    # in 83% of the windows, by chance alone).
    ordered = sorted(p_values.items(), key=lambda item: (item[1], item[0]))
    holm = config.admission_correction == "holm"
    for rank, (name, p_value) in enumerate(ordered):
        level = config.admission_level / (len(ordered) - rank) if holm else config.admission_level
        if p_value >= level:
            ok.update(n for n, _ in ordered[rank:])
            break
        refused[name] = (
            f"{observed[name]} errors on its admission rows where the critic's scores predict "
            f"{predicted[name]:.1f} (p = {p_value:.2g} < {level:.2g}"
            + (f", Holm over {len(ordered)} slices" if holm else "")
            + "): the critic underestimates its errors"
        )
    return ok, refused


class SliceThresholds(Mapping[str, ThresholdResult]):
    """Thresholds per group (read-only mapping group key -> result) and the configuration that produced them.

    With ``granularity="pooled"`` the groups are the cells of the hierarchy (slice, action type, global) and
    ``members`` maps every slice that may run to its cell; ``threshold_for`` looks a slice up there, so a slice
    with few labels gets its action type's or the global threshold, and a slice not in ``members`` (unseen, or
    too few rows) gets none."""

    def __init__(
        self,
        config: ThresholdConfig,
        results: Mapping[str, ThresholdResult],
        members: Mapping[str, str] | None = None,
        refused: Mapping[str, str] | None = None,
    ) -> None:
        self.config = config
        self._results = dict(sorted(results.items()))
        self.members: dict[str, str] = dict(sorted((members or {}).items()))
        # Slices the admission check kept out of every cell, with the reason (pooled only).
        self.refused: dict[str, str] = dict(sorted((refused or {}).items()))

    def __getitem__(self, key: str) -> ThresholdResult:
        return self._results[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._results)

    def __len__(self) -> int:
        return len(self._results)

    def group_of(self, slice_key: SliceKey) -> str | None:
        """The key of the group (pooled: the cell) whose threshold applies to ``slice_key``; None when the slice
        is in no cell of a pooled hierarchy."""
        if self.config.granularity == "pooled":
            return self.members.get(str(slice_key))
        return group_key(slice_key, self.config.granularity)

    def level_for(self, slice_key: SliceKey) -> str | None:
        """Where a pooled slice's threshold comes from: "slice", "action_type", "global"; None if it has none."""
        group = self.group_of(slice_key)
        if group is None or self.threshold_for(slice_key) is None:
            return None
        return level_of(group) if self.config.granularity == "pooled" else self.config.granularity

    def threshold_for(self, slice_key: SliceKey) -> float | None:
        """The threshold of the slice's group; None (stay in copilot mode) for a group without one or unseen."""
        group = self.group_of(slice_key)
        result = None if group is None else self._results.get(group)
        return None if result is None else result.threshold

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "config": self.config.to_dict(),
            "groups": {k: r.to_dict() for k, r in self._results.items()},
        }
        if self.members:
            out["members"] = dict(self.members)
        if self.refused:
            out["refused"] = dict(self.refused)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SliceThresholds:
        return cls(
            ThresholdConfig.from_dict(data["config"]),
            {k: ThresholdResult.from_dict(r) for k, r in data["groups"].items()},
            data.get("members"),
            data.get("refused"),
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
        if self.members:
            by_cell: dict[str, list[str]] = {}
            for name, cell in self.members.items():
                by_cell.setdefault(cell, []).append(name)
            lines += ["", "| cell | level | slices |", "|---|---|---|"]
            lines += [f"| {cell} | {level_of(cell)} | {', '.join(names)} |" for cell, names in sorted(by_cell.items())]
        if self.refused:
            lines += ["", "| slice kept in copilot mode | why |", "|---|---|"]
            lines += [f"| {name} | {why} |" for name, why in self.refused.items()]
        return "\n".join(lines) + "\n"


def fit_slice_thresholds(
    scores: np.ndarray | Sequence[float],
    labels: np.ndarray | Sequence[int],
    slices: Sequence[SliceKey],
    config: ThresholdConfig | None = None,
    sessions: Sequence[Any] | np.ndarray | None = None,
    admission: Admission | None = None,
) -> SliceThresholds:
    """One :func:`select_threshold` per group of rows, grouped by ``config.granularity`` (for "pooled", the
    cells of :func:`pooled_cells`; rows of slices in no cell are left out). ``sessions``: each row's session,
    for the session-level bound (None: rows are independent). ``admission`` (pooled only): rows apart from these
    on which each slice must pass :func:`admitted_slices` to join a cell."""
    config = config or ThresholdConfig()
    s = np.asarray(scores, dtype=np.float64)
    lab = np.asarray(labels)
    if not s.size == lab.size == len(slices):
        raise ValueError(f"scores ({s.size}), labels ({lab.size}) and slices ({len(slices)}) differ in length")
    if sessions is not None and len(sessions) != s.size:
        raise ValueError(f"sessions ({len(sessions)}) and scores ({s.size}) differ in length")
    if s.size == 0:
        return SliceThresholds(config, {})
    members: dict[str, str] | None = None
    refused: dict[str, str] = {}
    if config.granularity == "pooled":
        named = _slice_names(slices)
        admitted = None
        if admission is not None:
            admitted, refused = admitted_slices(admission, config)
            for name, _ in named:
                if name not in admitted and name not in refused:
                    refused[name] = "no admission rows: the critic has not been checked on it yet"
        members = pooled_cells(slices, config, named, admitted)
        # A refused slice with enough rows of its own is tested alone; "refused" keeps those left in no cell.
        refused = {name: why for name, why in refused.items() if name not in members}
        names = [members.get(name) for name, _ in named]
    else:
        names = [group_key(k, config.granularity) for k in slices]
    keep = np.fromiter((name is not None for name in names), bool, len(names))
    sess = None if sessions is None else _session_codes(sessions, len(names))[0]
    codes: dict[str, int] = {}
    inverse = np.fromiter((codes.setdefault(str(name), len(codes)) for name in names if name is not None), np.int64)
    s, lab = s[keep], lab[keep]
    sess = None if sess is None else sess[keep]
    if s.size == 0:
        return SliceThresholds(config, {}, members, refused)
    order = np.argsort(inverse, kind="stable")
    counts = np.bincount(inverse, minlength=len(codes))
    bounds = np.cumsum(counts)[:-1]
    per_group = config
    tested = int(np.sum(counts >= config.min_rows))  # row counts only: choosing the split never looks at labels
    if config.simultaneous and tested > 1:
        per_group = dataclasses.replace(config, delta=config.delta / tested)
    results = {
        name: select_threshold(s[rows], lab[rows], per_group, None if sess is None else sess[rows])
        for name, rows in zip(codes, np.split(order, bounds), strict=True)
    }
    return SliceThresholds(config, results, members, refused)
