"""Copilot corrections improve the policy: a DPO-style preference update of the LM, anchored by the traces.

A copilot proposal the operator rejected as a ``model_error`` and replaced by their own action is a preference
pair: in that state the operator's action (*chosen*) is preferred over the proposal (*rejected*). Direct
Preference Optimisation (Rafailov et al., 2023) raises the chosen action's log-probability relative to the
rejected one's, measured against a frozen *reference model* (the trace-trained policy before the update):

    loss_pref = -log sigmoid(beta * ((log pi(chosen) - log ref(chosen)) - (log pi(rejected) - log ref(rejected))))

Corrections are few and skewed towards the states the policy gets wrong; the update must not forget the rest.
So each step also takes a batch of the trace examples the policy was trained on and adds their next-action
cross-entropy (``sft_weight``): the traces are the reference data that keep every other state where it was.
A pair about one state of a screen moves the model for every state of that screen (a select option rejected
once is pushed down wherever the screen shows it), so ``matched_anchor`` of the trace batch is drawn from the
screens of the step's pairs: the anchor holds hardest where the update pushes.
The operator's actions are also added to the template bank, so a reply or field value the policy has never
seen becomes a candidate it can propose.

Only acceptance decides: corrections with another reason (an acceptable alternative, the environment) are not
preferences about the policy and are left out (``preference_pairs``).
"""

from __future__ import annotations

import copy
import hashlib
import math
import random
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import torch
from transformers import PreTrainedModel

from policy.policy import LMPolicy
from policy.serialise import action_text
from policy.train import IGNORE, Example, action_loss, collate
from schemas.actions import Action, action_key, action_target
from schemas.decision import RejectReason
from schemas.feedback import FeedbackRecord
from schemas.state import UIState
from schemas.trace import Trace


@dataclass(frozen=True, slots=True)
class PreferencePair:
    """In ``state``, ``chosen`` (the operator's action) is preferred over ``rejected`` (the proposal)."""

    state: UIState
    chosen: Action
    rejected: Action


def is_value_pair(pair: PreferencePair) -> bool:
    """Whether the two actions differ only in the value: the same type and target, another option, wording or
    typed value."""
    return pair.chosen.type == pair.rejected.type and action_target(pair.chosen) == action_target(pair.rejected)


def preference_pairs(records: Iterable[FeedbackRecord]) -> list[PreferencePair]:
    """The pairs of the copilot corrections whose reason is ``model_error`` and whose operator action differs
    from the proposal."""
    pairs = []
    for record in records:
        if record.accepted or record.reason != RejectReason.MODEL_ERROR or record.operator_action is None:
            continue
        if action_key(record.operator_action) == action_key(record.proposal.action):
            continue
        pairs.append(PreferencePair(record.state, record.operator_action, record.proposal.action))
    return pairs


@dataclass(frozen=True)
class PreferenceConfig:
    beta: float = 0.5
    sft_weight: float = 1.0
    epochs: int = 4
    batch_size: int = 16
    trace_batch_size: int = 32
    matched_anchor: float = 0.5  # share of the trace batch drawn from the screens of the step's pairs
    learning_rate: float = 3e-4
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    time_budget_s: float | None = None
    threads: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0.0 <= self.matched_anchor <= 1.0:
            raise ValueError(f"matched_anchor must lie in [0, 1], got {self.matched_anchor}")


@dataclass
class PreferenceHistory:
    steps: int = 0
    pairs: int = 0
    seconds: float = 0.0
    stopped: str = "epochs"
    losses: list[dict[str, float]] = field(default_factory=list)
    margin_before: float = 0.0  # mean (log pi(chosen) - log pi(rejected)) over the pairs
    margin_after: float = 0.0
    templates_added: int = 0


