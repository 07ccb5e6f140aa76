"""``autopilot policy train|evaluate|propose``: the next-UI-action policy from the command line."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from schemas.argtypes import positive_int


def _read_traces(path: str) -> list[Any]:
    from importers.jsonl import read_traces

    source = Path(path)
    if not source.is_file():
        raise FileNotFoundError(f"--traces: {source} is not a file")
    tick = time.perf_counter()
    traces = list(read_traces(source))
    if not traces:
        raise ValueError(f"--traces: {source} holds no traces")
    steps = sum(len(t.steps) for t in traces)
    print(
        f"read {len(traces):,} traces ({steps:,} steps) from {source} in {time.perf_counter() - tick:.0f} s",
        file=sys.stderr,
        flush=True,
    )
    return traces


def _train(args: argparse.Namespace) -> int:
    traces = _read_traces(args.traces)
    if args.max_traces:
        traces = traces[: args.max_traces]
    if args.lm_only or args.pretrained:
        return _train_lm(args, traces)
    from policy.combined import CombinedPolicy

    settings = {
        key: value
        for key, value in (
            ("epochs", args.epochs),
            ("batch_size", args.batch_size),
            ("learning_rate", args.lr),
            ("hidden_size", args.hidden),
            ("layers", args.layers),
            ("architecture", args.architecture),
        )
        if value is not None
    }
    policy = CombinedPolicy(
        time_budget_s=args.time_budget if args.time_budget is not None else 540.0,
        lm=not args.no_lm,
        gbm=not args.no_gbm,
        lm_threads=args.threads,
        lm_settings=settings or None,
        val_fraction=args.val_fraction,
        seed=args.seed,
        progress=True,
    ).fit(traces)
    out = policy.save(args.out)
    print(policy.choice_markdown())
    print(f"\ntrained {policy.version_} on {len(traces)} traces; policy written to {out}")
    return 0


def _train_lm(args: argparse.Namespace, traces: list[Any]) -> int:
    from policy.model import ModelConfig
    from policy.policy import LMPolicy
    from policy.train import TrainConfig

    training = TrainConfig(
        epochs=args.epochs or 6,
        batch_size=args.batch_size or 32,
        learning_rate=args.lr or 3e-3,
        time_budget_s=args.time_budget,
        threads=args.threads,
        seed=args.seed,
    )
    model = ModelConfig(
        architecture=args.architecture or "llama", hidden_size=args.hidden or 128, layers=args.layers or 2
    )
    policy = LMPolicy(model=model, training=training, pretrained=args.pretrained)
    if args.lora:
        from policy.lora import LoraSettings

        policy.lora = LoraSettings(r=args.lora_r)
    policy.fit(traces)
    out = policy.save(args.out)
    history = policy.history_
    assert history is not None
    print(
        f"trained {policy.version_} on {len(traces)} traces: {history.steps} steps ({history.epochs_done:.2f} "
        f"epochs), {history.seconds:.0f} s, best validation loss {history.best_val_loss:.4f} "
        f"(stopped: {history.stopped})"
    )
    if history.undertrained:
        print("warning: training stopped before one whole epoch; the model is undertrained", file=sys.stderr)
    print(f"policy written to {out}")
    return 0


def _propose(args: argparse.Namespace) -> int:
    from policy.combined import load_policy
    from schemas.state import UIState

    policy = load_policy(args.model)
    text = sys.stdin.read() if args.state == "-" else Path(args.state).read_text()
    state = UIState.model_validate_json(text)
    proposal = policy.propose(state, k=args.k)
    if proposal is None:
        raise ValueError("the state offers no valid action")
    print(proposal.model_dump_json(indent=1))
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from policy.report import evaluate_policy_on_traces

    train = _read_traces(args.train) if args.train else None
    result = evaluate_policy_on_traces(args.model, _read_traces(args.traces), train)
    print(result.markdown)
    if args.json:
        Path(args.json).write_text(json.dumps(result.data, indent=1) + "\n")
        print(f"results written to {args.json}")
    return 0


def register(commands: argparse._SubParsersAction) -> None:
    policy = commands.add_parser("policy", help="the next-UI-action policy")
    sub = policy.add_subparsers(dest="policy_command", required=True, metavar="SUBCOMMAND")

    train = sub.add_parser(
        "train",
        help="train a policy on traces (JSONL) and save it: the LM and the simple predictors, combined by what "
        "the latest held-out cases show (--lm-only: the LM alone)",
    )
    train.add_argument("--traces", required=True, help="JSONL traces (sandbox generate or autopilot import)")
    train.add_argument("--out", required=True, help="output model directory")
    train.add_argument("--lm-only", action="store_true", help="train the LM policy alone (no combination)")
    train.add_argument("--no-lm", action="store_true", help="combine the simple predictors only")
    train.add_argument("--no-gbm", action="store_true", help="leave the gradient-boosting members out")
    train.add_argument("--val-fraction", type=float, default=0.2, help="latest share of cases held out for the choice")
    train.add_argument(
        "--time-budget",
        type=float,
        default=None,
        help="seconds: the whole fit (default 540), or the LM's with --lm-only",
    )
    train.add_argument("--epochs", type=positive_int, default=None, help="LM epochs (default: planned per data size)")
    train.add_argument("--batch-size", type=positive_int, default=None)
    train.add_argument("--lr", type=float, default=None)
    train.add_argument("--threads", type=positive_int, default=None, help="LM threads (default: the faster of 1, 2)")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--max-traces", type=positive_int, default=None)
    train.add_argument("--architecture", choices=["llama", "qwen2"], default=None)
    train.add_argument("--hidden", type=positive_int, default=None)
    train.add_argument("--layers", type=positive_int, default=None)
    train.add_argument("--pretrained", default=None, help="start from this checkpoint directory (implies --lm-only)")
    train.add_argument("--lora", action="store_true", help="fine-tune with LoRA adapters (with --pretrained)")
    train.add_argument("--lora-r", type=positive_int, default=16)
    train.set_defaults(handler=_train)

    evaluate = sub.add_parser("evaluate", help="offline evaluation beside the floors and the ceiling")
    evaluate.add_argument("--model", required=True, help="policy directory")
    evaluate.add_argument("--traces", required=True, help="test traces (JSONL)")
    evaluate.add_argument("--train", default=None, help="the training traces: floors, unseen-prefix split")
    evaluate.add_argument("--json", default=None, help="also write the results as JSON here")
    evaluate.set_defaults(handler=_evaluate)

    propose = sub.add_parser("propose", help="top-k proposals for one UIState (JSON file or - for stdin)")
    propose.add_argument("--model", required=True)
    propose.add_argument("--state", required=True)
    propose.add_argument("-k", type=positive_int, default=5)
    propose.set_defaults(handler=_propose)
