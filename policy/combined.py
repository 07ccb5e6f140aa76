"""CombinedPolicy: the LM and the strong simple predictors, each answering where held-out data shows it is better.

A user's own log gets one trained policy that is never (knowingly) worse than its simple competitors:

1. ``fit`` splits the traces by case start: the latest ``val_fraction`` of each process's cases are held out
   (never the test data: the caller's test split is not seen at all).
2. The members train on the earlier cases: the last-action bigram and the longest-suffix n-grams (counting
   only, seconds; with several processes also one that backs off to every process's contexts, a prior for a
   new process), the gradient-boosting model on event attributes and timing (with and without timing fields:
   clock times may not carry over to a later period), and the LM (size and budget per data size:
   ``policy.sizing``). A member that fails, or an LM that stopped before one whole epoch, is left out and said so.
3. Every member ranks the next actions of the held-out steps; a ``blend`` (a weighted mix of the best members'
   probabilities, weights on a grid) is one more candidate.
4. ``policy.routing`` chooses per group of states (all, process, screen, prefix length) the candidate that is
   *clearly* better there than the parent group's choice, starting from the longest-suffix n-gram.
5. Each chosen candidate's confidence is calibrated on the held-out steps it answers (isotonic): the
   proposal's ``probability`` is P(right), which the critic and selective automation rely on.
6. The cheap members are refitted on all the cases (the LM keeps the held-out cases for its early stopping).

The choice and its held-out figures are saved with the model and shown by ``autopilot policy evaluate``
(``choice_markdown``). ``propose_batch`` / ``propose`` / ``predict`` / ``rank`` / ``version_`` are those
of ``LMPolicy``, so the runtime and the critic take either; ``load_policy`` loads whichever a directory holds.
The LM is saved at the top of the directory, so ``LMPolicy.load`` on it still gives the LM alone.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any, NamedTuple, Protocol, Self

import joblib
import numpy as np

from policy.baselines.floors import SuffixNGram
from policy.baselines.gbm import GradientBoostingBaseline
from policy.calibration import IsotonicCalibrator, expected_calibration_error
from policy.censoring import CensoringHorizon
from policy.fast_scoring import CandidateScorer
from policy.open_choices import OpenChoices
from policy.option_cues import OptionCues
from policy.policy import LMPolicy
from policy.preconditions import Preconditions
from policy.predictor import Prediction
from policy.record_check import RecordCheck
from policy.requests import RequestTracker
from policy.routing import Routing, choose_routes, group_path
from policy.saved import COMBINED_FILE, POLICY_FILE, read_meta
from policy.serialise import SerialConfig, is_activity_log
from policy.sizing import plan_lm
from schemas.actions import Action, ActionValidationError, action_key, validate_action
from schemas.files import atomic_directory
from schemas.proposal import Proposal, ProposalFeatures, ScoredAction
from schemas.state import UIState
from schemas.trace import Trace

MEMBERS_FILE = "members.joblib"
FORMAT_VERSION = 1
BLEND = "blend"
LM = "lm"
TIMING_FIELDS = ("elapsed_s", "since_last_s", "hour", "weekday")
LM_SETTINGS = frozenset(
    {"hidden_size", "layers", "architecture", "epochs", "batch_size", "learning_rate", "vocab_size"}
)
"""What ``lm_settings`` may fix in the LM's plan (``policy.sizing``); the rest stays as planned."""
RANK_K = 5
MIN_SCORED_STEPS = 1000


class RankingPredictor(Protocol):
    """What a member offers: fit on traces, and per state its best actions with probabilities, best first."""

    name: str

    def fit(self, traces: Sequence[Trace]) -> Self: ...

    def rank(self, states: Sequence[UIState], k: int = 5) -> list[list[tuple[Action, float]]]: ...


Ranked = list[tuple[Action, float]]


def _simple_members() -> dict[str, Callable[[], RankingPredictor]]:
    """The counting members, simplest first (the routing prefers the earlier one on equal gains)."""
    return {
        "bigram": lambda: SuffixNGram(max_n=1),
        "ngram": lambda: SuffixNGram(),
        "ngram_start": lambda: SuffixNGram(start_token=True),
    }


def _gbm_members(max_samples: int | None, max_classes: int | None) -> dict[str, Callable[[], RankingPredictor]]:
    return {
        "gbm": lambda: GradientBoostingBaseline(max_samples=max_samples, max_classes=max_classes),
        "gbm_no_timing": lambda: GradientBoostingBaseline(
            exclude_fields=TIMING_FIELDS, max_samples=max_samples, max_classes=max_classes
        ),
    }


def _capped(limit: int | None, cap: int | None) -> int | None:
    return cap if limit is None else limit if cap is None else min(limit, cap)


def _start(trace: Trace) -> str:
    started = trace.attributes.get("case_start")
    if started:
        return str(started)
    first = trace.steps[0].timestamp if trace.steps else None
    return first.isoformat() if isinstance(first, datetime) else ""


MIN_SEEN_THROUGH = 0.5
"""The share of a process's cases the log must have seen through for the held-out cases to be drawn from them."""


class TimeSplit(NamedTuple):
    """``fit``: the cases the members train on; ``held_out``: the cases the choice is scored on; ``running``: how
    many cases are in ``fit`` only because they may still have been running when the log was extracted."""

    fit: list[Trace]
    held_out: list[Trace]
    running: int


