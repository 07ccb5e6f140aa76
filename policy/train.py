"""The training loop: next-action language modelling on (prompt, action) pairs, one readable loop.

The loss is the cross-entropy of the action tokens only (the prompt is context, not a target). AdamW with a
linear warm-up and cosine decay; periodic validation loss; early stopping keeps the best weights; an optional
wall-clock budget stops training gracefully.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel

IGNORE = -100


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
    if step < cfg.warmup_steps:
        return cfg.learning_rate * (step + 1) / cfg.warmup_steps
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps))
    return cfg.min_learning_rate + 0.5 * (1 + math.cos(math.pi * progress)) * (
        cfg.learning_rate - cfg.min_learning_rate
    )


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
    steps_per_epoch = math.ceil(len(train_examples) / cfg.batch_size)
    total = steps_per_epoch * cfg.epochs
    history = TrainHistory()
    best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    stale = 0
    started = time.perf_counter()
    bar = tqdm(total=total, desc="training", unit="batch", disable=not progress, dynamic_ncols=True)
    model.train()
    step = 0
    running = 0.0

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

    stop = False
    for _epoch in range(cfg.epochs):
        for batch_examples in _batches(train_examples, cfg.batch_size, rng):
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
            if step % cfg.eval_every == 0 and validate():
                history.stopped = "early stopping"
                stop = True
            elif cfg.time_budget_s is not None and time.perf_counter() - started > cfg.time_budget_s:
                history.stopped = "time budget"
                stop = True
            if stop:
                break
        if stop:
            break
    if not stop or history.stopped == "time budget":
        validate()
    bar.close()
    model.load_state_dict(best_state)
    model.eval()
    history.steps = step
    history.seconds = time.perf_counter() - started
    return history
