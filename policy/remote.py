"""Scoring candidates on a GPU inference server: the policy's scoring interface against SGLang's native API.

A large policy (a fine-tuned Qwen2.5-7B checkpoint, say) is served by an existing engine; the service keeps the
policy directory's tokenizer, template bank and serialisation and sends only token ids. ``SGLangScorer`` has the
``score`` method of ``policy.fast_scoring.PackedDecoder``, so ``LMPolicy(scorer=...)`` proposes exactly as with
the weights in process (same pruning rule, same sums of log-probabilities).

Protocol (SGLang ``POST /generate``, documented in its native-API and sampling-parameter pages): one input per
candidate, ``input_ids = prompt + candidate``, ``return_logprob: true``, ``logprob_start_len = len(prompt) - 1``
and ``max_new_tokens: 0`` (prefill only). The reply's ``meta_info.input_token_logprobs`` lists ``[logprob,
token_id, text]`` from position ``logprob_start_len`` on; the entry at that position is null (its logits
belong to the cached prefix), the following ones are the candidate's tokens. Starting the log-probabilities
one token before the candidate lets the radix cache serve the prompt's prefix, so a state's ~10-40 candidates
share one prefill of the prompt. (vLLM's OpenAI server can return prompt log-probabilities too, but its
documentation says a request for them bypasses the prefix cache: every candidate would re-read the prompt.)

Tested against a local stand-in server implementing that reply format with a small model
(tests/policy/test_remote.py); not run against a real SGLang here (it cannot be installed on this machine):
check ``max_new_tokens: 0`` against your SGLang version (older ones want 1).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import httpx

from policy.fast_scoring import ScoredState, kept_candidates


class RemoteScoringError(RuntimeError):
    """The server's reply is not what the protocol promises (or the server failed)."""


class SGLangScorer:
    """``score(prompts, candidates, prune_logprob)`` on an SGLang server at ``url`` (e.g. ``http://gpu:30000``)
    that serves the policy directory's model."""

    def __init__(
        self,
        url: str,
        *,
        timeout_s: float = 30.0,
        max_inputs_per_request: int = 512,
        max_new_tokens: int = 0,
        client: httpx.Client | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.max_inputs_per_request = max_inputs_per_request
        self.max_new_tokens = max_new_tokens
        self._client = client or httpx.Client(timeout=timeout_s)

    def _generate(self, inputs: list[list[int]], starts: list[int]) -> list[dict[str, Any]]:
        body = {
            "input_ids": inputs,
            "sampling_params": {"max_new_tokens": self.max_new_tokens, "temperature": 0.0},
            "return_logprob": True,
            "logprob_start_len": starts,
        }
        try:
            response = self._client.post(f"{self.url}/generate", json=body)
            response.raise_for_status()
        except httpx.HTTPError as exc:
            raise RemoteScoringError(f"{self.url}/generate: {exc}") from exc
        replies = response.json()
        if isinstance(replies, dict):  # a batch of one may come back unwrapped
            replies = [replies]
        if not isinstance(replies, list) or len(replies) != len(inputs):
            raise RemoteScoringError(f"{self.url}/generate: expected {len(inputs)} replies")
        return replies

    @staticmethod
    def _candidate_logprobs(reply: dict[str, Any], candidate: Sequence[int]) -> list[float]:
        entries = reply.get("meta_info", {}).get("input_token_logprobs")
        if not isinstance(entries, list) or len(entries) < len(candidate) + 1:
            raise RemoteScoringError("a reply without the candidate's input_token_logprobs")
        tail = entries[len(entries) - len(candidate) :]
        if [int(e[1]) for e in tail] != list(candidate) or any(e[0] is None for e in tail):
            raise RemoteScoringError("input_token_logprobs do not match the candidate's tokens")
        return [float(e[0]) for e in tail]

    def score(
        self,
        prompts: Sequence[Sequence[int]],
        candidates: Sequence[Sequence[Sequence[int]]],
        prune_logprob: float | None = None,
    ) -> list[ScoredState]:
        """As ``PackedDecoder.score``: every candidate is scored in full, then the pruning rule
        (``kept_candidates``) is applied to the result (on a GPU the pruned ones cost little; the kept set and
        scores are the same)."""
        if len(prompts) != len(candidates):
            raise ValueError("one candidate list per prompt")
        if any(len(p) == 0 for p in prompts):
            raise ValueError("empty prompt")
        if any(len(c) == 0 for cands in candidates for c in cands):
            raise ValueError("empty candidate")
        owners = [(b, c) for b, cands in enumerate(candidates) for c in range(len(cands))]
        per_token: list[list[float]] = []
        for at in range(0, len(owners), self.max_inputs_per_request):
            chunk = owners[at : at + self.max_inputs_per_request]
            inputs = [[*prompts[b], *candidates[b][c]] for b, c in chunk]
            replies = self._generate(inputs, [len(prompts[b]) - 1 for b, _ in chunk])
            per_token += [
                self._candidate_logprobs(reply, candidates[b][c]) for reply, (b, c) in zip(replies, chunk, strict=True)
            ]
        out: list[ScoredState] = []
        at = 0
        for cands in candidates:
            tokens = per_token[at : at + len(cands)]
            at += len(cands)
            totals = [sum(lps) for lps in tokens]
            kept = kept_candidates([lps[0] for lps in tokens], totals, prune_logprob)
            out.append(ScoredState(kept, [totals[c] for c in kept]))
        return out

    def close(self) -> None:
        self._client.close()


def remote_scorer(url: str | None) -> SGLangScorer | None:
    """The scorer for a configured server URL (``AUTOPILOT_POLICY_SERVER_URL``); None keeps the weights in process."""
    return SGLangScorer(url) if url else None