def time_split(traces: Sequence[Trace], val_fraction: float, min_seen_through: float = MIN_SEEN_THROUGH) -> TimeSplit:
    """The latest ``val_fraction`` of the cases held out by case start (file order on ties or when the traces
    carry no times), per process: a process that is new has all of its few cases at the end, and a global cut
    would hold every one of them out of the members' training. At least one case on each side for a process
    with two or more.

    Held out are the latest cases *the log saw through* (``policy.censoring``: started at least the 90th
    percentile of the process's case durations before its last event), when at least ``min_seen_through`` of
    the process's cases are such (above 1: never); the later ones are fitted on. A case still running when the log was
    extracted ends at its last recorded event, a target no later case shows: on BPI 2012 W cut on 10 January
    2012, holding out the latest cases put the held-out accuracy at 0.62 (0.75 on the cases seen through) and
    the calibrated confidence ten points under the accuracy on the cases that started after the cut
    (calibration error 0.105 against 0.022; decision 0026). Where fewer are seen through (a log whose cases span
    most of its period, such as BPI 2013's incidents, which holds closed cases only), the latest cases are held
    out."""
    by_process: dict[str, list[tuple[int, Trace]]] = {}
    for i, trace in enumerate(traces):
        by_process.setdefault(trace.process_id, []).append((i, trace))
    early: list[tuple[int, Trace]] = []
    late: list[tuple[int, Trace]] = []
    running = 0
    for cases in by_process.values():
        ordered = sorted(cases, key=lambda item: (_start(item[1]), item[0]))
        n_val = 0 if len(ordered) < 2 else min(len(ordered) - 1, max(1, round(val_fraction * len(ordered))))
        candidates = _seen_through(ordered, n_val, min_seen_through)
        held = {i for i, _ in candidates[len(candidates) - n_val :]}
        early += [item for item in ordered if item[0] not in held]
        late += [item for item in ordered if item[0] in held]
        running += len(ordered) - len(candidates)
    return TimeSplit(
        [t for _, t in sorted(early, key=lambda x: x[0])], [t for _, t in sorted(late, key=lambda x: x[0])], running
    )


def _seen_through(ordered: list[tuple[int, Trace]], n_val: int, min_share: float) -> list[tuple[int, Trace]]:
    """The cases (in start order) the held-out ones are the latest of: those the log saw through, or all."""
    cases = [trace for _, trace in ordered]
    horizon = CensoringHorizon.fit(cases, cases)
    if horizon is None:
        return ordered
    seen = [item for item in ordered if horizon.fully_observed(item[1])]
    return seen if len(seen) >= min_share * len(ordered) and len(seen) > n_val else ordered


def _refit_seconds(fit_s: float, n_fit: int, n_all: int, name: str, policy: CombinedPolicy) -> float:
    """Expected seconds to refit a member on all ``n_all`` steps, from its fit on ``n_fit`` (a GBM's rows
    capped by ``gbm_select_samples`` then and by ``gbm_max_samples`` now; counting members are instant)."""
    if not name.startswith("gbm"):
        return 0.0
    before = n_fit if policy.gbm_select_samples is None else min(n_fit, policy.gbm_select_samples)
    after = n_all if policy.gbm_max_samples is None else min(n_all, policy.gbm_max_samples)
    return 1.2 * fit_s * after / max(before, 1)


def _sample_cases(traces: Sequence[Trace], max_steps: int, seed: int) -> list[Trace]:
    """A seeded sample of whole cases with about ``max_steps`` steps (all of them when they have fewer), in
    their original order."""
    if sum(len(t.steps) for t in traces) <= max_steps:
        return list(traces)
    order = np.random.default_rng(seed).permutation(len(traces))
    kept, steps = [], 0
    for i in order:
        if steps >= max_steps:
            break
        kept.append(int(i))
        steps += len(traces[int(i)].steps)
    return [traces[i] for i in sorted(kept)]


def _shown(value: object) -> str:
    """A figure of the report as written: a dash where there is none (nothing held out, nothing scored)."""
    return "–" if value is None else str(value)


def _hits(rankings: Sequence[Ranked], gold: Sequence[str]) -> np.ndarray:
    """Per step, whether the first ranked action is the gold one (action keys)."""
    return np.array([bool(r) and action_key(r[0][0]) == g for r, g in zip(rankings, gold, strict=True)], dtype=bool)


def _valid(state: UIState, ranked: Ranked) -> Ranked:
    out = []
    for action, p in ranked:
        try:
            validate_action(action, state.screen)
        except ActionValidationError:
            continue
        out.append((action, p))
    return out


def _blend(rankings: Sequence[Ranked], weights: Sequence[float], k: int) -> Ranked:
    scores: dict[str, tuple[Action, float]] = {}
    for ranked, w in zip(rankings, weights, strict=True):
        if w == 0:
            continue
        for action, p in ranked:
            key = action_key(action)
            prev = scores.get(key)
            scores[key] = (action, (prev[1] if prev else 0.0) + w * p)
    items = sorted(scores.values(), key=lambda item: -item[1])  # stable: first-seen order on ties
    return items[:k]


def _weight_grid(n: int, step: float = 0.1) -> list[tuple[float, ...]]:
    units = round(1 / step)
    return [
        tuple(c / units for c in combo)
        for combo in itertools.product(range(units + 1), repeat=n)
        if sum(combo) == units and all(c > 0 for c in combo)
    ]


