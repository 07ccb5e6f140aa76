"""The training loop: next-action language modelling on (prompt, action) pairs, one readable loop.

The loss is the cross-entropy of the action tokens only (the prompt is context, not a target). AdamW with a
linear warm-up and cosine decay; periodic validation loss; early stopping keeps the best weights; an optional
wall-clock budget stops training gracefully.
"""

from __future__ import annotations

import math
import os
import random
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import torch
from transformers import PreTrainedModel

from schemas.progress import progress_bar

IGNORE = -100
PACE_EVERY = 50  # steps between checks of the training pace (also at every validation)
MIN_PACE_STEPS = 10  # the fewest steps a pace is read from


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 6
    batch_size: int = 32
    learning_rate: float = 3e-3
    min_learning_rate: float = 1e-4
    weight_decay: float = 0.01
    warmup_steps: int = 100
    grad_clip: float = 1.0
    eval_every: int = 200
    patience: int = 4  # evaluations without improvement before stopping
    val_fraction: float = 0.05
    time_budget_s: float | None = None
    threads: int | None = None
    seed: int = 0
    # Fit the plan to the time budget (needs ``time_budget_s``): after ``probe_steps`` timed steps the schedule is
    # cut to the steps the budget affords, and when that is under ``min_epochs`` epochs the training examples are
    # subsampled so that ``min_epochs`` whole epochs fit (a model that saw a sixth of its data once is worse than
    # one that saw a well-mixed half twice). Such a plan may overrun its budget by half to finish its
    # ``min_epochs`` (a load change can make the probe's estimate short). Without it a budget only stops the run.
    fit_to_budget: bool = False
    min_epochs: float = 1.0
    probe_steps: int = 12
    # Time the probe steps on one thread and on all the threads torch may use, alternately, and keep the faster
    # (on a shared two-core machine two threads can be much slower than one); ``threads`` is then ignored.
    probe_threads: bool = False

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class Example:
    ids: list[int]
    prompt_len: int  # tokens before the first target token


@dataclass
class TrainHistory:
    evaluations: list[dict[str, float]] = field(default_factory=list)
    best_val_loss: float = math.inf
    best_step: int = 0
    steps: int = 0
    stopped: str = "epochs"
    seconds: float = 0.0
    tokens: int = 0
    epochs_done: float = 0.0  # optimizer steps / steps per epoch of the examples used: < 1 = undertrained
    examples_used: int = 0
    planned_steps: int = 0
    threads: int = 0
    step_seconds: dict[str, float] = field(default_factory=dict)  # median s a step, by thread count, last timed
    thread_choices: list[int] = field(default_factory=list)  # the counts chosen, in order (re-timed when slowed)

    @property
    def undertrained(self) -> bool:
        """Stopped before one whole pass over its training examples (a budget that ran out too early)."""
        return self.epochs_done < 1.0 - 1e-9


