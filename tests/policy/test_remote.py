"""SGLangScorer against a local stand-in for SGLang's ``POST /generate`` (the reply format its native API
documents), computed by a small model: the remote scores, the pruning and LMPolicy's proposals equal the
in-process fast path's. The stand-in is ours: this checks our side of the protocol, not SGLang itself."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import PreTrainedModel

from policy.fast_scoring import score_states
from policy.policy import LMPolicy
from policy.remote import RemoteScoringError, SGLangScorer
from schemas.state import UIState
from tests.policy.checkpoints import tiny_saved_policy
from tests.policy.test_fast_scoring import TOLERANCE, _inputs, _model


class FakeSGLang:
    """``/generate`` with ``input_ids``, ``return_logprob`` and ``logprob_start_len``: per input, the log-prob of
    every token from ``logprob_start_len`` on, null at that first position (SGLang's reply shape)."""

    def __init__(self, model: PreTrainedModel) -> None:
        self.model = model
        self.requests: list[dict[str, Any]] = []

    def reply(self, body: dict[str, Any]) -> list[dict[str, Any]]:
        self.requests.append(body)
        out = []
        for ids, start in zip(body["input_ids"], body["logprob_start_len"], strict=True):
            with torch.no_grad():
                logprobs = self.model(torch.tensor([ids])).logits[0].log_softmax(-1)
            entries: list[list[Any]] = [[None, ids[start], None]]
            entries += [[float(logprobs[i - 1, ids[i]]), ids[i], None] for i in range(start + 1, len(ids))]
            out.append({"text": "", "meta_info": {"prompt_tokens": len(ids), "input_token_logprobs": entries}})
        return out


@contextmanager
def _serving(model: PreTrainedModel) -> Iterator[tuple[str, FakeSGLang]]:
    """The stand-in on a free loopback port, in a thread."""
    fake = FakeSGLang(model)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            found = self.path == "/generate"
            payload = json.dumps(fake.reply(body)).encode() if found else b"{}"
            self.send_response(200 if found else 404)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", fake
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(10)


MODEL = _model("qwen2")


@pytest.fixture
def server() -> Iterator[tuple[str, FakeSGLang]]:
    with _serving(MODEL) as running:
        yield running


@pytest.mark.parametrize("prune", [None, 1.5])
def test_remote_scores_equal_the_fast_path(server: tuple[str, FakeSGLang], prune: float | None) -> None:
    url, fake = server
    prompts, candidates = _inputs(seed=3, states=6)
    scorer = SGLangScorer(url, max_inputs_per_request=7)  # several requests
    remote = scorer.score(prompts, candidates, prune)
    local = score_states(MODEL, prompts, candidates, prune)
    for r, f in zip(remote, local, strict=True):
        assert r.kept == f.kept
        assert r.logprobs == pytest.approx(f.logprobs, abs=TOLERANCE)
    assert len(fake.requests) == -(-sum(len(c) for c in candidates) // 7)
    sent = fake.requests[0]
    assert sent["return_logprob"] is True and sent["sampling_params"]["max_new_tokens"] == 0
    # the log-probabilities start one token before the candidate: the prompt's prefix can come from the cache
    b = next(b for b, c in enumerate(candidates) if c)
    assert sent["logprob_start_len"][0] == len(prompts[b]) - 1
    assert sent["input_ids"][0] == prompts[b] + candidates[b][0]
    scorer.close()


def test_a_reply_for_other_tokens_is_refused(server: tuple[str, FakeSGLang]) -> None:
    url, fake = server
    scorer = SGLangScorer(url)
    original = fake.reply

    def wrong(body: dict[str, Any]) -> list[dict[str, Any]]:
        replies = original(body)
        replies[0]["meta_info"]["input_token_logprobs"][-1][1] += 1
        return replies

    fake.reply = wrong  # type: ignore[method-assign]
    with pytest.raises(RemoteScoringError, match="do not match"):
        scorer.score([[5, 6, 1]], [[[7, 2]]])
    with pytest.raises(RemoteScoringError):
        SGLangScorer(url + "/nowhere").score([[5, 1]], [[[2]]])


@pytest.fixture(scope="module")
def saved_policy(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[UIState]]:
    return tiny_saved_policy(tmp_path_factory.mktemp("remote"), seed=9)


def test_policy_with_a_remote_scorer_proposes_as_in_process(saved_policy: tuple[Path, list[UIState]]) -> None:
    path, states = saved_policy
    local = LMPolicy.load(path)
    assert local.model_ is not None
    with _serving(local.model_) as (url, _):  # the stand-in serves the saved checkpoint; the remote policy loads none
        remote = LMPolicy.load(path, scorer=SGLangScorer(url))
        assert remote.model_ is None
        for a, b in zip(remote.propose_batch(states[:12], k=3), local.propose_batch(states[:12], k=3), strict=True):
            assert a is not None and b is not None
            assert a.action == b.action and [x.action for x in a.alternatives] == [x.action for x in b.alternatives]
            assert a.features.logprob == pytest.approx(b.features.logprob, abs=TOLERANCE)