def choose_blend(
    rankings: dict[str, list[Ranked]], gold: Sequence[str], names: Sequence[str], step: float = 0.1
) -> tuple[tuple[float, ...], float]:
    """The weights (on a grid, every member > 0) whose mix of ``names``' probabilities predicts ``gold`` (action
    keys) best; returns (weights, accuracy)."""
    n = len(gold)
    keys: list[dict[str, int]] = [{} for _ in range(n)]
    for name in names:
        for i, ranked in enumerate(rankings[name]):
            for action, _ in ranked:
                keys[i].setdefault(action_key(action), len(keys[i]))
    width = max((len(k) for k in keys), default=1) or 1
    probs = np.zeros((n, len(names), width))
    target = np.full(n, -1)
    for i in range(n):
        target[i] = keys[i].get(gold[i], -1)
        for m, name in enumerate(names):
            for action, p in rankings[name][i]:
                probs[i, m, keys[i][action_key(action)]] += p
    best: tuple[tuple[float, ...], float] = ((1.0 / len(names),) * len(names), -1.0)
    best_loglik = -math.inf
    rows = np.arange(n)
    for weights in _weight_grid(len(names), step):
        mixed = np.einsum("m,nmk->nk", np.asarray(weights), probs)
        accuracy = float(np.mean(mixed.argmax(axis=1) == target)) if n else 0.0
        # equal accuracy: the likelier gold action (log-likelihood, a proper score) decides
        gold_p = np.where(target >= 0, mixed[rows, np.maximum(target, 0)], 0.0)
        loglik = float(np.mean(np.log(gold_p + 1e-6))) if n else 0.0
        if accuracy > best[1] or (accuracy == best[1] and loglik > best_loglik):
            best, best_loglik = (weights, accuracy), loglik
    return best


