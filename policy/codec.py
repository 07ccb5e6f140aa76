"""Token-level encoding of prompts and action texts, with the truncation rule applied in one place.

Our own tokenizer marks the action with the special tokens ``<act>`` and ``</act>``. A pretrained checkpoint's
tokenizer (e.g. Qwen2.5) is left untouched, so no embedding row has to be added or trained: the action is
introduced by a plain-text marker and ended by the tokenizer's own end-of-sequence token.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from transformers import PreTrainedTokenizerBase

from policy.serialise import ACTION_END, ACTION_START

PRETRAINED_ACTION_MARKER = "\n### Next action:\n"
HEAD_TOKENS = 32  # the head of a prompt (process, screen, controls) survives truncation


@dataclass
class Codec:
    tokenizer: PreTrainedTokenizerBase
    action_start: list[int]
    action_end: list[int]
    max_prompt_tokens: int = 768
    _cache: dict[str, list[int]] = field(default_factory=dict, repr=False)

    @classmethod
    def for_tokenizer(cls, tokenizer: PreTrainedTokenizerBase, max_prompt_tokens: int = 768) -> Codec:
        vocab = tokenizer.get_vocab()
        if ACTION_START in vocab and ACTION_END in vocab:
            start, end = [vocab[ACTION_START]], [vocab[ACTION_END]]
        else:
            if tokenizer.eos_token_id is None:
                raise ValueError("a pretrained tokenizer needs an end-of-sequence token")
            start = tokenizer.encode(PRETRAINED_ACTION_MARKER, add_special_tokens=False)
            end = [int(tokenizer.eos_token_id)]
        return cls(tokenizer=tokenizer, action_start=start, action_end=end, max_prompt_tokens=max_prompt_tokens)

    def encode_prompt(self, prompt: str) -> list[int]:
        """Prompt tokens followed by the action-start marker. A prompt longer than ``max_prompt_tokens`` keeps its
        first ``HEAD_TOKENS`` tokens and its last ones: the head names the process, screen and controls, the
        tail holds the chat, the history and the step; the middle (panels, older chat) is what goes."""
        ids = self.tokenizer.encode(prompt, add_special_tokens=False)
        budget = self.max_prompt_tokens - len(self.action_start)
        if len(ids) > budget:
            ids = ids[:HEAD_TOKENS] + ids[len(ids) - (budget - HEAD_TOKENS) :]
        return ids + self.action_start

    def encode_action(self, text: str) -> list[int]:
        """Action-text tokens followed by the action-end marker (memoised: the same texts recur constantly)."""
        ids = self._cache.get(text)
        if ids is None:
            ids = self.tokenizer.encode(text, add_special_tokens=False) + self.action_end
            if len(self._cache) < 200_000:
                self._cache[text] = ids
        return ids
