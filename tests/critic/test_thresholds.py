"""Risk-controlled thresholds on synthetic scores whose true error rates are known."""

from __future__ import annotations

import dataclasses
import json
import math
import time

import numpy as np
import pytest
from scipy.stats import binom

from critic.thresholds import (
    GLOBAL_KEY,
    Admission,
    SliceThresholds,
    ThresholdConfig,
    admitted_slices,
    clopper_pearson_upper,
    effective_upper,
    fit_slice_thresholds,
    group_key,
    min_passing_rows,
    planned_rows,
    pooled_cells,
    select_threshold,
    start_rows,
)
from schemas.actions import ActionType
from schemas.risk import SliceKey

# Error probability c * (1 - s) for a score s ~ U(0, 1): the true error rate among rows with score >= t is
# c * (1 - t) / 2, so with c = 0.3 and alpha = 0.05 exactly the thresholds t >= 2/3 are safe.
C = 0.3


def linear_draw(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    s = rng.random(n)
    return s, (rng.random(n) >= C * (1 - s)).astype(int)


def true_risk(threshold: float) -> float:
    return C * (1 - threshold) / 2


def test_config_validates_its_ranges() -> None:
    for bad in ({"alpha": 0.0}, {"alpha": 1.0}, {"delta": 0.0}, {"min_rows": 0}, {"min_executed": 0}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            ThresholdConfig(**bad)
    with pytest.raises(ValueError, match="granularity"):
        ThresholdConfig(granularity="team")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_candidates"):
        ThresholdConfig(max_candidates=0)


def test_clopper_pearson_against_known_values() -> None:
    assert clopper_pearson_upper(0, 100, 0.05) == pytest.approx(1 - 0.05 ** (1 / 100))
    assert clopper_pearson_upper(10, 10, 0.05) == 1.0
    assert clopper_pearson_upper(0, 0, 0.05) == 1.0
    # The bound is the error rate p at which seeing <= k errors has probability exactly delta.
    for k, n in ((3, 50), (12, 400), (1, 30)):
        ucb = clopper_pearson_upper(k, n, 0.1)
        assert binom.cdf(k, n, ucb) == pytest.approx(0.1, rel=1e-6)
        assert ucb > k / n
    assert clopper_pearson_upper(5, 100, 0.05) < clopper_pearson_upper(6, 100, 0.05)
    assert clopper_pearson_upper(5, 100, 0.05) < clopper_pearson_upper(5, 100, 0.01)
    with pytest.raises(ValueError, match="errors"):
        clopper_pearson_upper(5, 4, 0.1)
    with pytest.raises(ValueError, match="delta"):
        clopper_pearson_upper(1, 4, 1.0)


def test_min_passing_rows_is_where_zero_errors_first_pass() -> None:
    n = min_passing_rows(0.05, 0.1)
    assert n == 45
    assert clopper_pearson_upper(0, n, 0.1) <= 0.05 < clopper_pearson_upper(0, n - 1, 0.1)


def test_refuses_too_few_rows() -> None:
    rng = np.random.default_rng(0)
    s, y = linear_draw(rng, 99)
    result = select_threshold(s, y, ThresholdConfig(min_rows=100))
    assert result.threshold is None
    assert result.reason.startswith("too few rows")
    assert (result.n_rows, result.n_executed, result.coverage) == (99, 0, 0.0)


def test_refuses_when_no_candidate_can_be_tested() -> None:
    result = select_threshold(np.linspace(0, 1, 40), np.ones(40, dtype=int), ThresholdConfig(min_rows=10))
    assert result.threshold is None
    assert f"no threshold executes {planned_rows(0.05, 0.1)} rows" in result.reason
    fixed = select_threshold(
        np.linspace(0, 1, 40), np.ones(40, dtype=int), ThresholdConfig(min_rows=10, min_executed=5)
    )
    assert "no threshold executes 45 rows" in fixed.reason  # never below the zero-error floor


def test_the_test_starts_where_half_the_tolerated_error_rate_could_pass() -> None:
    for alpha, delta in ((0.1, 0.1), (0.05, 0.1 / 7), (0.02, 0.1)):
        n = planned_rows(alpha, delta)
        assert clopper_pearson_upper(math.floor(n * alpha / 2), n, delta) <= alpha
        assert clopper_pearson_upper(math.floor((n - 1) * alpha / 2), n - 1, delta) > alpha
        assert n >= min_passing_rows(alpha, delta)
    assert start_rows(ThresholdConfig(alpha=0.1, delta=0.1)) == planned_rows(0.1, 0.1)
    assert start_rows(ThresholdConfig(alpha=0.1, delta=0.1, min_executed=500)) == 500


def test_starting_later_certifies_a_slice_that_one_early_error_would_refuse() -> None:
    # 1,000 rows, 4% errors spread evenly over the scores: the first 30 executed rows carry one error, which no
    # bound on 30 rows survives, so a test starting there stops at once; from planned_rows on, 4% passes.
    rng = np.random.default_rng(3)
    s = np.sort(rng.random(1000))[::-1]
    y = np.ones(1000, dtype=int)
    y[np.arange(24, 1000, 25)] = 0
    delta = 0.1 / 7  # seven groups tested at once
    early = select_threshold(s, y, ThresholdConfig(alpha=0.1, delta=delta, min_executed=30, max_candidates=30))
    planned = select_threshold(s, y, ThresholdConfig(alpha=0.1, delta=delta, max_candidates=30))
    assert early.threshold is None
    assert planned.threshold is not None and planned.coverage == 1.0


def test_refuses_when_no_candidate_passes() -> None:
    rng = np.random.default_rng(1)
    s = rng.random(2000)
    y = (rng.random(2000) >= 0.2).astype(int)  # 20% errors whatever the score
    result = select_threshold(s, y, ThresholdConfig())
    assert result.threshold is None
    assert result.reason.startswith("no threshold passes")
    assert result.upper_bound is None and result.n_executed == 0


def test_finds_a_wide_threshold_when_top_scores_are_nearly_error_free() -> None:
    rng = np.random.default_rng(2)
    s = rng.random(3000)
    # 1% errors above 0.2 (80% of the rows), 50% below.
    y = (rng.random(3000) >= np.where(s >= 0.2, 0.01, 0.5)).astype(int)
    config = ThresholdConfig()
    result = select_threshold(s, y, config)
    assert result.threshold is not None and result.upper_bound is not None
    assert result.coverage > 0.7
    executed = s >= result.threshold
    assert result.n_executed == executed.sum()
    assert result.errors == (y[executed] == 0).sum()
    assert result.empirical_error == pytest.approx(result.errors / result.n_executed)
    assert result.upper_bound == pytest.approx(clopper_pearson_upper(result.errors, result.n_executed, config.delta))
    assert result.upper_bound <= config.alpha
    # It is the lowest passing candidate: one step lower fails.
    lower = s[s < result.threshold].max()
    below = s >= lower
    assert clopper_pearson_upper(int((y[below] == 0).sum()), int(below.sum()), config.delta) > config.alpha
    assert "stops the test" in result.reason


def test_every_candidate_passing_executes_all_rows() -> None:
    s = np.linspace(0, 1, 500)
    result = select_threshold(s, np.ones(500, dtype=int), ThresholdConfig())
    assert result.threshold == 0.0
    assert result.coverage == 1.0
    assert result.reason == "every candidate passes: all rows are executed"


def test_fixed_sequence_stops_at_the_first_failure() -> None:
    # Ranked from the top: 200 clean rows, 15 errors, then 3000 clean rows. All 3215 rows together would pass
    # (15 / 3215 errors), but the candidates just below the burst fail first, and testing must stop there.
    n_top, n_burst, n_rest = 200, 15, 3000
    y = np.concatenate([np.ones(n_top), np.zeros(n_burst), np.ones(n_rest)]).astype(int)
    s = np.linspace(1.0, 0.0, y.size)
    config = ThresholdConfig()
    assert clopper_pearson_upper(n_burst, y.size, config.delta) <= config.alpha  # the bottom would pass
    result = select_threshold(s, y, config)
    assert result.threshold is not None
    assert result.threshold > s[n_top + n_burst]  # never jumps over the burst
    assert result.coverage < (n_top + n_burst) / y.size
    assert result.errors < n_burst


def test_min_executed_skips_without_spending_a_test() -> None:
    # 3 errors among the 45 highest scores fail the first test; skipping to 200 rows dilutes them and passes.
    y = np.ones(1000, dtype=int)
    y[[5, 20, 40]] = 0
    s = np.linspace(1.0, 0.0, 1000)
    assert select_threshold(s, y, ThresholdConfig(min_executed=30)).threshold is None
    result = select_threshold(s, y, ThresholdConfig(min_executed=200))
    assert result.threshold is not None and result.n_executed >= 200


def test_a_coarse_grid_steps_over_an_early_dip() -> None:
    # One error at rank 50 stops the full sequence at the top; 20 candidates never test there.
    y = np.ones(2000, dtype=int)
    y[50] = 0
    y[1500:] = (np.arange(500) % 4 != 0).astype(int)  # 25% errors at the bottom
    s = np.linspace(1.0, 0.0, 2000)
    fine = select_threshold(s, y, ThresholdConfig(min_executed=30))  # the test starting early, where the dip is
    coarse = select_threshold(s, y, ThresholdConfig(min_executed=30, max_candidates=20))
    assert fine.coverage < 0.05
    assert coarse.threshold is not None and coarse.coverage > 0.5
    assert coarse.upper_bound is not None and coarse.upper_bound <= 0.05


@pytest.mark.parametrize("max_candidates", [None, 20])
def test_the_guarantee_holds_over_repeated_draws(max_candidates: int | None) -> None:
    """Over 300 calibration draws the chosen threshold's true risk exceeds alpha in at most ~delta of them,
    while choosing the lowest threshold with empirical risk <= alpha breaks it in most draws."""
    config = ThresholdConfig(alpha=0.05, delta=0.1, max_candidates=max_candidates)
    rng = np.random.default_rng(3)
    draws, n = 300, 1000
    violations = found = naive_violations = 0
    for _ in range(draws):
        s, y = linear_draw(rng, n)
        result = select_threshold(s, y, config)
        if result.threshold is not None:
            found += 1
            violations += true_risk(result.threshold) > config.alpha
        order = np.argsort(-s)
        within = np.flatnonzero(np.cumsum(1 - y[order]) <= config.alpha * np.arange(1, n + 1))
        naive_violations += true_risk(s[order][within.max()]) > config.alpha
    slack = 3 * np.sqrt(draws * config.delta * (1 - config.delta))
    assert violations <= draws * config.delta + slack
    assert found >= draws / 2  # not vacuous: thresholds are found
    assert naive_violations > draws / 3  # and the simulation can tell a procedure without a guarantee


def test_the_guarantee_holds_when_every_threshold_is_slightly_bad() -> None:
    # 5.5% errors everywhere: any threshold returned is a violation, so the refusal rate carries the guarantee.
    config = ThresholdConfig(alpha=0.05, delta=0.1)
    rng = np.random.default_rng(4)
    draws = 300
    returned = sum(
        select_threshold(rng.random(500), (rng.random(500) >= 0.055).astype(int), config).threshold is not None
        for _ in range(draws)
    )
    assert returned <= draws * config.delta + 3 * np.sqrt(draws * config.delta * (1 - config.delta))
    assert returned > 0  # the boundary is tight: a conservative bound would never pass


def _slices() -> tuple[np.ndarray, np.ndarray, list[SliceKey]]:
    """Process "good" has 1% errors, "bad" 30%; two action types each; 800 rows per slice."""
    rng = np.random.default_rng(5)
    scores, labels, keys = [], [], []
    for process, error in (("good", 0.01), ("bad", 0.3)):
        for action in (ActionType.FILL_FIELD, ActionType.CLICK_CONTROL):
            scores.append(rng.random(800))
            labels.append((rng.random(800) >= error).astype(int))
            keys += [SliceKey(process_id=process, action_type=action)] * 800
    return np.concatenate(scores), np.concatenate(labels), keys


def test_group_keys() -> None:
    key = SliceKey(process_id="p", action_type=ActionType.FILL_FIELD)
    assert group_key(key, "slice") == "p/fill_field"
    assert group_key(key, "action_type") == "fill_field"
    assert group_key(key, "process") == "p"
    assert group_key(key, "global") == GLOBAL_KEY


def test_slices_are_grouped_by_granularity() -> None:
    scores, labels, keys = _slices()
    by_slice = fit_slice_thresholds(scores, labels, keys, ThresholdConfig(granularity="slice"))
    assert set(by_slice) == {"good/fill_field", "good/click_control", "bad/fill_field", "bad/click_control"}
    assert all(by_slice[k].n_rows == 800 for k in by_slice)
    assert by_slice.threshold_for(keys[0]) is not None  # good/fill_field
    assert by_slice.threshold_for(keys[-1]) is None  # bad/click_control
    by_process = fit_slice_thresholds(scores, labels, keys, ThresholdConfig(granularity="process"))
    assert set(by_process) == {"good", "bad"}
    assert by_process["good"].n_rows == 1600
    by_action = fit_slice_thresholds(scores, labels, keys, ThresholdConfig(granularity="action_type"))
    assert set(by_action) == {"fill_field", "click_control"}
    overall = fit_slice_thresholds(scores, labels, keys, ThresholdConfig(granularity="global"))
    assert list(overall) == [GLOBAL_KEY] and overall[GLOBAL_KEY].n_rows == 3200
    # Each group sees exactly its own rows; by default delta is split over the two tested groups (Bonferroni),
    # and per-group bounds use the whole delta when simultaneous coverage is switched off.
    good = np.array([k.process_id == "good" for k in keys])
    split = dataclasses.replace(by_process.config, delta=by_process.config.delta / 2)
    assert by_process["good"] == select_threshold(scores[good], labels[good], split)
    per_group = ThresholdConfig(granularity="process", simultaneous=False)
    alone = fit_slice_thresholds(scores, labels, keys, per_group)
    assert alone["good"] == select_threshold(scores[good], labels[good], per_group)
    assert alone["good"].upper_bound is not None and by_process["good"].upper_bound is not None
    assert alone["good"].upper_bound <= by_process["good"].upper_bound


def test_unknown_slice_stays_in_copilot_and_round_trip() -> None:
    scores, labels, keys = _slices()
    thresholds = fit_slice_thresholds(scores, labels, keys, ThresholdConfig(granularity="slice", min_rows=50))
    unknown = SliceKey(process_id="new", action_type=ActionType.FILL_FIELD)
    assert thresholds.threshold_for(unknown) is None
    loaded = SliceThresholds.from_dict(json.loads(json.dumps(thresholds.to_dict())))
    assert loaded.config == thresholds.config
    assert dict(loaded) == dict(thresholds)
    assert [loaded.threshold_for(k) for k in keys[::800]] == [thresholds.threshold_for(k) for k in keys[::800]]


def test_render_markdown_has_one_row_per_group() -> None:
    scores, labels, keys = _slices()
    table = fit_slice_thresholds(scores, labels, keys, ThresholdConfig()).render_markdown()
    lines = table.strip().splitlines()
    assert lines[0].startswith("| group | rows | threshold | executed | coverage | empirical error | UCB | reason |")
    assert len(lines) == 2 + 4
    assert any(line.startswith("| bad/fill_field | 800 | — |") for line in lines)


def test_bad_input_is_refused() -> None:
    with pytest.raises(ValueError, match="labels"):
        select_threshold([0.1, 0.2], [1], ThresholdConfig())
    with pytest.raises(ValueError, match="labels"):
        select_threshold([0.1, 0.2], [1, 3], ThresholdConfig())
    with pytest.raises(ValueError, match="scores"):
        select_threshold([0.1, float("nan")], [1, 0], ThresholdConfig())
    with pytest.raises(ValueError, match="slices"):
        fit_slice_thresholds([0.1], [1], [], ThresholdConfig())
    assert len(fit_slice_thresholds([], [], [], ThresholdConfig())) == 0


def test_hundred_thousand_rows_take_well_under_a_second() -> None:
    rng = np.random.default_rng(6)
    scores = rng.random(100_000)
    labels = (rng.random(100_000) >= 0.1 * (1 - scores)).astype(int)
    keys = [SliceKey(process_id=f"p{i % 5}", action_type=ActionType.FILL_FIELD) for i in range(100)] * 1000
    start = time.perf_counter()
    select_threshold(scores, labels, ThresholdConfig())
    fit_slice_thresholds(scores, labels, keys, ThresholdConfig())
    assert time.perf_counter() - start < 1.0


# --- sessions: errors that cluster in hard cases -----------------------------------------------------------------


def clustered_sessions(
    rng: np.random.Generator, m: int, hard_share: float = 0.06, hard_mult: float = 14.0
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``m`` sessions of 1 + Poisson(8) steps; a hard session (``hard_share`` of them) has ``hard_mult`` times the
    error probability C * (1 - s) of its scores, the others less, so the mean over sessions stays C * (1 - s)
    but errors come in bursts. Returns scores, labels, session ids and each row's true error probability."""
    sizes = 1 + rng.poisson(8, m)
    hard = rng.random(m) < hard_share
    mult = np.where(hard, hard_mult, (1 - hard_share * hard_mult) / (1 - hard_share))
    sid = np.repeat(np.arange(m), sizes)
    s = rng.random(int(sizes.sum()))
    p = np.clip(C * (1 - s) * mult[sid], 0.0, 1.0)
    return s, (rng.random(s.size) >= p).astype(int), sid, p


@pytest.fixture(scope="module")
def clustered_population() -> tuple[np.ndarray, np.ndarray]:
    """A large population of clustered sessions: scores sorted high first, and the running mean of the true
    error probability, i.e. the true error rate among rows executed at each threshold."""
    s, _, _, p = clustered_sessions(np.random.default_rng(10), 100_000)
    order = np.argsort(-s)
    return s[order], np.cumsum(p[order]) / np.arange(1, s.size + 1)


def clustered_risk(population: tuple[np.ndarray, np.ndarray], threshold: float) -> float:
    scores, risk = population
    executed = int(np.searchsorted(-scores, -threshold, side="right"))
    return float(risk[executed - 1]) if executed else 0.0


def test_session_bound_is_the_plain_bound_without_clustering_and_wider_with_it() -> None:
    rng = np.random.default_rng(11)
    s = rng.random(3000)
    y = (rng.random(3000) >= 0.1 * (1 - s)).astype(int)
    config = ThresholdConfig(alpha=0.05, delta=0.1, max_candidates=30)
    plain = select_threshold(s, y, config)
    assert plain.threshold is not None
    own_session = select_threshold(s, y, config, sessions=np.arange(3000))
    assert own_session.threshold == plain.threshold and own_session.n_sessions == 3000
    assert own_session.design_effect is not None and own_session.design_effect < 1.01
    assert own_session.upper_bound == pytest.approx(plain.upper_bound, rel=0.02)
    # The same 2% errors, all in a few sessions: the bound widens by the design effect.
    y_clustered = np.ones(3000, dtype=int)
    y_clustered[:60] = 0
    order = np.argsort(-s)
    s_sorted = s[order]
    sessions = np.arange(3000) % 300
    sessions[:60] = np.repeat(np.arange(6), 10)  # 60 errors in 6 sessions of 10 rows
    loose = select_threshold(s_sorted[::-1], y_clustered, config)  # errors among the lowest scores
    tight = select_threshold(s_sorted[::-1], y_clustered, config, sessions=sessions)
    assert loose.threshold is not None and tight.threshold is not None
    assert tight.design_effect is not None and tight.design_effect > 2
    assert tight.upper_bound is not None and loose.upper_bound is not None and tight.upper_bound > loose.upper_bound
    assert effective_upper(10, 1000, 1.0, 0.1) == pytest.approx(clopper_pearson_upper(10, 1000, 0.1))
    assert effective_upper(10, 1000, 2.0, 0.1) > effective_upper(10, 1000, 1.0, 0.1)


def test_refuses_too_few_sessions() -> None:
    rng = np.random.default_rng(12)
    s, y = linear_draw(rng, 500)
    result = select_threshold(s, y, ThresholdConfig(min_rows=100, min_sessions=20), sessions=np.arange(500) % 10)
    assert result.threshold is None and result.reason.startswith("too few sessions")
    assert result.n_sessions == 10


def test_the_guarantee_holds_over_session_redraws_where_a_step_level_bound_breaks_it(
    clustered_population: tuple[np.ndarray, np.ndarray],
) -> None:
    """Calibration sets drawn by session (300 sessions each): with the session-level bound the chosen threshold's
    true risk exceeds alpha in at most ~delta of the draws; treating the same steps as independent breaks it."""
    config = ThresholdConfig(alpha=0.05, delta=0.1, max_candidates=30)
    rng = np.random.default_rng(13)
    draws = 200
    by_session = by_step = found = 0
    for _ in range(draws):
        s, y, sid, _ = clustered_sessions(rng, 300)
        session_level = select_threshold(s, y, config, sessions=sid)
        step_level = select_threshold(s, y, config)
        if session_level.threshold is not None:
            found += 1
            by_session += clustered_risk(clustered_population, session_level.threshold) > config.alpha
        if step_level.threshold is not None:
            by_step += clustered_risk(clustered_population, step_level.threshold) > config.alpha
    slack = 3 * np.sqrt(draws * config.delta * (1 - config.delta))
    assert by_session <= draws * config.delta + slack
    assert found >= draws / 2
    assert by_step > draws * config.delta + slack  # the simulation tells a bound that ignores sessions


# --- the pooled hierarchy -----------------------------------------------------------------------------------------


def _hierarchy(rng: np.random.Generator, scale: int = 1) -> tuple[np.ndarray, np.ndarray, list[SliceKey], np.ndarray]:
    """A big slice (2,000 rows), three mid slices of one action type (300 rows each), a small slice (40 rows)
    and a tiny one (10 rows) of another, all with linear errors; sessions of 8 rows."""
    plan = [("big", ActionType.CLICK_CONTROL, 2000)]
    plan += [(f"mid{i}", ActionType.FILL_FIELD, 300) for i in range(3)]
    plan += [("small", ActionType.SEND_TEXT_TO_CHAT, 40), ("tiny", ActionType.SEND_TEXT_TO_CHAT, 10)]
    scores, labels, keys = [], [], []
    for process, action, n in plan:
        s, y = linear_draw(rng, n * scale)
        scores.append(s)
        labels.append(y)
        keys += [SliceKey(process_id=process, action_type=action)] * (n * scale)
    s_all = np.concatenate(scores)
    return s_all, np.concatenate(labels), keys, np.arange(s_all.size) // 8


def test_pooled_cells_come_from_counts_and_small_slices_borrow_a_pooled_threshold() -> None:
    scores, labels, keys, sessions = _hierarchy(np.random.default_rng(14))
    config = ThresholdConfig(granularity="pooled", own_cell_rows=1000, min_slice_rows=30, max_candidates=30)
    members = pooled_cells(keys, config)
    assert members == {
        "big/click_control": "big/click_control",  # enough rows for a cell of its own
        "mid0/fill_field": GLOBAL_KEY,  # 900 rows together: short of a cell for fill_field, so global
        "mid1/fill_field": GLOBAL_KEY,
        "mid2/fill_field": GLOBAL_KEY,
        "small/send_text_to_chat": GLOBAL_KEY,
    }  # "tiny" (10 rows) is in no cell
    thresholds = fit_slice_thresholds(scores, labels, keys, config, sessions=sessions)
    assert set(thresholds) == {"big/click_control", GLOBAL_KEY}
    assert thresholds[GLOBAL_KEY].n_rows == 940  # the tiny slice's rows are left out
    small = SliceKey(process_id="small", action_type=ActionType.SEND_TEXT_TO_CHAT)
    tiny = SliceKey(process_id="tiny", action_type=ActionType.SEND_TEXT_TO_CHAT)
    big = SliceKey(process_id="big", action_type=ActionType.CLICK_CONTROL)
    assert thresholds.threshold_for(small) == thresholds[GLOBAL_KEY].threshold is not None
    assert thresholds.level_for(small) == "global" and thresholds.level_for(big) == "slice"
    assert thresholds.threshold_for(tiny) is None and thresholds.level_for(tiny) is None
    assert thresholds.threshold_for(SliceKey(process_id="new", action_type=ActionType.FILL_FIELD)) is None
    # delta is split over the two cells tested
    assert thresholds[GLOBAL_KEY] == select_threshold(
        scores[2000:2940], labels[2000:2940], dataclasses.replace(config, delta=0.05), sessions[2000:2940]
    )
    # at a lower own_cell_rows the mid slices pool into their action type
    by_type = pooled_cells(keys, dataclasses.replace(config, own_cell_rows=500))
    assert by_type["mid1/fill_field"] == "fill_field" and by_type["small/send_text_to_chat"] == GLOBAL_KEY
    loaded = SliceThresholds.from_dict(json.loads(json.dumps(thresholds.to_dict())))
    assert loaded.members == thresholds.members and loaded.threshold_for(small) == thresholds.threshold_for(small)
    assert "| global |" in thresholds.render_markdown()


def test_pooled_refuses_when_data_is_too_small() -> None:
    scores, labels, keys, sessions = _hierarchy(np.random.default_rng(15))
    few = np.arange(scores.size) % 40 == 0  # 59 rows in all
    thresholds = fit_slice_thresholds(
        scores[few], labels[few], [k for k, f in zip(keys, few, strict=True) if f],
        ThresholdConfig(granularity="pooled", min_slice_rows=5), sessions=sessions[few],
    )  # fmt: skip
    assert all(r.threshold is None for r in thresholds.values())
    assert all(thresholds.threshold_for(k) is None for k in keys)


def test_the_pooled_guarantee_holds_over_all_executed_steps() -> None:
    """Slices with different error rates (1%, 3%, 12% scaled by 1 - score) pooled in one hierarchy: over session
    redraws, the true error among all auto-executed steps exceeds alpha in at most ~delta of the draws."""
    rates = {"a": 0.02, "b": 0.06, "c": 0.24}  # error probability rate * (1 - s): true risk rate * (1 - t) / 2
    sizes = {"a": 1500, "b": 600, "c": 200}
    config = ThresholdConfig(
        granularity="pooled", alpha=0.05, delta=0.1, own_cell_rows=1000, min_slice_rows=30, max_candidates=30
    )
    rng = np.random.default_rng(16)
    draws, violations, found = 200, 0, 0
    for _ in range(draws):
        scores, labels, keys = [], [], []
        for name, rate in rates.items():
            s = rng.random(sizes[name])
            scores.append(s)
            labels.append((rng.random(s.size) >= rate * (1 - s)).astype(int))
            keys += [SliceKey(process_id=name, action_type=ActionType.FILL_FIELD)] * s.size
        s_all = np.concatenate(scores)
        thresholds = fit_slice_thresholds(
            s_all, np.concatenate(labels), keys, config, sessions=np.arange(s_all.size) // 8
        )
        # True error among executed steps in the population (each slice's share as in calibration).
        executed = errors = 0.0
        for name, rate in rates.items():
            t = thresholds.threshold_for(SliceKey(process_id=name, action_type=ActionType.FILL_FIELD))
            if t is None:
                continue
            executed += sizes[name] * (1 - t)
            errors += sizes[name] * (1 - t) * rate * (1 - t) / 2
        if executed:
            found += 1
            violations += errors / executed > config.alpha
    assert violations <= draws * config.delta + 3 * np.sqrt(draws * config.delta * (1 - config.delta))
    assert found >= draws / 2


def test_a_slice_the_critic_underestimates_is_kept_out_of_the_pool() -> None:
    """The admission check: on rows apart from the threshold rows, a slice whose errors exceed what its scores
    predict never pools: with enough rows it is tested on its own rows alone (and a bad one gets no threshold),
    else it stays in copilot mode; one whose scores hold joins its cell."""
    rng = np.random.default_rng(17)
    good = SliceKey(process_id="old", action_type=ActionType.FILL_FIELD)
    new = SliceKey(process_id="new", action_type=ActionType.FILL_FIELD)
    unseen = SliceKey(process_id="unseen", action_type=ActionType.FILL_FIELD)
    rare = SliceKey(process_id="rare", action_type=ActionType.FILL_FIELD)

    def rows(key: SliceKey, n: int, true_error: float) -> tuple[np.ndarray, np.ndarray, list[SliceKey]]:
        s = rng.uniform(0.9, 1.0, n)  # the critic says "1-10% errors" for both slices
        return s, (rng.random(n) >= true_error).astype(int), [key] * n

    def stack(*parts: tuple[np.ndarray, np.ndarray, list[SliceKey]]) -> tuple[np.ndarray, np.ndarray, list[SliceKey]]:
        return (
            np.concatenate([p[0] for p in parts]),
            np.concatenate([p[1] for p in parts]),
            [k for p in parts for k in p[2]],
        )

    admission = Admission(*stack(rows(good, 400, 0.05), rows(new, 120, 0.25)))
    config = ThresholdConfig(granularity="pooled", own_cell_rows=5000, min_slice_rows=30, max_candidates=30)
    ok, refused = admitted_slices(admission, config)
    assert ok == {"old/fill_field"} and set(refused) == {"new/fill_field"}
    assert "underestimates" in refused["new/fill_field"]
    s, y, keys = stack(rows(good, 1500, 0.0), rows(new, 300, 0.25), rows(unseen, 300, 0.0), rows(rare, 60, 0.0))
    thresholds = fit_slice_thresholds(s, y, keys, config, sessions=np.arange(s.size) // 8, admission=admission)
    assert thresholds.threshold_for(good) is not None, thresholds.render_markdown()
    # Refused slices with min_rows rows are cells of their own: the bad one (25% errors) gets no threshold, the
    # unchecked one earns its own on its own error-free rows; a refused slice under min_rows is in no cell.
    assert thresholds.group_of(new) == "new/fill_field" and thresholds.threshold_for(new) is None
    assert thresholds.group_of(unseen) == "unseen/fill_field" and thresholds.threshold_for(unseen) is not None
    assert thresholds.level_for(unseen) == "slice"
    assert set(thresholds.refused) == {"rare/fill_field"} and thresholds.group_of(rare) is None
    assert thresholds[GLOBAL_KEY].n_rows == 1500  # the refused slices' rows never pool
    # Without the check the new slice would ride on the pool, certified only at the pool's blended error.
    blind = fit_slice_thresholds(s, y, keys, config, sessions=np.arange(s.size) // 8)
    assert blind.group_of(new) == GLOBAL_KEY and not blind.refused
    loaded = SliceThresholds.from_dict(json.loads(json.dumps(thresholds.to_dict())))
    assert loaded.refused == thresholds.refused and "kept in copilot mode" in thresholds.render_markdown()
    assert loaded.members == thresholds.members


def test_the_admission_check_rarely_refuses_slices_the_critic_is_right_about() -> None:
    """Holm's step-down over the slices: with 40 slices whose errors match the critic's scores, a window refuses
    any of them at most ``admission_level`` of the time (one test per slice at 0.05 would refuse one or more in
    most windows), while a slice with five times the predicted errors is still refused."""
    config = ThresholdConfig(granularity="pooled", min_slice_rows=30)
    rng = np.random.default_rng(5)
    keys = [SliceKey(process_id=f"p{i}", action_type=ActionType.CLICK_CONTROL) for i in range(40)]
    windows, refusing, naive = 60, 0, 0
    for _ in range(windows):
        s = rng.uniform(0.9, 1.0, 40 * 80)
        y = (rng.random(s.size) < s).astype(int)  # calibrated: errors at the rate the scores predict
        slices = [k for k in keys for _ in range(80)]
        ok, refused = admitted_slices(Admission(s, y, slices), config)
        refusing += bool(refused)
        assert len(ok) + len(refused) == 40
        per_slice = dataclasses.replace(config, admission_correction="none")
        naive += bool(admitted_slices(Admission(s, y, slices), per_slice)[1])
    assert refusing <= 0.1 * windows and naive >= 0.5 * windows
    s = rng.uniform(0.9, 1.0, 41 * 80)
    y = (rng.random(s.size) < s).astype(int)
    y[-80:] = (rng.random(80) >= 0.25).astype(int)  # the last slice: 25% errors where the scores predict 5%
    bad = SliceKey(process_id="bad", action_type=ActionType.CLICK_CONTROL)
    ok, refused = admitted_slices(Admission(s, y, [k for k in [*keys, bad] for _ in range(80)]), config)
    assert "bad/click_control" in refused and "Holm" in refused["bad/click_control"]
