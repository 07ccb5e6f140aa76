"""The fast scoring path on a GPU with a Qwen2.5-7B-architecture policy (random weights, bf16, built from its
config: nothing is downloaded).

What a large policy costs per proposal when its weights sit on the GPU beside the service (the path
``policy.fast_scoring`` takes on CUDA: one packed pass, attention padded across states in one call per layer):

* latency: one state (a ~200-token prompt, ~10 candidates sharing prefixes as slot-form actions do), p50/p99 over
  ``--iters`` proposals' scoring, beside the reference path (``policy.scoring``: pruning pass + packed pass through
  the ``transformers`` forward) and a bare forward over the prompt, all in the same run;
* throughput: packed batches of B states, states/s and candidate sequences/s.

Token ids are random (the model is random too): the numbers are the arithmetic and the overheads of the path,
not of a trained policy's pruning. ``--tiny`` runs the same protocol with a small config (CPU check).

    python -m bench.policy_gpu [--tiny] [--device cuda] [--out bench/results]

Writes ``<out>/policy_gpu.{json,md}`` (``--tiny``: ``policy_gpu_tiny``).
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import time
import traceback
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
import transformers
from transformers import PreTrainedModel, Qwen2Config, Qwen2ForCausalLM

from policy.fast_scoring import PackedDecoder
from policy.scoring import next_token_logprobs, score_candidates

# Qwen2.5-7B's published config.json (shape only)
QWEN25_7B: dict[str, Any] = dict(
    vocab_size=152064,
    hidden_size=3584,
    intermediate_size=18944,
    num_hidden_layers=28,
    num_attention_heads=28,
    num_key_value_heads=4,
    max_position_embeddings=32768,
    rope_theta=1_000_000.0,
    rms_norm_eps=1e-6,
    tie_word_embeddings=False,
    use_sliding_window=False,
)
TINY: dict[str, Any] = dict(
    vocab_size=1000,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=4096,
    tie_word_embeddings=False,
)


def build(shape: dict[str, Any], device: torch.device, dtype: torch.dtype) -> PreTrainedModel:
    """Random weights straight on ``device`` in ``dtype`` (no fp32 copy on the host)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = Qwen2ForCausalLM(Qwen2Config(**shape))
    finally:
        torch.set_default_dtype(previous)
    return model.eval()