@dataclass
class CombinedPolicy:
    """Members trained on the earlier cases, routed and calibrated on the latest ones (module docstring).

    * ``val_fraction``: share of the cases (the latest) held out for the choice; ``min_seen_through``: the share
      of a process's cases the log must have seen through for the held-out ones to be drawn from those
      (``time_split``); ``max_val_steps`` caps the held-out steps every member is scored on (a seeded sample of
      held-out cases), the LM's scoring being the costly part.
    * ``time_budget_s``: the whole fit's wall-clock budget; the LM gets what the other members leave of it
      (at least ``min_lm_budget_s``). ``lm=False`` leaves the LM out; ``lm_threads`` fixes its torch threads
      (default: probe one against two); ``lm_settings`` fixes parts of its plan (``LM_SETTINGS``).
    * ``gbm_max_classes``: when the training targets have more distinct actions than this, the gradient-boosting
      members take the most frequent this many as classes on an activity log (hundreds of activities, a long
      tail; the rarer ones are left to the other members), and are left out on a chat process (its literal
      replies: one class per customer).
      ``gbm_select_samples`` caps their training rows while they are compared (a seeded sample),
      ``gbm_max_samples`` when the chosen ones are refitted on every case. A refit that the time budget cannot
      afford is skipped (the member fitted for the comparison stays; the report says so).
    * ``z``, ``min_group_steps``: how clearly a predictor must win a group (``policy.routing``).
    """

    val_fraction: float = 0.2
    min_seen_through: float = MIN_SEEN_THROUGH
    max_val_steps: int = 5000
    max_lm_val_steps: int = 1500
    time_budget_s: float | None = 540.0
    min_lm_budget_s: float = 60.0
    lm: bool = True
    lm_threads: int | None = None
    lm_settings: dict[str, Any] | None = None
    gbm: bool = True
    gbm_max_classes: int = 100
    gbm_max_samples: int | None = 100_000
    gbm_select_samples: int | None = 30_000
    blend: bool = True
    z: float = 1.64
    min_group_steps: int = 30
    refit: bool = True
    seed: int = 0
    progress: bool = False
    name: str = "combined"

    # learned
    members_: dict[str, RankingPredictor] = field(default_factory=dict, init=False, repr=False)
    lm_: LMPolicy | None = field(default=None, init=False, repr=False)
    routing_: Routing | None = field(default=None, init=False)
    calibrators_: dict[str, IsotonicCalibrator] = field(default_factory=dict, init=False, repr=False)
    blend_: dict[str, Any] | None = field(default=None, init=False)
    report_: dict[str, Any] = field(default_factory=dict, init=False, repr=False)
    version_: str = field(default="", init=False)

    # ---- fitting -------------------------------------------------------------------------------------------

    def fit(self, traces: Sequence[Trace]) -> Self:
        if not traces:
            raise ValueError("no traces to train on")
        started = time.perf_counter()
        fit_part, held_out, running = time_split(traces, self.val_fraction, self.min_seen_through)
        report: dict[str, Any] = {
            "cases": len(traces),
            "fit_cases": len(fit_part),
            "validation_cases": len(held_out),
            "possibly_running_cases": running,
            "members": {},
            "left_out": {},
        }
        running_text = f" ({running:,} of them possibly still running at the log's end)" if running else ""
        self._say(
            f"{len(traces):,} cases: {len(fit_part):,} to fit the members on{running_text}, {len(held_out):,} held out"
        )
        members, final = self._fit_members(fit_part, report)
        scored_cases = _sample_cases(held_out, self.max_val_steps, self.seed)
        self.lm_ = None
        if self.lm:
            # the LM's early stopping reads a smaller sample: its validation loss is computed every few hundred
            # steps, and on a large log scoring 5,000 held-out steps each time would cost more than training
            lm_val = _sample_cases(scored_cases, self.max_lm_val_steps, self.seed)
            self.lm_ = self._fit_lm(fit_part, lm_val, started, report)
            if self.lm_ is not None:
                members[LM] = self.lm_
                scored_cases = self._affordable_cases(scored_cases, started, report)

        states = [s.state for t in scored_cases for s in t.steps]
        gold = [action_key(s.action) for t in scored_cases for s in t.steps]
        rankings: dict[str, list[Ranked]] = {}
        self._say(f"scoring {len(states):,} held-out steps ({len(scored_cases):,} cases) with {', '.join(members)}")
        for name, member in members.items():
            tick = time.perf_counter()
            rankings[name] = [_valid(st, r) for st, r in zip(states, member.rank(states, RANK_K), strict=True)]
            report["members"][name]["validation_rank_s"] = round(time.perf_counter() - tick, 2)
        correct = {name: _hits(ranked, gold) for name, ranked in rankings.items()}
        for name, hits in correct.items():
            report["members"][name]["validation_accuracy"] = round(float(hits.mean()), 4) if len(hits) else None
        self.blend_ = None
        if self.blend and len(members) >= 2 and states:
            self._fit_blend(list(members), scored_cases, gold, rankings, correct)

        # The longest-suffix n-gram answers wherever nothing is clearly better, the other floors included: with a
        # handful of held-out steps (a new process) no choice among them would be more than noise. (Not the
        # pooled one: on a new sandbox process its back-off to the other processes' contexts cost 0.2-2.4
        # points against the process's own shorter contexts, bench/results/policy_new_process.md.)
        default = next(n for n in ("ngram", *_simple_members()) if n in correct)
        paths = [group_path(s) for s in states]
        self.routing_ = choose_routes(paths, correct, default, z=self.z, min_steps=self.min_group_steps)
        routes = [self.routing_.route(p) for p in paths]
        combined_hits = np.array([correct[r][i] for i, r in enumerate(routes)], dtype=bool)
        report["validation"] = {
            "steps": len(states),
            "combined_accuracy": round(float(combined_hits.mean()), 4) if len(states) else None,
            "default": default,
            "calibration": self._calibrate(routes, rankings, correct),
            "route_share": {r: round(routes.count(r) / len(routes), 4) for r in sorted(set(routes))} if routes else {},
        }
        self.members_ = self._refit(members, final, traces, held_out, started, report)
        if self.lm_ is not None and LM not in self._used():
            report["members"][LM]["kept"] = "saved for the critic and the preference updates, not routed to"
        report["fit_s"] = round(time.perf_counter() - started, 2)
        self._say(
            f"fitted in {report['fit_s']:.0f} s; held-out accuracy {_shown(report['validation']['combined_accuracy'])}"
        )
        self.report_ = report
        self.version_ = self._version()
        return self

    def _fit_members(
        self, fit_part: Sequence[Trace], report: dict[str, Any]
    ) -> tuple[dict[str, RankingPredictor], dict[str, Callable[[], RankingPredictor]]]:
        """The counting and GBM members fitted on the earlier cases, and how to make each for the final refit.
        The GBM variants are compared on at most ``gbm_select_samples`` rows: choosing between them needs less
        data than the final model."""
        selecting = _simple_members()
        final = _simple_members()
        if len({t.process_id for t in fit_part}) > 1:  # other processes' contexts: a prior for a new one
            selecting["ngram_pooled"] = final["ngram_pooled"] = lambda: SuffixNGram(pooled=True)
        n_classes = len({action_key(s.action) for t in fit_part for s in t.steps})
        if self.gbm:
            # an activity log's many activities are a long tail: its most frequent ones are classes and the rest
            # are left to the other members; a chat process's many actions are its literal replies
            classes = None if n_classes <= self.gbm_max_classes else self.gbm_max_classes
            if classes is None or is_activity_log(fit_part):
                selecting |= _gbm_members(_capped(self.gbm_max_samples, self.gbm_select_samples), classes)
                final |= _gbm_members(self.gbm_max_samples, classes)
                if classes is not None:
                    report["gbm_classes"] = f"the {classes} most frequent of {n_classes} distinct actions"
            else:
                report["left_out"]["gbm"] = f"{n_classes} distinct actions > gbm_max_classes {self.gbm_max_classes}"
        members: dict[str, RankingPredictor] = {}
        for name, make in selecting.items():
            tick = time.perf_counter()
            try:
                members[name] = make().fit(fit_part)
            except (ValueError, RuntimeError) as exc:  # e.g. too few steps of each action for boosting
                report["left_out"][name] = f"fit failed: {exc}"
                self._say(f"{name}: {report['left_out'][name]}")
                continue
            report["members"][name] = {"fit_s": round(time.perf_counter() - tick, 2)}
            self._say(f"fitted {name} in {report['members'][name]['fit_s']:.1f} s")
        if not members:
            raise ValueError(f"no member could be fitted: {report['left_out']}")
        return members, final

    def _fit_blend(
        self,
        names: Sequence[str],
        scored_cases: Sequence[Trace],
        gold: Sequence[str],
        rankings: dict[str, list[Ranked]],
        correct: dict[str, np.ndarray],
    ) -> None:
        """The blend of the three best members (weights on all held-out steps) and its cross-fitted held-out
        rankings and hits: each half of the held-out cases is mixed with the weights chosen on the other half,
        so the blend competes with the members on equal terms (weights chosen and scored on the same steps
        would flatter it)."""
        best = sorted(names, key=lambda n: -float(correct[n].mean()))[:3]
        weights, _ = choose_blend(rankings, gold, best)
        fold = np.array([i % 2 for i, t in enumerate(scored_cases) for _ in t.steps])
        blended: list[Ranked] = [[] for _ in gold]
        for half in (0, 1):
            rows = [int(i) for i in np.flatnonzero(fold != half)]
            sub = {n: [rankings[n][i] for i in rows] for n in best}
            half_weights, _ = choose_blend(sub, [gold[i] for i in rows], best)
            for i in np.flatnonzero(fold == half):
                blended[i] = _blend([rankings[n][i] for n in best], half_weights, RANK_K)
        rankings[BLEND] = blended
        correct[BLEND] = _hits(blended, gold)
        accuracy = round(float(correct[BLEND].mean()), 4)
        self.blend_ = {"members": best, "weights": list(weights), "validation_accuracy": accuracy}

    def _calibrate(
        self, routes: Sequence[str], rankings: dict[str, list[Ranked]], correct: dict[str, np.ndarray]
    ) -> dict[str, Any]:
        """An isotonic calibrator per used route, on the held-out steps it answers (all of its held-out steps
        when it answers fewer than 100); returns the calibration errors before and after."""
        assert self.routing_ is not None
        self.calibrators_ = {}
        figures: dict[str, Any] = {}
        for route in sorted(self.routing_.routes_used()):
            rows = [i for i, r in enumerate(routes) if r == route]
            if len(rows) < 100:
                rows = list(range(len(routes)))
            raw = [rankings[route][i][0][1] if rankings[route][i] else 0.0 for i in rows]
            right = [bool(correct[route][i]) for i in rows]
            calibrator = IsotonicCalibrator().fit(raw, right)
            self.calibrators_[route] = calibrator
            figures[route] = {
                "steps": len(rows),
                "ece_raw": round(expected_calibration_error(raw, right), 4),
                "ece_calibrated": round(expected_calibration_error(list(calibrator(raw)), right), 4),
            }
        return figures

    def _used(self) -> set[str]:
        """The members the routing sends states to (a blend's members included)."""
        assert self.routing_ is not None
        used = self.routing_.routes_used()
        if self.blend_ is not None and BLEND in used:
            used |= set(self.blend_["members"])
        return used

    def _refit(
        self,
        members: dict[str, RankingPredictor],
        final: dict[str, Callable[[], RankingPredictor]],
        traces: Sequence[Trace],
        held_out: Sequence[Trace],
        started: float,
        report: dict[str, Any],
    ) -> dict[str, RankingPredictor]:
        """The used members other than the LM, refitted on every case when the budget affords it (the LM keeps
        its held-out early stopping)."""
        n_all = sum(len(t.steps) for t in traces)
        n_fit = n_all - sum(len(t.steps) for t in held_out)
        kept: dict[str, RankingPredictor] = {}
        for name, member in members.items():
            if name == LM or name not in self._used():
                continue
            if self.refit and held_out:
                expected = _refit_seconds(report["members"][name]["fit_s"], n_fit, n_all, name, self)
                left = None if self.time_budget_s is None else self.time_budget_s - (time.perf_counter() - started)
                if left is None or expected <= left:
                    tick = time.perf_counter()
                    member = final[name]().fit(list(traces))
                    report["members"][name]["refit_s"] = round(time.perf_counter() - tick, 2)
                    self._say(f"refitted {name} on every case in {report['members'][name]['refit_s']:.1f} s")
                else:
                    report["members"][name]["refit_s"] = f"skipped: ~{expected:.0f} s expected, {left:.0f} s left"
                    self._say(f"{name}: refit {report['members'][name]['refit_s']}")
            kept[name] = member
        return kept

    def _affordable_cases(self, cases: list[Trace], started: float, report: dict[str, Any]) -> list[Trace]:
        """The held-out cases the LM can score in half of what is left of the budget (at least
        ``MIN_SCORED_STEPS`` steps), timed on a first batch: scoring a chat state costs tens of milliseconds on a
        loaded CPU, and 5,000 of them would overrun a short budget."""
        if self.time_budget_s is None or self.lm_ is None or not cases:
            return cases
        sample = [s.state for t in cases for s in t.steps][:32]
        tick = time.perf_counter()
        self.lm_.rank(sample, RANK_K)
        per_state = (time.perf_counter() - tick) / max(len(sample), 1)
        left = self.time_budget_s - (time.perf_counter() - started)
        affordable = max(MIN_SCORED_STEPS, int(0.5 * left / max(per_state, 1e-6)))
        report["validation_scoring"] = {"lm_ms_per_state": round(1000 * per_state, 2), "affordable": affordable}
        return _sample_cases(cases, affordable, self.seed)

    def _say(self, message: str) -> None:
        """A plain line between the fit's phases (stderr, with ``progress``): on a 580,000-event log fitting the
        members took minutes with nothing shown; the LM shows its own progress bar."""
        if self.progress:
            print(f"combined policy: {message}", file=sys.stderr, flush=True)

    def _fit_lm(
        self, fit_part: Sequence[Trace], held_out: Sequence[Trace], started: float, report: dict[str, Any]
    ) -> LMPolicy | None:
        n_examples = sum(len(t.steps) for t in fit_part)
        if len(fit_part) < 2 or n_examples < 20:
            report["left_out"][LM] = f"{len(fit_part)} cases / {n_examples} steps are too few to train an LM on"
            return None
        budget = None
        if self.time_budget_s is not None:
            # what is left, less the refits of the GBMs (if they are chosen: assume they are) and a fifth of the
            # budget for scoring the held-out steps and calibrating
            n_all = n_examples + sum(len(t.steps) for t in held_out)
            refits = sum(
                _refit_seconds(info["fit_s"], n_examples, n_all, name, self)
                for name, info in report["members"].items()
                if name.startswith("gbm")
            )
            left = self.time_budget_s - (time.perf_counter() - started) - refits - 0.2 * self.time_budget_s
            budget = max(self.min_lm_budget_s, left)
        serial = SerialConfig.for_traces(fit_part)
        plan = plan_lm(n_examples, serial, budget, seed=self.seed, threads=self.lm_threads)
        settings = dict(self.lm_settings or {})
        unknown = set(settings) - LM_SETTINGS
        if unknown:
            raise ValueError(f"lm_settings: unknown {sorted(unknown)}; known: {sorted(LM_SETTINGS)}")
        model_keys = {"hidden_size", "layers", "architecture"}
        model = replace(plan.model, **{k: v for k, v in settings.items() if k in model_keys})
        if "hidden_size" in settings:  # keep the heads and MLP in proportion to a chosen width
            heads = max(1, model.hidden_size // 32)
            model = replace(model, heads=heads, kv_heads=max(1, heads // 2), intermediate_size=2 * model.hidden_size)
        training_keys = {"epochs", "batch_size", "learning_rate"}
        training = replace(plan.training, **{k: v for k, v in settings.items() if k in training_keys})
        lm = LMPolicy(
            model=model,
            training=training,
            serial=plan.serial,
            vocab_size=int(settings.get("vocab_size", plan.vocab_size)),
            prune_logprob=plan.prune_logprob,
            progress=self.progress,
        )
        tick = time.perf_counter()
        budget_text = "no budget" if budget is None else f"a {budget:.0f} s budget"
        self._say(f"training the LM on {n_examples:,} steps with {budget_text} (serialising them first)")
        # early stopping on (at most) the held-out cases the choice is scored on
        lm.fit(fit_part, val_traces=held_out if held_out else None)
        history = lm.history_
        assert history is not None
        report["members"][LM] = {
            "fit_s": round(time.perf_counter() - tick, 2),
            "budget_s": None if budget is None else round(budget, 1),
            "steps": history.steps,
            "epochs_done": round(history.epochs_done, 3),
            "examples_used": history.examples_used,
            "examples": n_examples,
            "stopped": history.stopped,
            "threads": history.threads,
            "thread_choices": history.thread_choices,
            "step_seconds": history.step_seconds,
            "model": plan.model.to_dict(),
            "vocab_size": plan.vocab_size,
        }
        if history.undertrained:
            report["left_out"][LM] = (
                f"undertrained: {history.epochs_done:.2f} epochs in its {budget or 0:.0f} s budget ({history.stopped})"
            )
            return None
        return lm

    def _version(self) -> str:
        digest = hashlib.blake2b(digest_size=6)
        digest.update(json.dumps(self.routing_.to_dict() if self.routing_ else {}, sort_keys=True).encode())
        digest.update(json.dumps(self.blend_ or {}, sort_keys=True).encode())
        if self.lm_ is not None:
            digest.update(self.lm_.version_.encode())
        digest.update(json.dumps(sorted(self.members_), sort_keys=True).encode())
        return f"combined-{digest.hexdigest()}"

    @property
    def requests_(self) -> RequestTracker | None:
        """The LM member's pending-request reader (``policy.requests``), for the reply guard; None without an LM."""
        return self.lm_.requests_ if self.lm_ is not None else None

    @property
    def cues_(self) -> OptionCues | None:
        """The LM member's option cues (``policy.option_cues``), for the reply guard; None without an LM."""
        return self.lm_.cues_ if self.lm_ is not None else None

    @property
    def record_check_(self) -> RecordCheck | None:
        """The LM member's record check (``policy.record_check``), for the reply guard; None without an LM."""
        return self.lm_.record_check_ if self.lm_ is not None else None

    @property
    def preconditions_(self) -> Preconditions | None:
        """The LM member's preconditions (``policy.preconditions``), for the reply guard; None without an LM."""
        return self.lm_.preconditions_ if self.lm_ is not None else None

    @property
    def choices_(self) -> OpenChoices | None:
        """The LM member's open choices (``policy.open_choices``), for the reply guard; None without an LM."""
        return self.lm_.choices_ if self.lm_ is not None else None

    # ---- inference -----------------------------------------------------------------------------------------

    def _member(self, name: str) -> RankingPredictor | None:
        if name == LM:
            return self.lm_
        return self.members_.get(name)

    def _require(self) -> Routing:
        if self.routing_ is None:
            raise RuntimeError("this CombinedPolicy is not fitted: call fit() or CombinedPolicy.load()")
        return self.routing_

    def answer(self, states: Sequence[UIState], k: int = RANK_K) -> list[tuple[str, Ranked, float]]:
        """Per state: the route that answers it, its ranked actions (raw probabilities) and the calibrated
        probability that the first is right. A route with nothing valid to offer falls back to the default
        route, then to any member with an answer."""
        routing = self._require()
        routes = [routing.route(group_path(s)) for s in states]
        needed = set(routes) | {routing.default}
        if BLEND in needed and self.blend_ is not None:
            needed |= set(self.blend_["members"])
        rankings: dict[str, list[Ranked]] = {}
        for name in sorted(needed - {BLEND}):
            member = self._member(name)
            if member is None:
                continue
            idx = [i for i, r in enumerate(routes) if r == name or name == routing.default or self._in_blend(name, r)]
            member_ranked = member.rank([states[i] for i in idx], max(k, RANK_K))
            full: list[Ranked] = [[] for _ in states]
            for i, r in zip(idx, member_ranked, strict=True):
                full[i] = _valid(states[i], r)
            rankings[name] = full
        out: list[tuple[str, Ranked, float]] = []
        for i, (state, route) in enumerate(zip(states, routes, strict=True)):
            ranked = self._ranked_for(route, i, rankings, k)
            if not ranked:
                route = routing.default
                ranked = rankings.get(route, [[]] * len(states))[i][:k]
            if not ranked:
                ranked = self._any_answer(state, k)
                route = "fallback"
            calibrator = self.calibrators_.get(route)
            top = ranked[0][1] if ranked else 0.0
            out.append((route, ranked, float(calibrator(top)) if calibrator else top))
        return out

    def _in_blend(self, name: str, route: str) -> bool:
        return route == BLEND and self.blend_ is not None and name in self.blend_["members"]

    def _ranked_for(self, route: str, i: int, rankings: dict[str, list[Ranked]], k: int) -> Ranked:
        if route == BLEND and self.blend_ is not None:
            names, weights = self.blend_["members"], self.blend_["weights"]
            if all(n in rankings for n in names):
                return _blend([rankings[n][i] for n in names], weights, k)
            return []
        return rankings[route][i][:k] if route in rankings else []

    def _any_answer(self, state: UIState, k: int) -> Ranked:
        for name in [LM, *self.members_]:
            member = self._member(name)
            if member is not None and (ranked := _valid(state, member.rank([state], k)[0])):
                return ranked
        return []

    def rank(self, states: Sequence[UIState], k: int = RANK_K) -> list[Ranked]:
        return [ranked for _, ranked, _ in self.answer(states, k)]

    def predict(self, states: Sequence[UIState]) -> list[Prediction]:
        out: list[Prediction] = []
        for state, (_, ranked, confidence) in zip(states, self.answer(states, 1), strict=True):
            if not ranked:
                raise ValueError(f"state {state.session_id}/{state.step} offers no valid action")
            out.append(Prediction(ranked[0][0], confidence))
        return out

    def propose_batch(self, states: Sequence[UIState], k: int = 5) -> list[Proposal | None]:
        """The top-``k`` proposal of each state (None where no member offers a valid action), with
        ``LMPolicy``'s features: ``probability`` is the calibrated P(right) of the first action; the
        alternatives' probabilities are the rest of the route's distribution, rescaled to the mass the
        calibrated first leaves (and never above it)."""
        out: list[Proposal | None] = []
        for state, (_, ranked, calibrated) in zip(states, self.answer(states, k), strict=True):
            if not ranked:
                out.append(None)
                continue
            raw_top = ranked[0][1]
            scale = (1.0 - calibrated) / (1.0 - raw_top) if raw_top < 1.0 else 0.0
            probs = [calibrated] + [min(calibrated, p * scale) for _, p in ranked[1:]]
            total = sum(p for _, p in ranked)
            shares = [p / total for _, p in ranked] if total > 0 else [1.0 / len(ranked)] * len(ranked)
            entropy = -sum(p * math.log(p) for p in shares if p > 0)
            scored = []
            for rank, ((action, raw), p) in enumerate(zip(ranked, probs, strict=True)):
                runner_up = probs[rank + 1] if rank + 1 < len(probs) else 0.0
                features = ProposalFeatures(
                    logprob=math.log(max(raw, 1e-12)) if raw < 1.0 else 0.0,
                    margin=max(0.0, p - runner_up),
                    entropy=max(0.0, entropy),
                    rank=rank,
                    probability=min(1.0, max(0.0, p)),
                )
                scored.append(ScoredAction(action=action, features=features))
            out.append(
                Proposal(
                    proposal_id=uuid.uuid4().hex,
                    session_id=state.session_id,
                    case_id=state.case_id,
                    process_id=state.process_id,
                    step=state.step,
                    state_etag=state.etag,
                    action=scored[0].action,
                    features=scored[0].features,
                    alternatives=scored[1:],
                    model_version=self.version_,
                )
            )
        return out

    def propose(self, state: UIState, k: int = 5) -> Proposal | None:
        return self.propose_batch([state], k)[0]

    # ---- reporting -----------------------------------------------------------------------------------------

    def choice_markdown(self) -> str:
        """Which predictor answers where, with the held-out figures behind each choice."""
        routing = self._require()
        validation = self.report_.get("validation", {})
        running = self.report_.get("possibly_running_cases", 0)
        held = "latest held out"
        if running:
            held = (
                f"latest the log saw through held out ({running} later ones, possibly running at its end, only fitted)"
            )
        lines = [
            f"Combined policy `{self.version_}`: {self.report_.get('fit_cases')} cases fitted, "
            f"{self.report_.get('validation_cases')} {held} ({validation.get('steps')} steps scored); "
            f"held-out accuracy {_shown(validation.get('combined_accuracy'))}, default `{routing.default}`; "
            f"fit {self.report_.get('fit_s')} s.",
            "",
            "| member | held-out acc | fit s | note |",
            "| --- | ---: | ---: | --- |",
        ]
        for name, info in self.report_.get("members", {}).items():
            note = self.report_.get("left_out", {}).get(name, "")
            if name.startswith("gbm") and "gbm_classes" in self.report_:
                note = note or f"classes: {self.report_['gbm_classes']}"
            if name == LM:
                note = note or (
                    f"{info.get('epochs_done')} epochs, {info.get('steps')} steps ({info.get('stopped')}), "
                    f"{' → '.join(map(str, info.get('thread_choices') or [info.get('threads')]))} thread(s)"
                )
            lines.append(
                f"| {name} | {_shown(info.get('validation_accuracy'))} | {_shown(info.get('fit_s'))} | {note} |"
            )
        for name, why in self.report_.get("left_out", {}).items():
            if name not in self.report_.get("members", {}):
                lines.append(f"| {name} | – | – | left out: {why} |")
        if self.blend_ is not None:
            mix = ", ".join(f"{n} {w:.1f}" for n, w in zip(self.blend_["members"], self.blend_["weights"], strict=True))
            lines.append(f"| {BLEND} | {self.blend_['validation_accuracy']} | – | {mix} |")
        lines += ["", "| group | held-out steps | chosen | accuracy of each (held out) |", "| --- | ---: | --- | --- |"]
        for group, info in routing.figures.items():
            if info.get("same_as_parent"):
                continue
            accuracies = ", ".join(f"{n} {a:.3f}" for n, a in info["accuracy"].items())
            lines.append(f"| {group} | {info['steps']} | **{info['chosen']}** | {accuracies} |")
        shares = validation.get("route_share", {})
        if shares:
            lines += ["", "Held-out steps answered by: " + ", ".join(f"{r} {s:.1%}" for r, s in shares.items())]
        return "\n".join(lines)

    # ---- persistence ---------------------------------------------------------------------------------------

    def save(self, path: str | Path) -> Path:
        """Write the directory atomically: the LM (if any) at its top as ``LMPolicy.save`` writes it, the other
        members in ``members.joblib`` (scikit-learn's own persistence: pickle, so load trusted directories
        only), the choice, calibration and held-out figures in ``combined.json``."""
        routing = self._require()
        target = Path(path)
        with atomic_directory(target) as tmp:
            if self.lm_ is not None:
                self.lm_.save(tmp)  # the LM at the top, exactly as LMPolicy.save writes it (it replaces tmp)
            joblib.dump(self.members_, tmp / MEMBERS_FILE)
            meta = {
                "format_version": FORMAT_VERSION,
                "version": self.version_,
                "params": {
                    k: getattr(self, k)
                    for k in (
                        "val_fraction",
                        "min_seen_through",
                        "max_val_steps",
                        "max_lm_val_steps",
                        "time_budget_s",
                        "min_lm_budget_s",
                        "lm",
                        "lm_threads",
                        "lm_settings",
                        "gbm",
                        "gbm_max_classes",
                        "gbm_max_samples",
                        "gbm_select_samples",
                        "blend",
                        "z",
                        "min_group_steps",
                        "refit",
                        "seed",
                        "name",
                    )
                },
                "has_lm": self.lm_ is not None,
                "routing": routing.to_dict(),
                "blend": self.blend_,
                "calibrators": {name: c.to_dict() for name, c in self.calibrators_.items()},
                "report": self.report_,
            }
            (tmp / COMBINED_FILE).write_text(json.dumps(meta, indent=1, default=str))
        return target

    @classmethod
    def load(cls, path: str | Path, *, progress: bool = False, scorer: CandidateScorer | None = None) -> CombinedPolicy:
        """The saved policy; ``scorer`` (a server holding the same LM checkpoint) is handed to the LM member."""
        root = Path(path)
        meta = read_meta(root, COMBINED_FILE, FORMAT_VERSION, "a combined policy directory")
        policy = cls(**meta["params"], progress=progress)
        policy.members_ = joblib.load(root / MEMBERS_FILE)  # trusted input only (see save)
        policy.lm_ = LMPolicy.load(root, progress=progress, scorer=scorer) if meta["has_lm"] else None
        policy.routing_ = Routing.from_dict(meta["routing"])
        policy.blend_ = meta["blend"]
        policy.calibrators_ = {n: IsotonicCalibrator.from_dict(c) for n, c in meta["calibrators"].items()}
        policy.report_ = meta["report"]
        policy.version_ = meta["version"]
        return policy


def load_policy(
    path: str | Path, *, progress: bool = False, scorer: CandidateScorer | None = None
) -> CombinedPolicy | LMPolicy:
    """Whichever policy the directory holds: a ``CombinedPolicy`` (``combined.json``) or an ``LMPolicy``.
    ``scorer``: a server holding the LM's weights (``policy.remote``), used by the LM of either kind."""
    root = Path(path)
    if (root / COMBINED_FILE).is_file():
        return CombinedPolicy.load(root, progress=progress, scorer=scorer)
    if (root / POLICY_FILE).is_file():
        return LMPolicy.load(root, progress=progress, scorer=scorer)
    raise FileNotFoundError(f"{root} is not a policy directory (no {COMBINED_FILE} or {POLICY_FILE})")
