"""LMPolicy: the next-UI-action policy. Fit on traces, propose top-k schema-valid actions with confidence.

Estimator contract (scikit-learn style): hyper-parameters in ``__init__``, ``fit`` returns ``self``, learned
state in attributes ending in ``_``. ``save`` writes a directory that ``transformers`` can load on its own
(model + tokenizer) plus ``policy.json`` (serialisation limits, template bank, training history).
"""

from __future__ import annotations

import hashlib
import json
import math
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, Self

import torch
from transformers import AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from policy.candidates import Candidate, TemplateBank, enumerate_candidates
from policy.codec import Codec
from policy.fast_scoring import PACK_TOKENS, CandidateScorer, kept_candidates, score_states, supports
from policy.lora import LoraSettings, apply_lora, merge_lora
from policy.model import ModelConfig, build_model, load_model, parameter_count
from policy.open_choices import OpenChoices
from policy.option_cues import OptionCues
from policy.preconditions import Preconditions
from policy.predictor import Prediction
from policy.record_check import RecordCheck, corrected
from policy.requests import RequestTracker
from policy.saved import POLICY_FILE, read_meta
from policy.scoring import next_token_logprobs, score_candidates
from policy.serialise import ACTION_END, ACTION_START, SerialConfig, action_text, serialise_state
from policy.styles import OperatorStyles
from policy.tokenizer import PAD, train_tokenizer
from policy.train import Example, TrainConfig, TrainHistory, train
from schemas.actions import Action, SelectOption, SendTextToChat, action_key
from schemas.files import atomic_directory
from schemas.proposal import Proposal, ProposalFeatures, ScoredAction
from schemas.screen import ControlKind
from schemas.state import UIState
from schemas.trace import Trace

FORMAT_VERSION = 1
RANKING_VERSION = 5
"""Changes whenever ``LMPolicy`` changes what a fitted policy proposes from the same weights (1: the replies
weighed by the style, decision 0024; 2: the options of a select too, and the options the cues settle; 3: the
``logprob`` feature stays the model's own, before the weights; both decision 0027; 4: no pruning where a choice
is open, decision 0029; 5: a reply naming another case's item says the customer's, decision 0030): caches of
proposals (the benches' copilot feedback) are keyed by it as by the policy's version."""
MAX_TOKENS_PER_BATCH = 24_000  # packed tokens per reference scoring pass: bounds the attention mask's memory


class NotFittedError(RuntimeError):
    pass


@dataclass
class _Scored:
    candidates: list[Candidate]
    logprobs: list[float]


class _StepText(NamedTuple):
    """One training step as text: where it was (process, screen), the prompt, and the slot-form action."""

    process_id: str
    screen_id: str
    prompt: str
    target: str


def _softmax(logprobs: Sequence[float]) -> list[float]:
    if not logprobs:
        return []  # a screen with no candidate action: nothing to normalise
    top = max(logprobs)
    weights = [math.exp(lp - top) for lp in logprobs]
    total = sum(weights)
    return [w / total for w in weights]


def _logsumexp(logprobs: Sequence[float]) -> float:
    """log(sum(exp(x))) of a non-empty sequence, without overflow."""
    top = max(logprobs)
    return top + math.log(sum(math.exp(lp - top) for lp in logprobs))


REPLIES = "\x00replies"  # the group of every reply (no control id starts with a NUL)


def _weigh_within(items: list[tuple[Action, float, float]], group_of: dict[str, str]) -> list[tuple[Action, float]]:
    """(action, log-prob) with each weighed action's weight added (``items``: action, log-prob, weight), shifted
    so that each group (``group_of``: action key -> group; the replies, the options of one select) keeps the
    probability the model gave it (its log-sum-exp unchanged); actions of no group as scored."""
    members: dict[str, list[int]] = {}
    for i, (action, _, _) in enumerate(items):
        group = group_of.get(action_key(action))
        if group is not None:
            members.setdefault(group, []).append(i)
    logprobs = [lp for _, lp, _ in items]
    for rows in members.values():
        if not any(items[i][2] for i in rows):
            continue
        shift = _logsumexp([items[i][1] for i in rows]) - _logsumexp([items[i][1] + items[i][2] for i in rows])
        for i in rows:
            logprobs[i] = items[i][1] + items[i][2] + shift
    return [(action, lp) for (action, _, _), lp in zip(items, logprobs, strict=True)]


