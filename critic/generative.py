"""The generative critic: the policy's own LM, fine-tuned to answer ``accept`` or ``reject`` about a proposal.

Input: exactly what the policy read and wrote, i.e. ``codec.encode_prompt(serialise_state(state))`` (the prompt
and its action-start marker), the proposal's slot-form action text with the action-end marker, then a short
plain-text critic marker (``" verdict:"``). Target: ONE next token, the verdict. Score:
``P(accept) = softmax([logit_reject, logit_accept])[1]`` at the position after the marker; only those two rows
of the LM head are ever computed at inference.

Verdict tokens. If the backbone's tokenizer encodes ``" accept"`` and ``" reject"`` as one token each, and two
different ones (typical of a pretrained BPE such as Qwen2.5's), those tokens are used: their embeddings already
mean something (``label_tokens_ == "text"``). Otherwise (the project's own small BPE splits both words into
pieces) ``<accept>`` and ``<reject>`` are added as special tokens, the embedding matrix grows by two rows, and
each new row starts as the mean of the rows of its word's pieces (``label_tokens_ == "special"``), so the two
verdicts start distinct and near their meaning, even where LoRA keeps the embeddings frozen.

Training: the whole model by default (the from-scratch policy is tiny); LoRA on the attention projections with
the policy's own settings when the policy itself was LoRA-tuned from a pretrained checkpoint. The loss is the
cross-entropy of the verdict token restricted to the two verdict logits, i.e. exactly the score's softmax,
weighted per class ("balanced": acceptances are ~80-95% of the feedback). Cross-entropy over the whole
vocabulary was tried first and failed on the project's tiny tied-embedding model, probably because its updates
go into pushing hundreds of never-read tokens down through the shared embedding matrix: after 320 steps
P(accept) was equal to six digits on both classes, where the two-way loss memorised the same training set
(0.99 vs 0.004). The last ``val_fraction`` of ``X`` (by order: the latest rows when X is in time order) is
held out; periodic evaluation computes its two-way log loss and AUC, and early stopping keeps the best weights.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, Self

import numpy as np
import torch
from sklearn.base import BaseEstimator
from sklearn.metrics import log_loss, roc_auc_score
from tokenizers import AddedToken
from transformers import AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from critic.artifact import read_critic_meta, write_critic_dir
from critic.base import CriticInput
from critic.errors import NotFittedError
from policy.codec import Codec
from policy.fast_scoring import last_hidden_states, supports
from policy.lora import LoraSettings, apply_lora, merge_lora
from policy.model import load_model
from policy.option_cues import OptionCues
from policy.policy import LMPolicy
from policy.preconditions import Preconditions
from policy.requests import RequestTracker
from policy.serialise import SerialConfig, action_text, serialise_state
from policy.styles import OperatorStyles
from schemas.progress import progress_bar

FORMAT_VERSION = 1
CRITIC_MARKER = " verdict:"
TEXT_LABELS = (" accept", " reject")
SPECIAL_LABELS = ("<accept>", "<reject>")
PREDICT_BATCH = 64
LabelTokens = Literal["text", "special"]


@dataclass
class CriticHistory:
    """What training did: one row per evaluation (step, seconds, train loss, validation losses and AUC)."""

    evaluations: list[dict[str, float]] = field(default_factory=list)
    best_val_loss: float = math.inf
    best_step: int = 0
    steps: int = 0
    seconds: float = 0.0
    stopped: str = "epochs"
    train_rows: int = 0
    val_rows: int = 0


def choose_label_tokens(tokenizer: PreTrainedTokenizerBase) -> tuple[LabelTokens, int, int]:
    """(path, accept id, reject id) for ``tokenizer``, adding ``<accept>``/``<reject>`` to it on the
    ``"special"`` path (the caller must then give the model embedding rows for them)."""
    accept, reject = (tokenizer.encode(word, add_special_tokens=False) for word in TEXT_LABELS)
    if len(accept) == 1 and len(reject) == 1 and accept != reject:
        return "text", accept[0], reject[0]
    tokenizer.add_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_LABELS], special_tokens=True)
    vocab = tokenizer.get_vocab()
    return "special", vocab[SPECIAL_LABELS[0]], vocab[SPECIAL_LABELS[1]]


def _init_special_rows(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, accept_id: int, reject_id: int
) -> None:
    """Give the model rows for the two added verdict tokens, each the mean of its word's piece rows (input and,
    when untied, output embeddings)."""
    embeddings = model.get_input_embeddings()
    assert isinstance(embeddings, torch.nn.Embedding)
    rows = int(embeddings.weight.shape[0])
    needed = max(accept_id, reject_id) + 1
    if needed > rows:  # a pretrained matrix is often padded beyond the tokenizer: then the rows already exist
        model.resize_token_embeddings(needed, mean_resizing=False)
    pieces = {
        new: tokenizer.encode(word, add_special_tokens=False)
        for new, word in zip((accept_id, reject_id), TEXT_LABELS, strict=True)
    }
    resized = model.get_input_embeddings()
    assert isinstance(resized, torch.nn.Embedding)
    matrices: list[torch.Tensor] = [resized.weight]
    head = model.get_output_embeddings()
    if isinstance(head, torch.nn.Linear) and head.weight is not resized.weight:  # untied: its rows too
        matrices.append(head.weight)
    with torch.no_grad():
        for weight in matrices:
            for new, ids in pieces.items():
                weight[new] = weight[torch.tensor(ids)].mean(dim=0)


def _pad_id(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, codec: Codec) -> int:
    # Padding is masked out, so any in-vocabulary id will do (same rule as LMPolicy).
    embeddings = model.get_input_embeddings()
    rows = int(embeddings.weight.shape[0]) if isinstance(embeddings, torch.nn.Embedding) else 0
    pad = tokenizer.pad_token_id
    return int(pad) if isinstance(pad, int) and 0 <= pad < rows else codec.action_end[0]


def _last_hidden(model: PreTrainedModel, seqs: Sequence[Sequence[int]], pad_id: int) -> torch.Tensor:
    """The final hidden state at each sequence's last token, shape (len(seqs), hidden). Right padding with an
    attention mask: positions stay 0..n-1 as in training of the policy, and causal attention never lets a real
    token see the padding after it."""
    width = max(len(s) for s in seqs)
    device = next(model.parameters()).device
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, seq in enumerate(seqs):
        ids[i, : len(seq)] = torch.tensor(seq)
        mask[i, : len(seq)] = 1
    hidden = model.get_decoder()(input_ids=ids.to(device), attention_mask=mask.to(device)).last_hidden_state
    return hidden[torch.arange(len(seqs)), torch.tensor([len(s) - 1 for s in seqs])]


def _verdict_logits(model: PreTrainedModel, last: torch.Tensor, reject_id: int, accept_id: int) -> torch.Tensor:
    """Logits of (reject, accept) only: two rows of the LM head instead of the whole vocabulary."""
    head = model.get_output_embeddings()
    assert isinstance(head, torch.nn.Linear)
    rows = torch.tensor([reject_id, accept_id], device=last.device)
    bias = head.bias[rows] if head.bias is not None else None
    return torch.nn.functional.linear(last, head.weight[rows], bias).float()


def _json_safe(value: Any) -> Any:
    """Non-finite floats (no validation AUC, no best loss yet) as null: critic.json stays standard JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