def sequence_logprobs(model: PreTrainedModel, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Per row of a ``collate``d batch, the summed log-probability of its target (action) tokens."""
    hidden = model.get_decoder()(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    labels = batch["labels"][:, 1:]
    selected = labels != IGNORE
    head = model.get_output_embeddings()
    assert head is not None
    logits = head(hidden[:, :-1][selected]).float()
    token_lp = torch.log_softmax(logits, dim=-1).gather(1, labels[selected].unsqueeze(1)).squeeze(1)
    rows = torch.arange(labels.shape[0]).unsqueeze(1).expand_as(labels)[selected]
    return torch.zeros(labels.shape[0], dtype=token_lp.dtype).index_add(0, rows, token_lp)


def _example(policy: LMPolicy, state: UIState, action: Action) -> Example:
    assert policy.codec_ is not None
    prompt = policy.codec_.encode_prompt(policy.prompt(state))
    return Example(ids=prompt + policy.codec_.encode_action(action_text(action, state)), prompt_len=len(prompt))


def _pad_id(policy: LMPolicy) -> int:
    assert policy.codec_ is not None
    pad = policy.codec_.tokenizer.pad_token_id
    return int(pad) if isinstance(pad, int) else policy.codec_.action_end[0]


@torch.no_grad()
def _logprobs(model: PreTrainedModel, examples: Sequence[Example], pad_id: int, batch_size: int = 64) -> torch.Tensor:
    was_training = model.training
    model.eval()
    out = [
        sequence_logprobs(model, collate(examples[i : i + batch_size], pad_id))
        for i in range(0, len(examples), batch_size)
    ]
    model.train(was_training)
    return torch.cat(out) if out else torch.zeros(0)


def preference_margin(policy: LMPolicy, pairs: Sequence[PreferencePair]) -> float:
    """Mean log pi(chosen) - log pi(rejected) over the pairs (the full sequences, as the update sees them)."""
    model = policy.model_
    assert model is not None
    pad_id = _pad_id(policy)
    chosen = _logprobs(model, [_example(policy, p.state, p.chosen) for p in pairs], pad_id)
    rejected = _logprobs(model, [_example(policy, p.state, p.rejected) for p in pairs], pad_id)
    return float((chosen - rejected).mean()) if len(pairs) else 0.0


def _screen_key(state: UIState) -> tuple[str, str]:
    return state.process_id, state.screen.screen_id


def _anchor_batch(
    examples: Sequence[Example], screens: Sequence[list[int]], cfg: PreferenceConfig, rng: random.Random
) -> list[Example]:
    """``trace_batch_size`` trace examples: ``matched_anchor`` of them from the screens of the step's pairs
    (``screens``: the trace examples on each pair's screen), the rest from all the traces."""
    size = min(cfg.trace_batch_size, len(examples))
    pools = [pool for pool in screens if pool]
    matched = round(cfg.matched_anchor * size) if pools else 0
    batch = [examples[rng.choice(rng.choice(pools))] for _ in range(matched)]
    return batch + rng.sample(examples, size - matched)


def preference_update(
    policy: LMPolicy,
    pairs: Sequence[PreferencePair],
    traces: Sequence[Trace],
    config: PreferenceConfig | None = None,
) -> PreferenceHistory:
    """Update ``policy``'s LM in place on the preference pairs, with ``traces`` (its training traces) as the
    reference data, and give it a new version. The reference model is a frozen copy of the LM as it was."""
    cfg = config or PreferenceConfig()
    if policy.model_ is None or policy.codec_ is None or policy.bank_ is None:
        raise ValueError("preference_update needs a fitted LMPolicy")
    if not pairs:
        raise ValueError("no preference pairs: nothing to learn from")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    history = PreferenceHistory(pairs=len(pairs))
    started = time.perf_counter()
    before = sum(len(c) for c in policy.bank_.counts.values())
    for pair in pairs:  # the operator's value becomes a candidate the policy can propose
        policy.bank_.add_action_text(
            pair.state.process_id, action_text(pair.chosen, pair.state), pair.state.screen.screen_id
        )
    history.templates_added = sum(len(c) for c in policy.bank_.counts.values()) - before

    model = policy.model_
    pad_id = _pad_id(policy)
    reference = copy.deepcopy(model).eval()
    for parameter in reference.parameters():
        parameter.requires_grad_(False)
    chosen = [_example(policy, p.state, p.chosen) for p in pairs]
    rejected = [_example(policy, p.state, p.rejected) for p in pairs]
    ref_chosen = _logprobs(reference, chosen, pad_id)
    ref_rejected = _logprobs(reference, rejected, pad_id)
    history.margin_before = float((ref_chosen - ref_rejected).mean())
    trace_steps = [step for trace in traces for step in trace.steps]
    trace_examples = [_example(policy, step.state, step.action) for step in trace_steps]
    on_screen: dict[tuple[str, str], list[int]] = {}
    for i, step in enumerate(trace_steps):
        on_screen.setdefault(_screen_key(step.state), []).append(i)

    torch.manual_seed(cfg.seed)
    rng = random.Random(cfg.seed)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=cfg.learning_rate, weight_decay=cfg.weight_decay, betas=(0.9, 0.95))
    model.train()
    order = list(range(len(pairs)))
    total = cfg.epochs * math.ceil(len(pairs) / cfg.batch_size)
    stop = False
    for _epoch in range(cfg.epochs):
        rng.shuffle(order)
        for start in range(0, len(order), cfg.batch_size):
            rows = order[start : start + cfg.batch_size]
            for group in optimizer.param_groups:  # cosine decay to a tenth
                group["lr"] = cfg.learning_rate * (0.55 + 0.45 * math.cos(math.pi * history.steps / max(total, 1)))
            both = collate([chosen[i] for i in rows] + [rejected[i] for i in rows], pad_id)
            logps = sequence_logprobs(model, both)
            lp_chosen, lp_rejected = logps[: len(rows)], logps[len(rows) :]
            index = torch.tensor(rows)
            logits = cfg.beta * ((lp_chosen - ref_chosen[index]) - (lp_rejected - ref_rejected[index]))
            loss_pref = -torch.nn.functional.logsigmoid(logits).mean()
            loss = loss_pref
            loss_sft = torch.zeros(())
            if trace_examples and cfg.sft_weight > 0:
                screens = [on_screen.get(_screen_key(pairs[i].state), []) for i in rows]
                batch = _anchor_batch(trace_examples, screens, cfg, rng)
                loss_sft, _ = action_loss(model, collate(batch, pad_id))
                loss = loss + cfg.sft_weight * loss_sft
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(trainable, cfg.grad_clip)
            optimizer.step()
            history.steps += 1
            history.losses.append(
                {
                    "step": float(history.steps),
                    "preference": loss_pref.detach().item(),
                    "traces": loss_sft.detach().item(),
                }
            )
            if cfg.time_budget_s is not None and time.perf_counter() - started > cfg.time_budget_s:
                history.stopped, stop = "time budget", True
                break
        if stop:
            break
    model.eval()
    history.margin_after = preference_margin(policy, pairs)
    digest = hashlib.blake2b(digest_size=6)
    digest.update(policy.version_.encode())
    for tensor in model.state_dict().values():
        digest.update(tensor.detach().cpu().numpy().tobytes()[:4096])
    policy.version_ = f"lm-{digest.hexdigest()}"
    history.seconds = time.perf_counter() - started
    return history


@dataclass
class GateReport:
    """Why a preference update was kept or undone: held-out pairs won (chosen scored above rejected) and the
    per-action-type accuracy on held-out traces, before and after."""

    accepted: bool
    reason: str
    pairs_won_before: float
    pairs_won_after: float
    accuracy_before: dict[str, float]
    accuracy_after: dict[str, float]
    history: PreferenceHistory


def _pairs_won(policy: LMPolicy, pairs: Sequence[PreferencePair]) -> float:
    model = policy.model_
    assert model is not None
    pad_id = _pad_id(policy)
    chosen = _logprobs(model, [_example(policy, p.state, p.chosen) for p in pairs], pad_id)
    rejected = _logprobs(model, [_example(policy, p.state, p.rejected) for p in pairs], pad_id)
    return float((chosen > rejected).float().mean()) if len(pairs) else 0.0


def _type_accuracy(policy: LMPolicy, traces: Sequence[Trace], min_steps: int) -> dict[str, float]:
    steps = [step for trace in traces for step in trace.steps]
    predictions = policy.predict([s.state for s in steps])
    hits: dict[str, list[bool]] = {}
    for step, prediction in zip(steps, predictions, strict=True):
        hits.setdefault(step.action.type.value, []).append(action_key(prediction.action) == action_key(step.action))
    return {t: sum(h) / len(h) for t, h in sorted(hits.items()) if len(h) >= min_steps}


def gated_preference_update(
    policy: LMPolicy,
    pairs: Sequence[PreferencePair],
    traces: Sequence[Trace],
    validation_traces: Sequence[Trace],
    config: PreferenceConfig | None = None,
    *,
    holdout: float = 0.25,
    max_drop: float = 0.01,
    min_steps: int = 30,
) -> GateReport:
    """``preference_update`` on all but the last ``holdout`` share of the pairs, kept only if it wins more of
    the held-out pairs and no action type (with ``min_steps`` held-out steps) loses more than ``max_drop`` of
    its accuracy on ``validation_traces`` (cases the corrections were not taken from, or at least not trained
    on); otherwise the policy is restored exactly (weights, template bank, version)."""
    if policy.model_ is None or policy.bank_ is None:
        raise ValueError("gated_preference_update needs a fitted LMPolicy")
    n_hold = max(1, int(len(pairs) * holdout)) if len(pairs) > 1 else 0
    train_pairs, held_pairs = list(pairs[: len(pairs) - n_hold]), list(pairs[len(pairs) - n_hold :])
    weights = {k: v.detach().clone() for k, v in policy.model_.state_dict().items()}
    bank = copy.deepcopy(policy.bank_)
    version = policy.version_
    won_before = _pairs_won(policy, held_pairs)
    accuracy_before = _type_accuracy(policy, validation_traces, min_steps)
    history = preference_update(policy, train_pairs or list(pairs), traces, config)
    won_after = _pairs_won(policy, held_pairs)
    accuracy_after = _type_accuracy(policy, validation_traces, min_steps)
    worse = {
        t: accuracy_after.get(t, 0.0) - a
        for t, a in accuracy_before.items()
        if accuracy_after.get(t, 0.0) < a - max_drop
    }
    if worse:
        reason = "undone: " + ", ".join(f"{t} {100 * d:+.1f} pt" for t, d in worse.items())
    elif held_pairs and won_after <= won_before:
        reason = f"undone: held-out pairs won {won_before:.3f} -> {won_after:.3f}"
    else:
        reason = "kept"
    if reason != "kept":
        policy.model_.load_state_dict(weights)
        policy.bank_ = bank
        policy.version_ = version
    return GateReport(reason == "kept", reason, won_before, won_after, accuracy_before, accuracy_after, history)
