"""The LM's size and training plan for a given amount of data and time.

One configuration does not fit a 700-step UI log and a 65,000-event log. Measured on this project's data:

* tiny data (the StudentRecord UI log, ~700 steps; a new process with a few dozen cases): a small model with a
  small vocabulary (hidden 64, 512 tokens) and many epochs; with an 8,192-token vocabulary, control
  plus value strings become tokens seen a handful of times and accuracy collapsed (0.24 against 0.71);
* large logs: the default model and its 4,096-token vocabulary, a few epochs, and a schedule fitted to the time budget
  (``TrainConfig.fit_to_budget``): a run that could not finish one epoch in its budget (0.17 accuracy on a
  60,000-event log after 16% of an epoch) instead trains whole epochs over a subsample, and the history says
  how many epochs it did, so a caller can notice an undertrained model (``TrainHistory.undertrained``).

Threads: the plan probes one against two threads on the first steps and keeps the faster
(``TrainConfig.probe_threads``): on an idle two-core machine two threads are faster, on a loaded one they
spin-wait and were five times slower.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from policy.model import ModelConfig
from policy.serialise import SerialConfig
from policy.train import TrainConfig

SMALL_DATA = 5_000
"""Training examples (steps) under which the small model and vocabulary are used."""

SMALL_MODEL = ModelConfig(hidden_size=64, layers=2, heads=2, kv_heads=1, intermediate_size=128)


@dataclass(frozen=True)
class LMPlan:
    model: ModelConfig
    training: TrainConfig
    vocab_size: int
    serial: SerialConfig
    prune_logprob: float | None


def plan_lm(
    n_examples: int, serial: SerialConfig, time_budget_s: float | None, *, seed: int = 0, threads: int | None = None
) -> LMPlan:
    """The LM configuration for ``n_examples`` training steps and a training budget of ``time_budget_s``.
    ``threads`` fixes the thread count (no probe)."""
    probe = threads is None
    # An activity log's candidates all start with the same verb: pruning by first token cannot drop any and
    # only costs an extra forward pass.
    prune = None if serial.bare_clicks else 9.0
    if n_examples < SMALL_DATA:
        batch = 16
        steps_per_epoch = max(1, math.ceil(n_examples / batch))
        training = TrainConfig(
            epochs=30,
            batch_size=batch,
            warmup_steps=min(50, 3 * steps_per_epoch),
            eval_every=max(20, steps_per_epoch),
            patience=5,
            time_budget_s=time_budget_s,
            threads=threads,
            seed=seed,
            fit_to_budget=time_budget_s is not None,
            min_epochs=3.0,
            probe_threads=probe,
        )
        return LMPlan(SMALL_MODEL, training, 512, serial, prune)
    batch = 32
    steps_per_epoch = math.ceil(n_examples / batch)
    training = TrainConfig(
        epochs=6 if n_examples < 20_000 else 3,
        batch_size=batch,
        eval_every=max(100, min(400, steps_per_epoch // 3)),
        patience=4,
        time_budget_s=time_budget_s,
        threads=threads,
        seed=seed,
        fit_to_budget=time_budget_s is not None,
        min_epochs=1.0,
        probe_threads=probe,
    )
    # 4,096 tokens: as accurate as 8,192 on the sandbox's screens and replies, with a head half the size
    # (decision 0019), and plenty for an activity log's activity ids and attribute values
    return LMPlan(ModelConfig(), training, 4096, serial, prune)
