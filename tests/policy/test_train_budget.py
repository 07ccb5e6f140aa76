"""Training under a time budget: a run that stops before one epoch says so, and a budget-fitted plan trains
whole epochs over a subsample instead; the thread probe records what it measured."""

from __future__ import annotations

import random
import types
from collections.abc import Callable

import pytest
import torch

import policy.train
from policy.model import ModelConfig, build_model
from policy.train import Example, ThreadPace, TrainConfig, _lr, train

TINY = ModelConfig(hidden_size=32, layers=1, heads=2, kv_heads=1, intermediate_size=64)


@pytest.fixture
def examples() -> list[Example]:
    rng = random.Random(0)
    out = []
    for _ in range(3000):
        prompt = [rng.randrange(4, 40) for _ in range(rng.randrange(5, 12))]
        out.append(Example(ids=[*prompt, 2, prompt[-1] % 7 + 40, 3], prompt_len=len(prompt) + 1))
    return out


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(TINY, vocab_size=64, pad_id=0, bos_id=2, eos_id=3)


def test_a_budget_that_runs_out_before_an_epoch_is_noticed(examples: list[Example]) -> None:
    cfg = TrainConfig(epochs=2, batch_size=8, eval_every=1000, time_budget_s=0.0, threads=1)
    history = train(_model(), examples, examples[:50], cfg, pad_id=0, progress=False)
    assert history.stopped == "time budget"
    assert history.epochs_done < 1 and history.undertrained


def test_a_budget_fitted_plan_trains_whole_epochs_over_a_subsample(examples: list[Example]) -> None:
    # ~375 steps per epoch; a fifth of a second cannot afford one epoch of them all on any machine here
    cfg = TrainConfig(
        epochs=3, batch_size=8, eval_every=1000, time_budget_s=0.2, fit_to_budget=True, min_epochs=1.0,
        probe_steps=6, threads=1,
    )  # fmt: skip
    history = train(_model(), examples, examples[:50], cfg, pad_id=0, progress=False)
    assert history.examples_used < len(examples)
    assert history.epochs_done >= 1.0 - 1e-9 and not history.undertrained
    assert history.planned_steps <= 3 * 375 and set(history.step_seconds) == {"1"}


class StepClock:
    """A fake ``time`` whose every reading moves ``cost(reading number, torch's thread count)`` seconds on: the
    training loop reads the clock about once a step (with a time budget), so this is a machine whose speed the
    test sets, load changes included."""

    def __init__(self, cost: Callable[[int, int], float]) -> None:
        self.now, self.readings, self.cost = 0.0, 0, cost

    def perf_counter(self) -> float:
        self.readings += 1
        self.now += self.cost(self.readings, torch.get_num_threads())
        return self.now


def test_a_budget_fitted_plan_still_finishes_its_epoch_when_the_machine_slows(
    examples: list[Example], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The probe's 7 steps read the clock twice each at 1 ms a step: what is left of 0.2 s affords 155 steps, so the
    # plan keeps 1,240 examples for one epoch of 155 steps. Then each step takes 1.4 ms: at the first replanning the
    # rest of the budget affords fewer steps than that epoch, so the examples are subsampled again and the run ends
    # about on its budget with a whole epoch's worth of steps (cut to the budget and nothing else, it stopped at
    # 0.82 epochs and was undertrained)
    clock = StepClock(lambda reading, _threads: 0.001 if reading <= 15 else 0.0014)
    monkeypatch.setattr(policy.train, "time", types.SimpleNamespace(perf_counter=clock.perf_counter))
    cfg = TrainConfig(
        epochs=3, batch_size=8, eval_every=20, time_budget_s=0.2, fit_to_budget=True, min_epochs=1.0,
        probe_steps=6, threads=1,
    )  # fmt: skip
    history = train(_model(), examples, examples[:20], cfg, pad_id=0, progress=False)
    assert history.examples_used < 1240
    assert history.epochs_done >= 1.0 - 1e-9 and not history.undertrained
    assert history.steps == history.planned_steps
    assert clock.now <= 1.05 * cfg.time_budget_s  # not the half-again overrun the deadline would allow


def test_training_moves_to_the_faster_thread_count_when_the_load_changes(
    examples: list[Example], monkeypatch: pytest.MonkeyPatch
) -> None:
    # two threads are faster than one on an idle machine (the probe's 26 readings and some 30 steps); then another
    # job takes a core and they spin-wait, 20 times slower than one
    clock = StepClock(lambda reading, threads: (0.0008 if reading <= 60 else 0.02) if threads == 2 else 0.001)
    monkeypatch.setattr(policy.train, "time", types.SimpleNamespace(perf_counter=clock.perf_counter))
    monkeypatch.setattr(policy.train, "_probe_thread_counts", lambda: [1, 2])  # as on a two-core machine
    # a budget it never reaches: the loop then reads the clock once a step, which is what moves this clock; no
    # validation before the end, so the pace is checked every PACE_EVERY steps
    cfg = TrainConfig(epochs=1, batch_size=8, eval_every=1000, probe_threads=True, probe_steps=6, time_budget_s=1e6)
    try:
        history = train(_model(), examples[:800], examples[:20], cfg, pad_id=0, progress=False)
    finally:
        torch.set_num_threads(1)  # the suite's setting (conftest)
    assert history.thread_choices == [2, 1]  # the probe chose two threads; once they slowed, one
    assert history.threads == 1 and set(history.step_seconds) == {"1", "2"}
    assert history.step_seconds["2"] > 10 * history.step_seconds["1"]  # timed again under the load


def test_the_pace_times_the_counts_in_pairs_and_asks_again_only_when_slowed() -> None:
    pace = ThreadPace([1, 2], chosen=2)
    pace.time_steps(5, untimed=1)
    asked = []
    for seconds in (9.0, 0.2, 0.3, 0.1, 0.1):  # the first step is not counted
        asked.append(pace.threads())
        pace.record(seconds)
    assert asked == [1, 1, 2, 2, 1] and not pace.timing
    assert pace.medians == {1: pytest.approx(0.15), 2: pytest.approx(0.2)} and pace.chosen == 1
    assert not pace.slowed(0.29) and pace.slowed(0.31)  # twice the mean of the chosen count's timed steps
    assert not ThreadPace([1], chosen=1, timings={1: [0.1]}).slowed(10.0)  # no other count to try


def test_the_thread_probe_keeps_the_faster_count(examples: list[Example]) -> None:
    cfg = TrainConfig(epochs=1, batch_size=8, eval_every=1000, probe_threads=True, probe_steps=4)
    history = train(_model(), examples[:200], examples[:50], cfg, pad_id=0, progress=False)
    timings = {int(n): t for n, t in history.step_seconds.items()}
    assert history.threads == min(timings, key=lambda n: timings[n])
    torch.set_num_threads(1)  # the suite's setting (conftest)


def test_warmup_is_at_most_a_tenth_of_a_short_schedule() -> None:
    cfg = TrainConfig(learning_rate=1e-3, min_learning_rate=1e-5, warmup_steps=100)
    assert _lr(9, 100, cfg) == pytest.approx(1e-3)  # 100 planned steps: warm after 10
    assert _lr(0, 100, cfg) == pytest.approx(1e-4)
    assert _lr(9, 5000, cfg) == pytest.approx(1e-3 * 10 / 100)  # a long schedule keeps its 100
    assert _lr(99, 100, cfg) < _lr(50, 100, cfg) < _lr(10, 100, cfg)  # then the cosine decays to the end