def _settle(items: list[tuple[Action, float]], settled: dict[str, str], share: float) -> list[tuple[Action, float]]:
    """Each select whose option the case settles (``settled``: control -> option, ``policy.option_cues``) gives
    that option at least ``share`` of the probability of the control's options; the others share the rest in
    proportion. What the customer said or a tool returned is a fact the prompt's hint names; a model that has seen
    a cue in a few steps only may not yet follow it (decision 0027)."""
    out = list(items)
    for control, option in settled.items():
        options = {
            i: a.option for i, (a, _) in enumerate(items) if isinstance(a, SelectOption) and a.control_id == control
        }
        rows = list(options)
        cued = next((i for i, o in options.items() if o == option), None)
        if cued is None or len(rows) < 2:
            continue
        total = _logsumexp([items[i][1] for i in rows])
        own = math.exp(items[cued][1] - total)
        if own >= share:
            continue
        rest = math.log((1.0 - share) / (1.0 - own))
        for i in rows:
            out[i] = (items[i][0], total + math.log(share) if i == cued else items[i][1] + rest)
    return out


@dataclass
class LMPolicy:
    """A causal LM that scores the screen's candidate actions. ``pretrained`` = a checkpoint directory to start
    from (its own tokenizer is kept); otherwise a tokenizer is trained and a ``model`` built from scratch."""

    model: ModelConfig = field(default_factory=ModelConfig)
    training: TrainConfig = field(default_factory=TrainConfig)
    serial: SerialConfig = field(default_factory=SerialConfig)
    vocab_size: int = 4096  # decision 0019: as accurate as 8,192 on the sandbox, proposals a fifth cheaper
    max_prompt_tokens: int = 768
    max_templates: int = 48
    prune_logprob: float | None = 9.0  # see fast_scoring.kept_candidates and _prune_for; None scores all in full
    pretrained: str | None = None
    lora: LoraSettings | None = None
    fast_scoring: bool = True  # policy.fast_scoring where the model's layout allows; False = the reference path
    scorer: CandidateScorer | None = field(default=None, repr=False)  # e.g. a GPU server (policy.remote)
    progress: bool = True
    name: str = "lm"

    # learned
    bank_: TemplateBank | None = field(default=None, init=False, repr=False)
    requests_: RequestTracker | None = field(default=None, init=False, repr=False)
    cues_: OptionCues | None = field(default=None, init=False, repr=False)
    record_check_: RecordCheck | None = field(default=None, init=False, repr=False)
    preconditions_: Preconditions | None = field(default=None, init=False, repr=False)
    choices_: OpenChoices | None = field(default=None, init=False, repr=False)
    styles_: OperatorStyles | None = field(default=None, init=False, repr=False)
    codec_: Codec | None = field(default=None, init=False, repr=False)
    model_: PreTrainedModel | None = field(default=None, init=False, repr=False)
    history_: TrainHistory | None = field(default=None, init=False, repr=False)
    version_: str = field(default="", init=False)

    # ---- fitting -------------------------------------------------------------------------------------------

    def _texts(self, traces: Sequence[Trace]) -> list[_StepText]:
        """Every step's texts, computed once for the template bank, the tokenizer and the examples."""
        return [
            _StepText(
                trace.process_id,
                step.state.screen.screen_id,
                self.prompt(step.state),
                action_text(step.action, step.state),
            )
            for trace in traces
            for step in trace.steps
        ]

    def _examples(self, texts: Sequence[_StepText]) -> list[Example]:
        assert self.codec_ is not None
        out = []
        for step in texts:
            prompt = self.codec_.encode_prompt(step.prompt)
            target = self.codec_.encode_action(step.target)
            out.append(Example(ids=prompt + target, prompt_len=len(prompt)))
        return out

    def fit(self, traces: Sequence[Trace], val_traces: Sequence[Trace] | None = None) -> Self:
        """Train on ``traces``; validation (early stopping) on ``val_traces`` or on the last
        ``training.val_fraction`` of the traces (the latest ones, when traces are in time order)."""
        if not traces:
            raise ValueError("no traces to train on")
        if val_traces is None:
            n_val = int(len(traces) * self.training.val_fraction)
            traces, val_traces = traces[: len(traces) - n_val], traces[len(traces) - n_val :]
        self.requests_ = RequestTracker().fit(traces)
        self.cues_ = OptionCues().fit(traces)
        self.record_check_ = RecordCheck().fit(traces)
        self.preconditions_ = Preconditions().fit(traces)
        self.choices_ = OpenChoices().fit(traces, self.cues_)
        self.styles_ = OperatorStyles().fit(traces, self.cues_) if self.serial.operator_style else None
        train_texts, val_texts = self._texts(traces), self._texts(val_traces)
        self.bank_ = TemplateBank(max_per_target=self.max_templates)
        for text in train_texts:
            self.bank_.add_action_text(text.process_id, text.target, text.screen_id)
        tokenizer: PreTrainedTokenizerBase
        torch.manual_seed(self.training.seed)  # the initial weights (and LoRA adapters) follow the configured seed
        if self.pretrained is None:
            corpus = [text for step in train_texts for text in (step.prompt, step.target)]
            tokenizer = train_tokenizer(corpus, vocab_size=self.vocab_size)
            self.codec_ = Codec.for_tokenizer(tokenizer, self.max_prompt_tokens)
            vocab = tokenizer.get_vocab()
            model = build_model(
                self.model,
                vocab_size=len(tokenizer),
                pad_id=vocab[PAD],
                bos_id=vocab[ACTION_START],
                eos_id=vocab[ACTION_END],
            )
        else:
            tokenizer = AutoTokenizer.from_pretrained(self.pretrained)
            self.codec_ = Codec.for_tokenizer(tokenizer, self.max_prompt_tokens)
            model = load_model(self.pretrained)
        if self.lora is not None:
            model = apply_lora(model, self.lora)
        # Padding is masked out, so any in-vocabulary id will do; a pretrained tokenizer may have no pad token, or
        # one added beyond the model's embedding matrix.
        embeddings = model.get_input_embeddings()
        vocab_rows = int(embeddings.weight.shape[0]) if isinstance(embeddings, torch.nn.Embedding) else 0
        pad = tokenizer.pad_token_id
        pad_id = pad if isinstance(pad, int) and 0 <= pad < vocab_rows else self.codec_.action_end[0]
        self.history_ = train(
            model,
            self._examples(train_texts),
            self._examples(val_texts),
            self.training,
            pad_id=int(pad_id),
            progress=self.progress,
        )
        self.model_ = merge_lora(model) if self.lora is not None else model
        self.model_.eval()
        digest = hashlib.blake2b(digest_size=6)
        for tensor in self.model_.state_dict().values():
            digest.update(tensor.detach().cpu().numpy().tobytes()[:4096])
        # The readers change what the policy proposes as much as the weights do (the pending line, the answers
        # offered, the guard's rules): a policy refitted with other readers is another version.
        learned = (self.requests_, self.cues_, self.record_check_, self.preconditions_, self.choices_, self.styles_)
        readers = [r.to_dict() for r in learned if r is not None]
        digest.update(json.dumps(readers, sort_keys=True).encode())
        self.version_ = f"lm-{digest.hexdigest()}"
        return self

    # ---- inference -----------------------------------------------------------------------------------------

    def _require(self) -> tuple[Codec, PreTrainedModel, TemplateBank]:
        if self.codec_ is None or self.model_ is None or self.bank_ is None:
            raise NotFittedError("this LMPolicy is not fitted: call fit() or LMPolicy.load()")
        return self.codec_, self.model_, self.bank_

    @staticmethod
    def _groups(prompts: list[list[int]], encoded: list[list[list[int]]], budget: int) -> list[tuple[int, int]]:
        """Consecutive ranges of states whose packed tokens stay under ``budget`` per pass."""
        out: list[tuple[int, int]] = []
        i = 0
        while i < len(prompts):
            j, tokens = i, 0
            while j < len(prompts):
                size = len(prompts[j]) + sum(len(c) for c in encoded[j])
                if j > i and tokens + size > budget:
                    break
                tokens += size
                j += 1
            out.append((i, j))
            i = j
        return out

    def _require_serving(self) -> tuple[Codec, TemplateBank]:
        """What proposing needs: the codec and the bank, and the weights unless a ``scorer`` holds them."""
        if self.codec_ is None or self.bank_ is None or (self.model_ is None and self.scorer is None):
            raise NotFittedError("this LMPolicy is not fitted: call fit() or LMPolicy.load()")
        return self.codec_, self.bank_

    def _prune_for(self, state: UIState) -> float | None:
        """The pruning bound for a state: none where a select's choice is the customer's and still open. There a
        policy that learned from operators who guess scores the operators' asks ("Refund or a replacement?") far
        below the guess, pruning would drop them, and the reply guard could not ask instead (decision 0029)."""
        if self.prune_logprob is None or self.choices_ is None:
            return self.prune_logprob
        for control in state.screen.controls:
            if control.kind == ControlKind.SELECT and self.choices_.open_choice(state, control.id, self.cues_):
                return None
        return self.prune_logprob

    def _score(self, states: Sequence[UIState], candidate_lists: Sequence[list[Candidate]]) -> list[_Scored]:
        """Each state's kept candidates and their sequence log-probabilities, the states grouped by their pruning
        bound (``_prune_for``)."""
        by_prune: dict[float | None, list[int]] = {}
        for i, state in enumerate(states):
            by_prune.setdefault(self._prune_for(state), []).append(i)
        by_row: dict[int, _Scored] = {}
        for prune, rows in by_prune.items():
            scored = self._score_pruned([states[i] for i in rows], [candidate_lists[i] for i in rows], prune)
            by_row.update(zip(rows, scored, strict=True))
        return [by_row[i] for i in range(len(states))]

    def _score_pruned(
        self, states: Sequence[UIState], candidate_lists: Sequence[list[Candidate]], prune: float | None
    ) -> list[_Scored]:
        codec, _ = self._require_serving()
        prompts = [codec.encode_prompt(self.prompt(s)) for s in states]
        encoded = [[codec.encode_action(c.text) for c in cands] for cands in candidate_lists]
        if self.scorer is not None:
            remote = self.scorer.score(prompts, encoded, prune)
            return [
                _Scored([cands[c] for c in item.kept], item.logprobs)
                for cands, item in zip(candidate_lists, remote, strict=True)
            ]
        _, model, _ = self._require()
        if not (self.fast_scoring and supports(model)):
            return self._score_reference(prompts, candidate_lists, encoded, prune)
        results: list[_Scored] = []
        for i, j in self._groups(prompts, encoded, PACK_TOKENS):
            scored = score_states(model, prompts[i:j], encoded[i:j], prune)
            for cands, item in zip(candidate_lists[i:j], scored, strict=True):
                results.append(_Scored([cands[c] for c in item.kept], item.logprobs))
        return results

    def _score_reference(
        self,
        prompts: list[list[int]],
        candidate_lists: Sequence[list[Candidate]],
        encoded: list[list[list[int]]],
        prune: float | None,
    ) -> list[_Scored]:
        """The reference path (policy.scoring): a first-token pass for pruning, then prompt and candidates packed
        in one pass, then the rest of the pruning rule (``kept_candidates``) on the sequence scores."""
        _, model, _ = self._require()
        firsts = self._first_token_logprobs(model, prompts, encoded, prune)
        survivors = [kept_candidates(f, f, prune) for f in firsts]  # the first-token part of the rule
        encoded = [[ids[c] for c in keep] for ids, keep in zip(encoded, survivors, strict=True)]
        results: list[_Scored] = []
        for i, j in self._groups(prompts, encoded, MAX_TOKENS_PER_BATCH):
            live = [b for b in range(i, j) if encoded[b]]
            scores = score_candidates(model, [prompts[b] for b in live], [encoded[b] for b in live])
            by_state = dict(zip(live, scores, strict=True))
            for b in range(i, j):
                totals = by_state.get(b, [])
                keep = kept_candidates([firsts[b][c] for c in survivors[b]], totals, prune)
                cands = [candidate_lists[b][survivors[b][k]] for k in keep]
                results.append(_Scored(cands, [totals[k] for k in keep]))
        return results

    def _first_token_logprobs(
        self, model: PreTrainedModel, prompts: list[list[int]], encoded: list[list[list[int]]], prune: float | None
    ) -> list[list[float]]:
        """Each candidate's first-token log-probability (all zero without pruning: not needed then)."""
        if prune is None or not prompts:
            return [[0.0] * len(ids) for ids in encoded]
        first = next_token_logprobs(model, prompts)
        return [[float(first[b, c[0]]) for c in ids] for b, ids in enumerate(encoded)]

    def prompt(self, state: UIState) -> str:
        """The state as this policy reads it: its serialisation with the learned readers (pending requests,
        option cues, the operator's style, the preconditions a checkbox waits for)."""
        return serialise_state(state, self.serial, self.requests_, self.cues_, self.styles_, self.preconditions_)

    def candidates(self, state: UIState) -> list[Candidate]:
        """The state's candidate actions: the screen's and the bank's, with the answers to its pending requests
        (``policy.requests``) and the queries of a record that contradicts the customer (``policy.record_check``);
        a reply naming an item neither the record nor the customer names says the customer's (``corrected``)."""
        _, bank = self._require_serving()
        replies = self.requests_.pending_answers(state) if self.requests_ is not None else []
        if self.record_check_ is None:
            return enumerate_candidates(state, bank, replies)
        replies += self.record_check_.queries(state)
        candidates = enumerate_candidates(state, bank, replies)
        items = self.record_check_.items(state)
        if not items:  # no checked field learned: nothing to put right
            return candidates
        out = []
        for candidate in candidates:
            action = candidate.action
            if isinstance(action, SendTextToChat):
                text = corrected(action.text, items)
                if text is None:
                    continue
                if text != action.text:  # scored as the model reads it; merged with the same reply in ``_ranked``
                    candidate = Candidate(candidate.text, SendTextToChat(text=text))
            out.append(candidate)
        return out

    def _ranked(self, state: UIState, scored: _Scored) -> list[tuple[Action, float, float]]:
        """(action, the model's own sequence log-prob, normalised probability), best first; candidates meaning the
        same action (two slot forms of one value) are merged by summing their probabilities. The replies and the
        options of each select are weighed by how likely the operator's style, as the case so far shows it, makes
        them (``OperatorStyles.habit_weights``, decision 0022), and then share the probability the model gave them
        together: the style says which words or which option this operator would choose, not whether a reply or
        that select is due (decisions 0024 and 0027). A select whose option the customer's words or a tool's
        result settle (``policy.option_cues``) is not weighed; its settled option gets at least the cues'
        precision of the select's probability. The weights and cues change the probability, not the log-prob."""
        styles = self.styles_ if self.serial.operator_style else None
        weights = styles.habit_weights(state) if styles is not None else {}
        cued = self._cued_selects(state, scored.candidates)
        merged: dict[str, tuple[Action, float, float]] = {}  # key -> (action, log-prob, style weight)
        group_of: dict[str, str] = {}
        for cand, lp in zip(scored.candidates, scored.logprobs, strict=True):
            key = action_key(cand.action)
            weight = weights.get(styles.habit(cand.text), 0.0) if styles is not None else 0.0
            if isinstance(cand.action, SendTextToChat):
                group_of[key] = REPLIES
            elif isinstance(cand.action, SelectOption) and cand.action.control_id not in cued:
                group_of[key] = cand.action.control_id
            if key in merged:
                action, prev, prev_weight = merged[key]
                merged[key] = (action, max(prev, lp) + math.log1p(math.exp(-abs(prev - lp))), max(prev_weight, weight))
            else:
                merged[key] = (cand.action, lp, weight)
        items = _weigh_within(list(merged.values()), group_of)
        if self.cues_ is not None:
            settled = {control: options[0] for control, options in cued.items() if len(options) == 1}
            items = _settle(items, settled, self.cues_.min_precision)
        # The model's own sequence log-probability stays the ``logprob`` feature: beside the weighed probability it
        # shows the critic where the style or a cue, not the model, made an option likely (decision 0027).
        raw = [lp for _, lp, _ in merged.values()]
        ranked = sorted(zip(items, raw, strict=True), key=lambda row: -row[0][1])
        probs = _softmax([lp for (_, lp), _ in ranked])
        return [(a, min(own, 0.0), p) for ((a, _), own), p in zip(ranked, probs, strict=True)]

    def _cued_selects(self, state: UIState, candidates: Sequence[Candidate]) -> dict[str, list[str]]:
        """Per select among the candidates, the options the customer's words or a tool's result settle (only
        those with one or more)."""
        if self.cues_ is None:
            return {}
        controls = {c.action.control_id for c in candidates if isinstance(c.action, SelectOption)}
        found = {control: self.cues_.cued(state, control) for control in sorted(controls)}
        return {control: options for control, options in found.items() if options}

    def propose_batch(self, states: Sequence[UIState], k: int = 5) -> list[Proposal | None]:
        """The top-``k`` proposal of each state (None for a state with no valid candidate action)."""
        scored = self._score(states, [self.candidates(s) for s in states])
        out: list[Proposal | None] = []
        for state, item in zip(states, scored, strict=True):
            ranked = self._ranked(state, item)
            if not ranked:
                out.append(None)
                continue
            probs = [p for _, _, p in ranked]
            entropy = -sum(p * math.log(p) for p in probs if p > 0)
            scored_actions = []
            for rank, (action, lp, p) in enumerate(ranked[:k]):
                runner_up = probs[rank + 1] if rank + 1 < len(probs) else 0.0
                features = ProposalFeatures(
                    logprob=lp, margin=max(0.0, p - runner_up), entropy=max(0.0, entropy), rank=rank, probability=p
                )
                scored_actions.append(ScoredAction(action=action, features=features))
            top = scored_actions[0]
            out.append(
                Proposal(
                    proposal_id=uuid.uuid4().hex,
                    session_id=state.session_id,
                    case_id=state.case_id,
                    process_id=state.process_id,
                    step=state.step,
                    state_etag=state.etag,
                    action=top.action,
                    features=top.features,
                    alternatives=scored_actions[1:],
                    model_version=self.version_,
                )
            )
        return out

    def propose(self, state: UIState, k: int = 5) -> Proposal | None:
        return self.propose_batch([state], k)[0]

    def rank(self, states: Sequence[UIState], k: int = 5) -> list[list[tuple[Action, float]]]:
        """Per state the ``k`` best candidate actions with their probabilities (softmax over the candidates),
        best first; empty for a state without a valid candidate."""
        out: list[list[tuple[Action, float]]] = []
        for i in range(0, len(states), 64):
            chunk = states[i : i + 64]
            for state, scored in zip(chunk, self._score(chunk, [self.candidates(s) for s in chunk]), strict=True):
                out.append([(action, p) for action, _, p in self._ranked(state, scored)[:k]])
        return out

    def predict(self, states: Sequence[UIState]) -> list[Prediction]:
        out: list[Prediction] = []
        for i in range(0, len(states), 64):
            for state, proposal in zip(states[i : i + 64], self.propose_batch(states[i : i + 64], k=1), strict=True):
                if proposal is None:
                    raise ValueError(f"state {state.session_id}/{state.step} offers no valid action")
                out.append(Prediction(proposal.action, proposal.features.probability))
        return out

    # ---- persistence ---------------------------------------------------------------------------------------

    def save(self, path: str | Path) -> Path:
        """Write the policy directory atomically (a temporary sibling renamed into place)."""
        codec, model, bank = self._require()
        target = Path(path)
        meta: dict[str, Any] = {
            "format_version": FORMAT_VERSION,
            "version": self.version_,
            "model": self.model.to_dict(),
            "training": self.training.to_dict(),
            "serial": self.serial.to_dict(),
            "vocab_size": self.vocab_size,
            "max_prompt_tokens": self.max_prompt_tokens,
            "max_templates": self.max_templates,
            "prune_logprob": self.prune_logprob,
            "pretrained": self.pretrained,
            "lora": asdict(self.lora) if self.lora else None,
            "parameters": parameter_count(model),
            "history": asdict(self.history_) if self.history_ else None,
            "templates": bank.to_dict(),
            "requests": self.requests_.to_dict() if self.requests_ is not None else None,
            "option_cues": self.cues_.to_dict() if self.cues_ is not None else None,
            "record_check": self.record_check_.to_dict() if self.record_check_ is not None else None,
            "preconditions": self.preconditions_.to_dict() if self.preconditions_ is not None else None,
            "open_choices": self.choices_.to_dict() if self.choices_ is not None else None,
            "styles": self.styles_.to_dict() if self.styles_ is not None else None,
        }
        with atomic_directory(target) as tmp:
            model.save_pretrained(tmp)
            codec.tokenizer.save_pretrained(tmp)
            (tmp / POLICY_FILE).write_text(json.dumps(meta, indent=1, default=str))
        return target

    @classmethod
    def load(cls, path: str | Path, *, progress: bool = False, scorer: CandidateScorer | None = None) -> LMPolicy:
        """The saved policy; with ``scorer`` (a server holding the same checkpoint) its weights are not loaded."""
        root = Path(path)
        meta = read_meta(root, POLICY_FILE, FORMAT_VERSION, "a policy directory")
        policy = cls(
            model=ModelConfig(**meta["model"]),
            training=TrainConfig(**meta["training"]),
            serial=SerialConfig.from_dict(meta["serial"]),
            vocab_size=meta["vocab_size"],
            max_prompt_tokens=meta["max_prompt_tokens"],
            max_templates=meta["max_templates"],
            prune_logprob=meta.get("prune_logprob", 9.0),
            pretrained=meta["pretrained"],
            lora=LoraSettings(**meta["lora"]) if meta.get("lora") else None,
            progress=progress,
            scorer=scorer,
        )
        tokenizer = AutoTokenizer.from_pretrained(str(root))
        policy.codec_ = Codec.for_tokenizer(tokenizer, policy.max_prompt_tokens)
        policy.model_ = None if scorer is not None else load_model(root)
        policy.bank_ = TemplateBank.from_dict(meta["templates"])
        if meta.get("requests"):
            policy.requests_ = RequestTracker.from_dict(meta["requests"])
        if meta.get("option_cues"):
            policy.cues_ = OptionCues.from_dict(meta["option_cues"])
        if meta.get("record_check"):
            policy.record_check_ = RecordCheck.from_dict(meta["record_check"])
        if meta.get("preconditions"):
            policy.preconditions_ = Preconditions.from_dict(meta["preconditions"])
        if meta.get("open_choices"):
            policy.choices_ = OpenChoices.from_dict(meta["open_choices"])
        if meta.get("styles"):
            policy.styles_ = OperatorStyles.from_dict(meta["styles"]).bind(policy.cues_)
        if meta.get("history"):
            policy.history_ = TrainHistory(**meta["history"])
        policy.version_ = meta["version"]
        return policy