@dataclass
class ThreadPace:
    """The thread count training runs on, chosen by timing real training steps on each of ``counts``
    (``TrainConfig.probe_threads``; the fastest median), and chosen again when steps take ``slower`` times as long
    as the chosen count's timed steps. On a shared two-core machine two threads were 20-40 times slower than one while other
    jobs ran and faster on an idle machine, so a choice made at the start can turn wrong within the run: on W
    replicated five times, a job that took one core a minute after the probe left the LM 801 steps in its budget
    on the two threads the probe had chosen (6,522 once re-timed)."""

    counts: list[int]
    chosen: int
    slower: float = 2.0
    medians: dict[int, float] = field(default_factory=dict)
    timings: dict[int, list[float]] = field(default_factory=dict)
    _schedule: list[int] = field(default_factory=list)
    _untimed: int = 0

    def time_steps(self, steps: int, untimed: int = 0) -> None:
        """Time the next ``steps`` steps, the counts alternating in pairs (a change in load hits both), the first
        ``untimed`` of them not counted (one-off allocations)."""
        self.timings = {n: [] for n in self.counts}
        self._schedule = [self.counts[(i // 2) % len(self.counts)] for i in range(steps)]
        self._untimed = untimed

    @property
    def timing(self) -> bool:
        return bool(self._schedule)

    def threads(self) -> int:
        """The thread count of the next step."""
        return self._schedule[0] if self._schedule else self.chosen

    def record(self, seconds: float) -> None:
        """The next step's time; after the last timed step, the fastest count is chosen."""
        count = self._schedule.pop(0)
        if self._untimed:
            self._untimed -= 1
        else:
            self.timings[count].append(seconds)
        if not self._schedule:
            self.finish()

    def finish(self) -> None:
        """Stop timing and choose the fastest count of those timed (none timed: the choice stays)."""
        self._schedule, self._untimed = [], 0
        self.medians = {n: statistics.median(t) for n, t in self.timings.items() if t}
        if self.medians:
            self.chosen = min(self.medians, key=lambda n: self.medians[n])

    def slowed(self, seconds_per_step: float) -> bool:
        """Whether steps now take ``slower`` times as long as the chosen count's timed steps, with another count
        to try. Compared with their mean, as the pace is: a log whose batches vary much in length has a mean step
        well above its median, and must not look slowed."""
        timed = self.timings.get(self.chosen)
        if len(self.counts) < 2 or self.timing or not timed:
            return False
        return seconds_per_step > self.slower * statistics.fmean(timed)


def _batches(examples: Sequence[Example], batch_size: int, rng: random.Random) -> list[list[Example]]:
    """Shuffled batches of similar length: sort within large shuffled chunks, so padding stays small."""
    order = list(examples)
    rng.shuffle(order)
    chunk = batch_size * 50
    batches: list[list[Example]] = []
    for i in range(0, len(order), chunk):
        group = sorted(order[i : i + chunk], key=lambda e: len(e.ids))
        batches.extend(group[j : j + batch_size] for j in range(0, len(group), batch_size))
    rng.shuffle(batches)
    return batches


def collate(batch: Sequence[Example], pad_id: int) -> dict[str, torch.Tensor]:
    width = max(len(e.ids) for e in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    labels = torch.full((len(batch), width), IGNORE, dtype=torch.long)
    for i, e in enumerate(batch):
        n = len(e.ids)
        ids[i, :n] = torch.tensor(e.ids)
        mask[i, :n] = 1
        labels[i, e.prompt_len : n] = ids[i, e.prompt_len : n]
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def action_loss(model: PreTrainedModel, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
    """Mean cross-entropy of the target tokens and their count. Logits are computed only at the positions that
    predict a target: the prompt is most of every sequence, and a full-vocabulary head over it would cost
    more than the whole transformer."""
    hidden = model.get_decoder()(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    labels = batch["labels"][:, 1:]
    selected = labels != IGNORE
    head = model.get_output_embeddings()
    assert head is not None
    logits = head(hidden[:, :-1][selected])
    targets = labels[selected]
    return torch.nn.functional.cross_entropy(logits.float(), targets), int(targets.numel())


@torch.no_grad()
def evaluate_loss(model: PreTrainedModel, examples: Sequence[Example], pad_id: int, batch_size: int = 64) -> float:
    """Mean per-token loss of the action tokens."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    ordered = sorted(examples, key=lambda e: len(e.ids))
    for i in range(0, len(ordered), batch_size):
        loss, n = action_loss(model, collate(ordered[i : i + batch_size], pad_id))
        total += float(loss) * n
        count += n
    model.train(was_training)
    return total / max(count, 1)


def _lr(step: int, total: int, cfg: TrainConfig) -> float:
    # Warmup is at most a tenth of the schedule: a budget-cut plan of ~100 steps spent all but a few of them
    # warming up under the default 100 (measured in the demo on a loaded machine: an LM at 0.32 accuracy).
    warmup = min(cfg.warmup_steps, max(1, total // 10))
    if step < warmup:
        return cfg.learning_rate * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return cfg.min_learning_rate + 0.5 * (1 + math.cos(math.pi * progress)) * (
        cfg.learning_rate - cfg.min_learning_rate
    )


def _deadline(cfg: TrainConfig, budgeted: bool, epochs_done: float) -> float:
    """Seconds after which training stops. A plan fitted to the budget may overrun it by half until its
    ``min_epochs`` are done (the probe's estimate can be off on a machine whose load changes): a plan that
    stops short of one epoch is the failure it exists to prevent."""
    assert cfg.time_budget_s is not None
    if budgeted and epochs_done < cfg.min_epochs:
        return 1.5 * cfg.time_budget_s
    return cfg.time_budget_s


def _epochs_sample(examples: list[Example], steps: int, cfg: TrainConfig, rng: random.Random) -> list[Example]:
    """A random sample of ``examples`` small enough that ``steps`` make ``min_epochs`` epochs over it: a model
    that saw a sixth of its data once is worse than one that saw a well-mixed half twice."""
    keep = max(cfg.batch_size, int(steps * cfg.batch_size / cfg.min_epochs))
    return rng.sample(examples, min(keep, len(examples)))


def _probe_thread_counts() -> list[int]:
    """1 and the most threads torch may use (one entry when that is 1)."""
    most = max(1, torch.get_num_threads(), min(os.cpu_count() or 1, 2))
    return [1] if most == 1 else [1, most]


def train(
    model: PreTrainedModel,
    train_examples: Sequence[Example],
    val_examples: Sequence[Example],
    cfg: TrainConfig,
    pad_id: int,
    *,
    progress: bool = True,
    on_eval: Callable[[dict[str, float]], None] | None = None,
) -> TrainHistory:
    """Train ``model`` in place; on return it holds the weights with the best validation loss."""
    if not train_examples:
        raise ValueError("no training examples")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    rng = random.Random(cfg.seed)
    trainable = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in trainable if p.dim() >= 2]
    no_decay = [p for p in trainable if p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.learning_rate,
        betas=(0.9, 0.95),
    )
    examples = list(train_examples)
    steps_per_epoch = math.ceil(len(examples) / cfg.batch_size)
    total = steps_per_epoch * cfg.epochs
    history = TrainHistory(examples_used=len(examples), planned_steps=total, threads=torch.get_num_threads())
    best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    stale = 0
    started = time.perf_counter()
    bar = progress_bar(total=total, desc="training", unit="batch", disable=not progress, dynamic_ncols=True)
    model.train()
    step = 0
    running = 0.0

    def optimise(batch_examples: Sequence[Example]) -> None:
        nonlocal step, running
        for group in optimizer.param_groups:
            group["lr"] = _lr(step, total, cfg)
        batch = collate(batch_examples, pad_id)
        loss, _ = action_loss(model, batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, cfg.grad_clip)
        optimizer.step()
        history.tokens += int(batch["attention_mask"].sum())
        value = float(loss.detach())
        running = value if step == 0 else 0.95 * running + 0.05 * value
        step += 1
        bar.update(1)

    def validate() -> bool:
        """Record an evaluation; return True when training should stop (patience exhausted)."""
        nonlocal stale, best_state
        val = evaluate_loss(model, val_examples, pad_id) if val_examples else running
        row = {"step": float(step), "train_loss": running, "val_loss": val, "seconds": time.perf_counter() - started}
        history.evaluations.append(row)
        if on_eval:
            on_eval(row)
        if val < history.best_val_loss - 1e-4:
            history.best_val_loss, history.best_step, stale = val, step, 0
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            stale += 1
        bar.set_postfix(train=f"{running:.3f}", val=f"{val:.3f}", best=f"{history.best_val_loss:.3f}")
        return stale >= cfg.patience

    since = (started, step)  # the time and step the pace is measured from (no validation, no timing in between)

    def timed_step(batch_examples: Sequence[Example]) -> None:
        """One step on the thread count the pace gives it, timed while the pace is timing counts."""
        if not pace.timing:
            optimise(batch_examples)
            return
        torch.set_num_threads(pace.threads())
        tick = time.perf_counter()
        optimise(batch_examples)
        pace.record(time.perf_counter() - tick)
        if not pace.timing:
            use_chosen()

    def use_chosen() -> None:
        """Go on with the count the pace chose, and record it; the pace is measured again from here (the timed
        steps on a slower count would make it look slowed again)."""
        nonlocal since
        since = (time.perf_counter(), step)
        torch.set_num_threads(pace.chosen)
        history.threads = pace.chosen
        history.thread_choices.append(pace.chosen)
        history.step_seconds = {str(n): t for n, t in pace.medians.items()}

    budgeted = cfg.fit_to_budget and cfg.time_budget_s is not None
    counts = _probe_thread_counts() if cfg.probe_threads else [torch.get_num_threads()]
    pace = ThreadPace(counts, chosen=torch.get_num_threads())
    if (budgeted or cfg.probe_threads) and cfg.probe_steps > 0:
        # Probe: real training steps on a random sample of batches, timed (the first one, with its one-off
        # allocations, is not counted).
        pace.time_steps(cfg.probe_steps + 1, untimed=1)
        probe = _batches(rng.sample(examples, min(len(examples), cfg.batch_size * (cfg.probe_steps + 1))),
                         cfg.batch_size, rng)  # fmt: skip
        for batch_examples in probe[: cfg.probe_steps + 1]:
            timed_step(batch_examples)
        if pace.timing:  # fewer examples than the probe's steps: choose from those timed
            pace.finish()
            use_chosen()
        if budgeted and pace.medians:
            assert cfg.time_budget_s is not None
            # a fifth of what is left goes to the periodic validations and to steps slower than the probe's
            mean_step = statistics.fmean(pace.timings[pace.chosen])
            affordable = step + int(0.8 * (cfg.time_budget_s - (time.perf_counter() - started)) / mean_step)
            if affordable < total:
                total = max(step + 1, affordable)
                if total < math.ceil(cfg.min_epochs * steps_per_epoch):
                    examples = _epochs_sample(examples, total, cfg, rng)
                    steps_per_epoch = math.ceil(len(examples) / cfg.batch_size)
                history.examples_used, history.planned_steps = len(examples), total
                bar.total = total

    stop = False

    def replan() -> None:
        """Fit the schedule to the budget again from the pace so far (validations included): the probe's few
        steps can misjudge a machine whose load changes, in either direction. When what is left affords fewer
        than ``min_epochs`` epochs, the examples are subsampled again, as the first plan does, and the learning
        rate still decays to the schedule's end. With one epoch planned (the large logs': ``policy.sizing``) the
        steps taken so far drew each example at most once, so the run is one epoch over a smaller sample. Left
        as it was (the schedule cut, the examples kept), a machine that got busier after the probe left the LM
        0.74 epochs of a 410,000-step log, which the combined policy then had to leave out; letting it overrun
        the budget instead still ended short of an epoch, and the refits the budget was meant for were
        skipped."""
        nonlocal total, examples, steps_per_epoch
        assert cfg.time_budget_s is not None
        elapsed = time.perf_counter() - started
        affordable = step + int(0.9 * (cfg.time_budget_s - elapsed) / (elapsed / step))
        total = max(step + 1, min(cfg.epochs * steps_per_epoch, affordable))
        if total < math.ceil(cfg.min_epochs * steps_per_epoch):
            examples = _epochs_sample(examples, total, cfg, rng)
            steps_per_epoch = math.ceil(len(examples) / cfg.batch_size)
            history.examples_used = len(examples)
        history.planned_steps = bar.total = total

    def check_pace() -> None:
        """Time the thread counts again on the next steps when the steps since ``since`` (at least
        ``MIN_PACE_STEPS`` of them) were slower than the chosen count's timed pace by ``pace.slower``."""
        nonlocal since
        now = time.perf_counter()
        if step - since[1] >= MIN_PACE_STEPS and pace.slowed((now - since[0]) / (step - since[1])):
            pace.time_steps(cfg.probe_steps + 1, untimed=1)
        since = (now, step)

    since = (time.perf_counter(), step)
    while not stop and step < total:
        for batch_examples in _batches(examples, cfg.batch_size, rng):
            timed_step(batch_examples)
            if step % cfg.eval_every == 0:
                check_pace()
                if validate():
                    history.stopped = "early stopping"
                    break
                if budgeted:
                    replan()
                since = (time.perf_counter(), step)  # the validation's time is not a step's
            elif step - since[1] >= PACE_EVERY:
                check_pace()
            if cfg.time_budget_s is not None and time.perf_counter() - started > _deadline(
                cfg, budgeted, step / steps_per_epoch
            ):
                history.stopped = "time budget"
                break
            if step >= total:
                break
        stop = history.stopped in ("early stopping", "time budget")
    if not stop or history.stopped == "time budget":
        validate()
    bar.close()
    model.load_state_dict(best_state)
    model.eval()
    history.steps = step
    history.epochs_done = step / steps_per_epoch  # the probe's steps count as part of the first epoch
    history.seconds = time.perf_counter() - started
    return history