def _float(value: float | None, missing: float) -> float:
    return missing if value is None else float(value)


def _check_xy(X: Sequence[CriticInput], y: Sequence[int] | np.ndarray) -> np.ndarray:
    if len(X) == 0:
        raise ValueError("X is empty: nothing to fit")
    labels = np.asarray(y).ravel()
    if labels.shape[0] != len(X):
        raise ValueError(f"y has {labels.shape[0]} labels for {len(X)} inputs in X")
    if not np.isin(labels, (0, 1)).all():
        raise ValueError("y must hold 0 (reject) / 1 (accept) labels only")
    for i, item in enumerate(X):
        if not (hasattr(item, "state") and hasattr(item, "proposal")):
            raise ValueError(f"X[{i}] is not a CriticInput (needs .state and .proposal)")
    if np.unique(labels).size < 2:
        raise ValueError(f"y holds a single class ({int(labels[0])}): the critic needs both accept and reject")
    return labels.astype(np.int64)


class GenerativeCritic(BaseEstimator):  # get_params / set_params / clone from sklearn
    """P(accept) from the policy's LM fine-tuned to emit one verdict token (see the module docstring)."""

    name = "generative"

    def __init__(
        self,
        policy_dir: str | Path | None = None,
        epochs: int = 2,
        batch_size: int = 16,
        lr: float = 5e-4,
        weight_decay: float = 0.01,
        warmup_steps: int = 20,
        max_prompt_tokens: int = 768,
        time_budget_s: float | None = None,
        threads: int | None = 1,
        seed: int = 0,
        class_weight: Literal["balanced"] | None = "balanced",
        progress: bool = True,
        val_fraction: float = 0.1,
        eval_every: int | None = None,
        patience: int = 4,
    ) -> None:
        self.policy_dir = policy_dir
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.weight_decay = weight_decay
        self.warmup_steps = warmup_steps
        self.max_prompt_tokens = max_prompt_tokens
        self.time_budget_s = time_budget_s
        self.threads = threads
        self.seed = seed
        self.class_weight = class_weight
        self.progress = progress
        self.val_fraction = val_fraction  # the last rows of X, by order, are held out for early stopping
        self.eval_every = eval_every  # steps between evaluations; None = twice per epoch
        self.patience = patience  # evaluations without improvement before stopping

    def _check_params(self) -> None:
        if self.policy_dir is None:
            raise ValueError("policy_dir is required: the saved LMPolicy whose LM the critic fine-tunes")
        if self.class_weight not in ("balanced", None):
            raise ValueError(f"class_weight must be 'balanced' or None, not {self.class_weight!r}")
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError(f"epochs ({self.epochs}) and batch_size ({self.batch_size}) must be >= 1")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), not {self.val_fraction}")

    # ---- encoding ------------------------------------------------------------------------------------------

    def _require(self) -> tuple[PreTrainedModel, Codec, list[int], int]:
        if getattr(self, "model_", None) is None or getattr(self, "codec_", None) is None:
            raise NotFittedError("this GenerativeCritic is not fitted: call fit() or GenerativeCritic.load()")
        return self.model_, self.codec_, self.marker_ids_, self.pad_id_

    def _encode(self, X: Sequence[CriticInput]) -> list[list[int]]:
        """Prompt + action-start, slot-form proposal + action-end, critic marker: the verdict comes next."""
        _, codec, marker, _ = self._require()
        out = []
        for i, item in enumerate(X):
            try:
                state, action = item.state, item.proposal.action
            except AttributeError:
                raise ValueError(f"X[{i}] is not a CriticInput (needs .state and .proposal)") from None
            prompt = codec.encode_prompt(
                serialise_state(state, self.serial_, self.requests_, self.cues_, self.styles_, self.preconditions_)
            )
            out.append(prompt + codec.encode_action(action_text(action, state)) + marker)
        return out

    def _accept_probability(self, seqs: Sequence[list[int]], fast: bool = True) -> np.ndarray:
        """P(accept) per sequence. ``fast``: the policy's fast path (``policy.fast_scoring``: sequences packed
        without padding, a lean forward) where the model's layout allows; otherwise padded batches through the
        ``transformers`` forward (the reference, and the path for a LoRA-wrapped model during training)."""
        model, _, _, pad_id = self._require()
        order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))  # similar lengths share a batch: less padding
        out = np.zeros(len(seqs), dtype=np.float64)
        was_training = model.training
        model.eval()
        packed = fast and supports(model)
        with torch.inference_mode():
            for start in range(0, len(order), PREDICT_BATCH):
                chunk = order[start : start + PREDICT_BATCH]
                batch = [seqs[i] for i in chunk]
                last = last_hidden_states(model, batch) if packed else _last_hidden(model, batch, pad_id)
                logits = _verdict_logits(model, last, self.reject_token_id_, self.accept_token_id_)
                out[chunk] = torch.softmax(logits, dim=-1)[:, 1].double().cpu().numpy()
        model.train(was_training)
        return out

    # ---- fitting -------------------------------------------------------------------------------------------

    def _load_backbone(self) -> LMPolicy:
        """The saved policy whose LM the critic fine-tunes, and whose prompts (layout, readers) it reads."""
        try:
            policy = LMPolicy.load(Path(str(self.policy_dir)))
        except (FileNotFoundError, ValueError, KeyError, OSError) as exc:
            raise ValueError(f"policy_dir {self.policy_dir!s} is not a saved LMPolicy: {exc}") from None
        return policy

    def fit(self, X: Sequence[CriticInput], y: Sequence[int] | np.ndarray) -> Self:
        labels = _check_xy(X, y)
        self._check_params()
        if self.threads:
            torch.set_num_threads(self.threads)
        torch.manual_seed(self.seed)  # new verdict rows are deterministic; LoRA adapters follow the seed
        policy = self._load_backbone()
        assert policy.model_ is not None and policy.codec_ is not None
        model, tokenizer = policy.model_, policy.codec_.tokenizer
        self.label_tokens_, self.accept_token_id_, self.reject_token_id_ = choose_label_tokens(tokenizer)
        if self.label_tokens_ == "special":
            _init_special_rows(model, tokenizer, self.accept_token_id_, self.reject_token_id_)
        self.serial_ = policy.serial
        self.requests_ = policy.requests_
        self.cues_ = policy.cues_
        self.styles_ = policy.styles_
        self.preconditions_ = policy.preconditions_
        self.lora_ = policy.lora
        self.policy_version_ = policy.version_
        self.codec_ = Codec.for_tokenizer(tokenizer, self.max_prompt_tokens)
        self.marker_ids_ = tokenizer.encode(CRITIC_MARKER, add_special_tokens=False)
        self.pad_id_ = _pad_id(model, tokenizer, self.codec_)
        self.model_ = model
        seqs = self._encode(X)
        if policy.lora is not None:
            self.model_ = apply_lora(model, policy.lora)
        self.history_ = self._train(seqs, labels)
        self.model_ = merge_lora(self.model_)
        self.model_.eval()
        self.classes_ = np.array([0, 1])
        return self

    def _class_weights(self, labels: np.ndarray) -> np.ndarray:
        if self.class_weight is None:
            return np.ones(2)
        counts = np.bincount(labels, minlength=2).astype(np.float64)
        # sklearn's "balanced": n / (classes * count); a class absent from the training part gets no weight
        return np.where(counts > 0, labels.size / (2 * np.maximum(counts, 1)), 0.0)

    def _lr(self, step: int, total: int) -> float:
        """Linear warm-up, then cosine decay to a tenth of ``lr``."""
        if step < self.warmup_steps:
            return self.lr * (step + 1) / self.warmup_steps
        progress = min(1.0, (step - self.warmup_steps) / max(1, total - self.warmup_steps))
        return self.lr * (0.1 + 0.45 * (1 + math.cos(math.pi * progress)))

    def _train(self, seqs: list[list[int]], labels: np.ndarray) -> CriticHistory:
        model, _, _, pad_id = self._require()
        n_val = int(len(seqs) * self.val_fraction)
        n_train = len(seqs) - n_val
        train_seqs, train_y = seqs[:n_train], labels[:n_train]
        val_seqs, val_y = seqs[n_train:], labels[n_train:]
        class_w = self._class_weights(train_y)
        trainable = {name: p for name, p in model.named_parameters() if p.requires_grad}
        optimizer = torch.optim.AdamW(
            [
                {"params": [p for p in trainable.values() if p.dim() >= 2], "weight_decay": self.weight_decay},
                {"params": [p for p in trainable.values() if p.dim() < 2], "weight_decay": 0.0},
            ],
            lr=self.lr,
            betas=(0.9, 0.95),
        )
        steps_per_epoch = math.ceil(n_train / self.batch_size)
        total = steps_per_epoch * self.epochs
        eval_every = self.eval_every or max(1, steps_per_epoch // 2)
        history = CriticHistory(train_rows=n_train, val_rows=n_val)
        # Only trainable tensors change, so only they are snapshotted (the LoRA adapters, not a 7B base).
        best = {name: p.detach().clone() for name, p in trainable.items()}
        rng = random.Random(self.seed)
        started = time.perf_counter()
        running, stale, step = math.nan, 0, 0

        def validate() -> bool:
            """Record an evaluation; True when patience is exhausted."""
            nonlocal stale, best
            row = {"step": float(step), "seconds": time.perf_counter() - started, "train_loss": running}
            if n_val:
                p = np.clip(self._accept_probability(val_seqs), 1e-7, 1 - 1e-7)
                weights = class_w[val_y]
                # selection uses the training objective's class weights; plain log loss and AUC are reported
                row["val_loss"] = (
                    float(log_loss(val_y, p, sample_weight=weights, labels=[0, 1])) if weights.sum() > 0 else math.nan
                )
                row["val_log_loss"] = float(log_loss(val_y, p, labels=[0, 1]))
                row["val_auc"] = float(roc_auc_score(val_y, p)) if np.unique(val_y).size == 2 else math.nan
            history.evaluations.append(row)
            if not n_val:  # nothing held out: no early stopping, the final weights are kept
                bar.set_postfix(train=f"{running:.3f}")
                return False
            score = row["val_loss"]
            if math.isfinite(score) and score < history.best_val_loss - 1e-4:
                history.best_val_loss, history.best_step, stale = score, step, 0
                best = {name: p.detach().clone() for name, p in trainable.items()}
            else:
                stale += 1
            bar.set_postfix(train=f"{running:.3f}", val=f"{score:.3f}", best=f"{history.best_val_loss:.3f}")
            return stale >= self.patience

        bar = progress_bar(total=total, desc="critic", unit="batch", disable=not self.progress, dynamic_ncols=True)
        model.train()
        stop = False
        for _epoch in range(self.epochs):
            order = list(range(n_train))
            rng.shuffle(order)
            for start in range(0, n_train, self.batch_size):
                batch = order[start : start + self.batch_size]
                for group in optimizer.param_groups:
                    group["lr"] = self._lr(step, total)
                last = _last_hidden(model, [train_seqs[i] for i in batch], pad_id)
                logits = _verdict_logits(model, last, self.reject_token_id_, self.accept_token_id_)
                target = torch.tensor(train_y[batch], device=logits.device)  # column 1 = accept, as in the score
                weight = torch.tensor(class_w[train_y[batch]], dtype=torch.float32, device=logits.device)
                per_row = torch.nn.functional.cross_entropy(logits, target, reduction="none")
                # a plain mean, not one normalised by the batch's weight sum: that would cancel the class weights
                # in the many batches that hold a single class
                loss = (per_row * weight).mean()
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(list(trainable.values()), 1.0)
                optimizer.step()
                value = float(loss.detach())
                running = value if step == 0 else 0.9 * running + 0.1 * value
                step += 1
                bar.update(1)
                if step % eval_every == 0 and validate():
                    history.stopped, stop = "early stopping", True
                elif self.time_budget_s is not None and time.perf_counter() - started > self.time_budget_s:
                    history.stopped, stop = "time budget", True
                if stop:
                    break
            if stop:
                break
        if history.stopped != "early stopping" and (not history.evaluations or history.evaluations[-1]["step"] != step):
            validate()
        bar.close()
        if n_val:
            with torch.no_grad():
                for name, p in trainable.items():
                    p.copy_(best[name])
        model.eval()
        history.steps = step
        history.seconds = time.perf_counter() - started
        return history

    # ---- inference -----------------------------------------------------------------------------------------

    def predict_proba(self, X: Sequence[CriticInput]) -> np.ndarray:
        """(n, 2) float64: column 0 = P(reject), column 1 = P(accept)."""
        self._require()
        if len(X) == 0:
            return np.zeros((0, 2), dtype=np.float64)
        accept = self._accept_probability(self._encode(X))
        return np.column_stack([1.0 - accept, accept])

    # ---- persistence ---------------------------------------------------------------------------------------

    def save(self, path: str | Path) -> Path:
        """A directory: the transformers checkpoint and tokenizer, plus ``critic.json`` (written atomically by
        ``critic.artifact``)."""
        model, codec, marker, pad_id = self._require()
        params = self.get_params()
        params["policy_dir"] = None if self.policy_dir is None else str(self.policy_dir)
        meta = {
            "kind": self.name,
            "format_version": FORMAT_VERSION,
            "params": params,
            "label_tokens": self.label_tokens_,
            "accept_token_id": self.accept_token_id_,
            "reject_token_id": self.reject_token_id_,
            "marker_ids": marker,
            "pad_id": pad_id,
            "serial": self.serial_.to_dict(),
            "requests": self.requests_.to_dict() if self.requests_ is not None else None,
            "option_cues": self.cues_.to_dict() if self.cues_ is not None else None,
            "styles": self.styles_.to_dict() if self.styles_ is not None else None,
            "preconditions": self.preconditions_.to_dict() if self.preconditions_ is not None else None,
            "lora": asdict(self.lora_) if self.lora_ is not None else None,
            "policy_version": self.policy_version_,
            "history": _json_safe(asdict(self.history_)),
        }

        def write(tmp: Path) -> None:
            model.save_pretrained(tmp)
            codec.tokenizer.save_pretrained(tmp)

        return write_critic_dir(path, meta, write)

    @classmethod
    def load(cls, path: str | Path) -> GenerativeCritic:
        root = Path(path)
        meta = read_critic_meta(root, cls.name)
        if meta.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{root}: unsupported format_version {meta.get('format_version')!r}")
        critic = cls(**{**meta["params"], "progress": False})
        tokenizer = AutoTokenizer.from_pretrained(str(root))
        critic.codec_ = Codec.for_tokenizer(tokenizer, critic.max_prompt_tokens)
        critic.model_ = load_model(root)
        critic.label_tokens_ = meta["label_tokens"]
        critic.accept_token_id_ = int(meta["accept_token_id"])
        critic.reject_token_id_ = int(meta["reject_token_id"])
        critic.marker_ids_ = [int(t) for t in meta["marker_ids"]]
        critic.pad_id_ = int(meta["pad_id"])
        critic.serial_ = SerialConfig.from_dict(meta["serial"])
        critic.requests_ = RequestTracker.from_dict(meta["requests"]) if meta.get("requests") else None
        critic.cues_ = OptionCues.from_dict(meta["option_cues"]) if meta.get("option_cues") else None
        critic.styles_ = OperatorStyles.from_dict(meta["styles"]).bind(critic.cues_) if meta.get("styles") else None
        critic.preconditions_ = Preconditions.from_dict(meta["preconditions"]) if meta.get("preconditions") else None
        critic.lora_ = LoraSettings(**meta["lora"]) if meta.get("lora") else None
        critic.policy_version_ = meta["policy_version"]
        history = meta["history"]
        critic.history_ = CriticHistory(
            **{k: v for k, v in history.items() if k not in ("evaluations", "best_val_loss")},
            evaluations=[{k: _float(v, math.nan) for k, v in row.items()} for row in history["evaluations"]],
            best_val_loss=_float(history["best_val_loss"], math.inf),
        )
        critic.classes_ = np.array([0, 1])
        return critic

    # learned attributes, declared for type checkers (absent until fit/load)
    model_: PreTrainedModel
    codec_: Codec
    history_: CriticHistory
    policy_version_: str
    label_tokens_: LabelTokens
    accept_token_id_: int
    reject_token_id_: int
    marker_ids_: list[int]
    pad_id_: int
    serial_: SerialConfig
    requests_: RequestTracker | None
    cues_: OptionCues | None
    styles_: OperatorStyles | None
    preconditions_: Preconditions | None
    lora_: LoraSettings | None
    classes_: np.ndarray
