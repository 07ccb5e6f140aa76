"""The autopilot report's computations on small hand-made inputs: the intervals against published values, the
paired Newcombe interval's coverage in simulation, the fully-automated share, the handling-time reduction, the
audited error, and the targets and markdown a report derives from them."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from lab.report import (
    AutopilotReport,
    ManualResult,
    PairedTable,
    ReviewLabel,
    SessionResult,
    SliceResult,
    audited_error,
    clopper_pearson_interval,
    critic_figures,
    fully_automated_share,
    handling_time_reduction,
    handling_time_reduction_interval,
    headline_markdown,
    newcombe_difference,
    non_inferiority,
    paired_newcombe_difference,
    plot_reports,
    wilson_interval,
)


def session(index: int, *, status: str = "completed", deferred: int = 0, manual: int = 0, correct: bool = True,
            seconds: float = 0.0) -> SessionResult:  # fmt: skip
    return SessionResult(index, "refund_damaged", status, 3, deferred, manual, correct, seconds)


# ---- intervals ----------------------------------------------------------------------------------------------------


def test_wilson_interval_matches_the_closed_form_values() -> None:
    w = wilson_interval(0, 10)
    assert (w.estimate, w.low) == (0.0, 0.0)
    assert w.high == pytest.approx(3.8415 / 13.8415, abs=1e-4)  # z^2 / (n + z^2) for no successes
    w = wilson_interval(5, 10)
    assert (w.low, w.high) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    assert math.isnan(wilson_interval(0, 0).estimate)
    with pytest.raises(ValueError, match="successes"):
        wilson_interval(11, 10)
    with pytest.raises(ValueError, match="confidence"):
        wilson_interval(1, 10, confidence=1.0)


def test_clopper_pearson_interval_matches_the_exact_limits() -> None:
    assert clopper_pearson_interval(0, 10).high == pytest.approx(1 - 0.025 ** (1 / 10), abs=1e-9)
    cp = clopper_pearson_interval(5, 10)
    assert (cp.low, cp.high) == pytest.approx((0.1871, 0.8129), abs=1e-4)
    assert clopper_pearson_interval(10, 10).high == 1.0
    assert clopper_pearson_interval(10, 10).low == pytest.approx(0.025 ** (1 / 10), abs=1e-9)
    with pytest.raises(ValueError, match="k"):
        clopper_pearson_interval(-1, 10)


@pytest.mark.parametrize(
    ("x1", "n1", "x2", "n2", "low", "high"),
    [  # Newcombe (1998), Statistics in Medicine 17:873-890, Table II, method 10
        (56, 70, 48, 80, 0.0524, 0.3339),
        (9, 10, 3, 10, 0.1705, 0.8090),
        (6, 7, 2, 7, 0.0582, 0.8062),
        (5, 56, 0, 29, -0.0381, 0.1926),
    ],
)
def test_unpaired_newcombe_interval_matches_the_published_table(
    x1: int, n1: int, x2: int, n2: int, low: float, high: float
) -> None:
    interval = newcombe_difference(x1, n1, x2, n2)
    assert interval.estimate == pytest.approx(x1 / n1 - x2 / n2)
    assert (interval.low, interval.high) == pytest.approx((low, high), abs=1e-4)


def test_paired_newcombe_interval() -> None:
    # Fagerland, Lydersen & Laake, "Statistical Analysis of Contingency Tables", ch. 8 (Bentur et al. 2009):
    # the square-and-add interval for -0.286 is -0.507 to -0.026.
    bentur = paired_newcombe_difference(PairedTable(both=1, first_only=1, second_only=7, neither=12))
    assert bentur.estimate == pytest.approx(-6 / 21)
    assert (bentur.low, bentur.high) == pytest.approx((-0.507, -0.026), abs=1e-3)
    # With no correlation left after the continuity correction (0 <= ad - bc <= n/2) it is the unpaired interval.
    table = PairedTable(both=10, first_only=10, second_only=5, neither=5)  # ad - bc = 0
    unpaired = newcombe_difference(20, 30, 15, 30)
    assert paired_newcombe_difference(table) == pytest.approx(unpaired)
    # Positively correlated pairs give a narrower interval than the same margins treated as independent.
    correlated = PairedTable(both=400, first_only=30, second_only=20, neither=50)
    paired = paired_newcombe_difference(correlated)
    independent = newcombe_difference(430, 500, 420, 500)
    assert paired.high - paired.low < 0.7 * (independent.high - independent.low)
    assert PairedTable.from_pairs([True, True, False, False], [True, False, True, False]) == PairedTable(1, 1, 1, 1)
    with pytest.raises(ValueError, match="second"):
        PairedTable.from_pairs([True], [True, False])


def test_paired_newcombe_interval_covers_the_true_difference_about_95_percent_of_the_time() -> None:
    # Correlated paired outcomes with a true difference of -0.03 (autopilot slightly worse), n = 300 cases.
    probabilities = [0.80, 0.03, 0.06, 0.11]  # both, first only, second only, neither
    truth = probabilities[1] - probabilities[2]
    rng = np.random.default_rng(7)
    draws = rng.multinomial(300, probabilities, size=2000)
    covered = 0
    for a, b, c, d in draws:
        interval = paired_newcombe_difference(PairedTable(int(a), int(b), int(c), int(d)))
        covered += interval.low <= truth <= interval.high
    assert 0.93 <= covered / len(draws) <= 0.975


# ---- measures -----------------------------------------------------------------------------------------------------


def test_fully_automated_share_counts_completed_sessions_without_any_human_step() -> None:
    sessions = [
        session(0),
        session(1),
        session(2, deferred=1),  # an operator answered a deferral
        session(3, status="handed_over", manual=4),  # worked by hand after a handover
        session(4, status="handed_over"),  # handed over with nothing done by hand is still not automated
        session(5, manual=1),
    ]
    assert [s.fully_automated for s in sessions] == [True, True, False, False, False, False]
    assert fully_automated_share(sessions) == pytest.approx(2 / 6)
    assert fully_automated_share([]) == 0.0


def test_handling_time_reduction_is_one_minus_the_ratio_of_sums() -> None:
    assert handling_time_reduction([30.0, 50.0, 0.0], [100.0, 60.0, 40.0]) == pytest.approx(1 - 80 / 200)
    assert handling_time_reduction([120.0], [100.0]) == pytest.approx(-0.2)  # slower than by hand
    with pytest.raises(ValueError, match="paired"):
        handling_time_reduction([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="autopilot"):
        handling_time_reduction([-1.0], [1.0])
    with pytest.raises(ValueError, match="manual"):
        handling_time_reduction([0.0], [0.0])
    rng = np.random.default_rng(3)
    manual = rng.uniform(60, 180, size=400)
    auto = manual * rng.uniform(0.4, 0.8, size=400)  # about 40% saved per case
    interval = handling_time_reduction_interval(auto.tolist(), manual.tolist())
    assert interval.low < interval.estimate < interval.high
    assert interval.low > 0.35 and interval.high < 0.45
    assert interval == handling_time_reduction_interval(auto.tolist(), manual.tolist())  # seeded: reproducible


def test_audited_error_counts_unaccepted_audits_with_an_exact_interval() -> None:
    error = audited_error([True] * 46 + [False] * 4)
    assert (error.audits, error.errors) == (50, 4)
    assert error.interval.estimate == pytest.approx(0.08)
    assert (error.interval.low, error.interval.high) == pytest.approx(
        (clopper_pearson_interval(4, 50).low, clopper_pearson_interval(4, 50).high)
    )
    none = audited_error([])
    assert none.audits == 0 and math.isnan(none.interval.estimate)
    assert none.to_dict()["estimate"] is None


# ---- the report ---------------------------------------------------------------------------------------------------


def small_report(audits: list[bool]) -> AutopilotReport:
    sessions = [
        session(10, seconds=0.0),
        session(11, deferred=2, seconds=40.0),
        session(12, status="handed_over", deferred=1, manual=5, correct=False, seconds=150.0),
        session(13, seconds=0.0),
    ]
    manual = [ManualResult(i, i != 13, s) for i, s in zip((13, 12, 11, 10), (90.0, 140.0, 100.0, 70.0), strict=True)]
    slices = [
        SliceResult("refund_damaged/click_control", "autopilot", "promoted", 0.91, 900, 9, 3, 2, 0),
        SliceResult("refund_damaged/send_text_to_chat", "copilot", "initial stage (default)", None, 700, 0, 6, 0, 0),
    ]
    events = [
        {"process_id": "refund_damaged", "action_type": "click_control", "from": "copilot", "to": "autopilot",
         "reason": "promoted: holding threshold", "actor": "system", "at": "2026-11-23T00:00:00+00:00"},
    ]  # fmt: skip
    return AutopilotReport(
        alpha=0.1,
        sessions=sessions,
        manual=manual,
        slices=slices,
        events=events,
        publish_latency_ms={"count": 3, "p50": 4.0, "p99": 9.5, "max": 10.0},
        decision_latency_ms={"count": 12, "p50": 20.0, "p99": 80.0, "max": 90.0},
        audit_labels=audits,
        notes=["a note"],
    )


def test_report_pairs_cases_by_index_and_judges_the_targets(tmp_path: Path) -> None:
    report = small_report([True, True, False])
    assert [m.case_index for m in report.manual] == [10, 11, 12, 13]  # re-ordered to pair with the sessions
    summary = report.summary()
    assert summary["fully_automated"] == pytest.approx(0.5)
    assert summary["handling_time_s"] == pytest.approx({"autopilot": 190 / 4, "all_manual": 400 / 4})
    assert summary["handling_time_reduction"]["estimate"] == pytest.approx(1 - 190 / 400)
    # Autopilot got 12 wrong (manual right), manual got 13 wrong (autopilot right): difference 0.
    assert summary["correct_resolution"]["paired_table"] == {
        "both": 2, "first_only": 1, "second_only": 1, "neither": 0
    }  # fmt: skip
    assert summary["correct_resolution"]["difference"]["estimate"] == pytest.approx(0.0)
    assert summary["audited_error"]["errors"] == 1 and summary["audited_error"]["audits"] == 3
    met = {t.name: t.met for t in report.targets()}
    assert met == {
        "fully automated sessions": True,
        "handling time vs all-manual": True,
        # A 0-point difference on four cases: its lower 95% bound is far below -3 points, so not shown non-inferior.
        "correct resolution vs all-manual": False,
        "realised error among auto-executed steps (audits)": False,  # 1/3 > 0.1
        "realised unacceptable-action rate among auto-executed steps (reviews)": None,  # no reviews given
    }
    assert {t.name: t.met for t in small_report([]).targets()}[
        "realised error among auto-executed steps (audits)"
    ] is None
    text = report.markdown("Test run")
    assert text.startswith("## Test run") and "- a note" in text
    assert "| refund_damaged/click_control | autopilot | 0.9100 | 900 | 9 | 3 | 2 (0) | 75.0% |" in text
    assert "copilot -> autopilot by system" in text and "p99 9.5 ms" in text
    payload = report.to_dict()
    assert payload["slices"][0]["automation"] == pytest.approx(0.75)
    png = plot_reports({"alpha 0.1": report, "again": small_report([])}, tmp_path / "plot.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_ambiguous_cases_get_their_own_quality_difference() -> None:
    # Cases 12 and 13 are ambiguous: autopilot got 12 wrong (manual right) and 13 right (manual wrong).
    report = small_report([])
    report.sessions = [replace(s, ambiguous=s.case_index in (12, 13)) for s in report.sessions]
    ambiguous = report.ambiguous_quality_difference
    assert ambiguous is not None and ambiguous.estimate == pytest.approx(0.0)
    report.sessions = [replace(s, correct=s.correct or s.case_index == 12) for s in report.sessions]
    headline = report.headline()
    assert headline["ambiguous_sessions"] == 2 and headline["quality_difference_ambiguous"] == pytest.approx(0.5)
    assert (
        headline["quality_difference_ambiguous_low"] is not None and headline["quality_difference_ambiguous_low"] < 0.5
    )


def test_report_refuses_unpaired_runs() -> None:
    with pytest.raises(ValueError, match="manual"):
        AutopilotReport(0.1, [session(1)], [ManualResult(2, True, 10.0)], [])
    with pytest.raises(ValueError, match="alpha"):
        AutopilotReport(0.0, [session(1)], [ManualResult(1, True, 10.0)], [])


def test_headline_reviews_blockers_and_non_inferiority() -> None:
    reviews = [
        ReviewLabel("s1", "acceptable", True),
        ReviewLabel("s1", "acceptable", False),  # an acceptable alternative: not an error, but not accepted
        ReviewLabel("s2", "excluded", False),  # environment: left out of the operators' estimate
        ReviewLabel("s3", "unacceptable", False),
    ]
    report = small_report([r.accepted for r in reviews])
    report.reviews = reviews
    report.blockers = [
        {"kind": "deferral", "rule": "no_threshold", "slice": "refund_damaged/send_text_to_chat", "sessions": 1,
         "share": 0.5},
        {"kind": "hand_over", "rule": "max_steps", "slice": "refund_damaged/*", "sessions": 1, "share": 0.5},
    ]  # fmt: skip
    realised = report.realised
    assert (realised["operators"].errors, realised["operators"].reviewed) == (1, 3)
    assert (realised["accept"].errors, realised["accept"].reviewed) == (3, 4)
    headline = report.headline()
    assert set(headline) == {
        "fully_automated", "handling_time_reduction", "quality_difference", "quality_difference_low",
        "quality_difference_ambiguous", "quality_difference_ambiguous_low", "ambiguous_sessions",
        "realised_error", "realised_error_high", "alpha",
    }  # fmt: skip
    assert headline["ambiguous_sessions"] == 0 and headline["quality_difference_ambiguous"] is None
    assert headline["realised_error"] == pytest.approx(1 / 3) and report.headline("accept")["realised_error"] == 0.75
    assert headline["quality_difference"] == pytest.approx(0.0) and headline["quality_difference_low"] < -0.03
    assert (
        non_inferiority(headline) is False
        and non_inferiority({"quality_difference": 0.01, "quality_difference_low": -0.029}) is True
    )
    assert non_inferiority({"quality_difference": -0.001, "quality_difference_low": 0.0}) is False
    assert non_inferiority({"quality_difference": None, "quality_difference_low": None}) is None
    text = report.markdown("Run")
    assert "### Why sessions needed a human" in text and "| 1 | deferral | no_threshold |" in text
    assert "2 of 4 sessions needed a human" in text
    payload = report.to_dict()
    assert payload["headline"] == headline and payload["headline_accept_label"]["realised_error"] == 0.75
    table = headline_markdown({**headline, "coverage_share_of_oracle": None}, report.headline("accept"))
    assert "| realised error among auto-executed steps | 33.3% | 75.0% |" in table and "**fail**" in table


def test_critic_figures_come_from_the_critic_benches_at_the_same_alpha(tmp_path: Path) -> None:
    import json

    figures, notes = critic_figures(tmp_path, 0.05)
    assert figures == {"coverage_share_of_oracle": None, "sessions_to_autonomy_new_process": None}
    assert len(notes) == 2 and all("not found" in n for n in notes)
    sandbox = {"coverage": {"feature": {"share_of_oracle": 0.93, "thresholds": {"config": {"alpha": 0.05}}}}}
    (tmp_path / "critic_sandbox.json").write_text(json.dumps(sandbox))
    (tmp_path / "critic_time_to_autonomy.json").write_text(
        json.dumps({"first_holding_threshold_sessions": {"0.05": 250, "0.1": 120}})
    )
    assert critic_figures(tmp_path, 0.05) == (
        {"coverage_share_of_oracle": 0.93, "sessions_to_autonomy_new_process": 250},
        [],
    )
    figures, notes = critic_figures(tmp_path, 0.1)  # coverage was measured at 0.05 only: not passed off as 0.1's
    assert figures == {"coverage_share_of_oracle": None, "sessions_to_autonomy_new_process": 120}
    assert notes == ["critic_sandbox.json: coverage measured at alpha 0.05, not 0.1"]
    (tmp_path / "critic_sandbox.json").write_text(
        json.dumps({"headline": {"coverage_share_of_oracle": 0.9, "alpha": 0.1}})
    )
    assert critic_figures(tmp_path, 0.1)[0]["coverage_share_of_oracle"] == 0.9
    # The paper's label reads its own figures, never the default label's.
    figures, notes = critic_figures(tmp_path, 0.1, label="accept")
    assert figures == {"coverage_share_of_oracle": None, "sessions_to_autonomy_new_process": None}
    headline = {"alpha": 0.1, "coverage_share_of_oracle": 0.9, "accept_label": {"coverage_share_of_oracle": 0.3}}
    (tmp_path / "critic_sandbox.json").write_text(json.dumps({"headline": headline}))
    (tmp_path / "critic_time_to_autonomy.json").write_text(
        json.dumps({"headline": {"alpha": 0.1, "accept_label": {"sessions_to_autonomy_new_process": 10}}})
    )
    assert critic_figures(tmp_path, 0.1, label="accept")[0] == {
        "coverage_share_of_oracle": 0.3,
        "sessions_to_autonomy_new_process": 10,
    }
    assert critic_figures(tmp_path, 0.1)[0]["coverage_share_of_oracle"] == 0.9