def synthetic_state(
    rng: random.Random, vocab: int, prompt_tokens: int, candidates: int
) -> tuple[list[int], list[list[int]]]:
    """A prompt of about ``prompt_tokens`` ids and ``candidates`` candidate sequences that share prefixes like
    slot-form actions ("select plan = ...", "send ..."): a verb from 4, often a shared second token, a tail."""
    prompt = [rng.randrange(10, vocab) for _ in range(prompt_tokens + rng.randrange(-20, 21))]
    verbs = [rng.randrange(10, vocab) for _ in range(4)]
    seconds = [rng.randrange(10, vocab) for _ in range(3)]
    end = 2
    cands = []
    for _ in range(candidates):
        head = [rng.choice(verbs)] + ([rng.choice(seconds)] if rng.random() < 0.6 else [])
        tail = [rng.randrange(10, vocab) for _ in range(rng.randrange(2, 11))]
        cands.append(head + tail + [end])
    return prompt, cands


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(device: torch.device, fn: Callable[[], object], iters: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        fn()
    _sync(device)
    out = []
    for _ in range(iters):
        started = time.perf_counter()
        fn()
        _sync(device)
        out.append((time.perf_counter() - started) * 1000)
    return out


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def summary(values: list[float]) -> dict[str, float]:
    return {"p50": pct(values, 0.5), "p99": pct(values, 0.99), "mean": statistics.mean(values), "n": len(values)}


def run(args: argparse.Namespace) -> dict[str, Any]:
    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(1)  # a shared CPU: two spinning OpenMP threads only slow each other down
    dtype = torch.float32 if args.tiny and device.type == "cpu" else torch.bfloat16
    shape = TINY if args.tiny else QWEN25_7B
    rng = random.Random(0)
    torch.manual_seed(0)
    started = time.perf_counter()
    model = build(shape, device, dtype)
    _sync(device)
    result: dict[str, Any] = {
        "model": "tiny Qwen2 (CPU check)" if args.tiny else "Qwen2.5-7B architecture, random weights",
        "config": shape,
        "parameters": sum(p.numel() for p in model.parameters()),
        "dtype": str(dtype).removeprefix("torch."),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "build_seconds": time.perf_counter() - started,
        "prompt_tokens": args.prompt_tokens,
        "candidates_per_state": args.candidates,
        "errors": {},
    }
    vocab = int(shape["vocab_size"])
    states = [synthetic_state(rng, vocab, args.prompt_tokens, args.candidates) for _ in range(max(args.batches))]
    prompt, cands = states[0]
    # --tiny on a CPU exercises the GPU's attention layout (padded across states) too
    decoder = PackedDecoder(model, padded_attention=True if args.tiny else None)

    def fast_one() -> object:
        with torch.inference_mode():
            return decoder.score([prompt], [cands], None)

    def reference_one() -> object:
        with torch.inference_mode():
            next_token_logprobs(model, [prompt])  # the reference's pruning pass
            return score_candidates(model, [prompt], [cands])

    def bare_one() -> object:
        with torch.inference_mode():
            return model(torch.tensor([prompt], device=device)).logits[0, -1, 0].item()

    sections: dict[str, Callable[[], object]] = {"fast": fast_one, "reference": reference_one, "bare_forward": bare_one}
    result["latency_ms"] = {}
    for name, fn in sections.items():
        try:
            result["latency_ms"][name] = summary(timed(device, fn, args.iters, args.warmup))
        except Exception as exc:  # a section that fails is reported, the others still run
            result["errors"][name] = "".join(traceback.format_exception_only(exc)).strip()
    try:
        with torch.inference_mode():
            fast = decoder.score([prompt], [cands], None)[0].logprobs
            reference = score_candidates(model, [prompt], [cands])[0]
        result["fast_vs_reference_max_abs_diff"] = max(abs(a - b) for a, b in zip(fast, reference, strict=True))
    except Exception as exc:
        result["errors"]["equality"] = "".join(traceback.format_exception_only(exc)).strip()
    lat = result["latency_ms"]
    if "fast" in lat and "bare_forward" in lat:
        result["fast_over_bare_forward_p50"] = lat["fast"]["p50"] / lat["bare_forward"]["p50"]
    if "fast" in lat and "reference" in lat:
        result["reference_over_fast_p50"] = lat["reference"]["p50"] / lat["fast"]["p50"]
    result["throughput"] = {}
    for batch in args.batches:
        part = states[:batch]
        prompts, candidates = [p for p, _ in part], [c for _, c in part]

        def fast_batch(prompts: list[list[int]] = prompts, candidates: list[list[list[int]]] = candidates) -> object:
            with torch.inference_mode():
                return decoder.score(prompts, candidates, None)

        try:
            times = timed(device, fast_batch, max(3, args.iters // 5), 1)
            seconds = statistics.median(times) / 1000
            result["throughput"][str(batch)] = {
                "batch_ms_p50": seconds * 1000,
                "states_per_s": batch / seconds,
                "candidates_per_s": sum(len(c) for c in candidates) / seconds,
                "tokens_per_batch": sum(len(p) + sum(len(x) for x in c) for p, c in part),
            }
        except Exception as exc:
            result["errors"][f"batch_{batch}"] = "".join(traceback.format_exception_only(exc)).strip()
            if device.type == "cuda":
                torch.cuda.empty_cache()
    if device.type == "cuda":
        result["peak_gpu_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    result["environment"] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "cuda": torch.version.cuda,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    return result


def render(result: dict[str, Any]) -> str:
    lat = result["latency_ms"]
    lines = [
        "# Fast scoring path on a GPU",
        "",
        f"{result['model']} ({result['parameters'] / 1e9:.2f}B parameters, {result['dtype']}) on {result['device']}; "
        f"one state = a ~{result['prompt_tokens']}-token prompt and {result['candidates_per_state']} candidates "
        "(random ids, prefixes shared as slot-form actions share them). Built in "
        f"{result['build_seconds']:.0f} s.",
        "",
        "| one state | p50 | p99 |",
        "|---|---:|---:|",
    ]
    labels = {
        "fast": "fast path (one packed pass)",
        "reference": "reference path (pruning pass + packed pass)",
        "bare_forward": "bare forward over the prompt",
    }
    for name, label in labels.items():
        if name in lat:
            lines.append(f"| {label} | {lat[name]['p50']:.2f} ms | {lat[name]['p99']:.2f} ms |")
    lines.append("")
    if "fast_over_bare_forward_p50" in result:
        lines.append(f"Fast path / bare forward (p50): {result['fast_over_bare_forward_p50']:.2f}x.")
    if "reference_over_fast_p50" in result:
        lines.append(f"Reference / fast (p50): {result['reference_over_fast_p50']:.2f}x.")
    if "fast_vs_reference_max_abs_diff" in result:
        lines.append(
            f"Largest difference between the two paths' sequence log-probabilities: "
            f"{result['fast_vs_reference_max_abs_diff']:.3g} ({result['dtype']} rounding)."
        )
    lines += ["", "| packed batch | batch time p50 | states/s | candidates/s |", "|---:|---:|---:|---:|"]
    for batch, row in result["throughput"].items():
        lines.append(
            f"| {batch} | {row['batch_ms_p50']:.1f} ms | {row['states_per_s']:.0f} | {row['candidates_per_s']:.0f} |"
        )
    if "peak_gpu_memory_gib" in result:
        lines += ["", f"Peak GPU memory: {result['peak_gpu_memory_gib']:.1f} GiB."]
    if result["errors"]:
        lines += ["", "Errors: " + "; ".join(f"{k}: {v}" for k, v in result["errors"].items())]
    env = result["environment"]
    lines += ["", f"torch {env['torch']}, transformers {env['transformers']}, CUDA {env['cuda']}, {env['date']}.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="a small config (a CPU check of the protocol)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--prompt-tokens", type=int, default=200)
    parser.add_argument("--candidates", type=int, default=10)
    parser.add_argument("--iters", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--batches", type=lambda s: [int(x) for x in s.split(",")], default=[1, 8, 32, 64])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = parser.parse_args(argv)
    result = run(args)
    name = "policy_gpu_tiny" if args.tiny else "policy_gpu"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{name}.json").write_text(json.dumps(result, indent=1, default=str) + "\n")
    markdown = render(result)
    (args.out / f"{name}.md").write_text(markdown)
    print(markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
