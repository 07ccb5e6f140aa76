"""``autopilot critic train|evaluate|retrain|versions|promote|rollback``: the critic from the command line.

``retrain`` is what the nightly Kubernetes CronJob runs. Every command exits 0 on success and non-zero with an
``error: ...`` line on bad input (unreadable or empty feedback, a wrong directory) without writing anything.
"""

from __future__ import annotations

import argparse
import json
from datetime import datetime
from pathlib import Path
from typing import Any

from schemas.argtypes import positive_int, unit_fraction


def _threshold_config(args: argparse.Namespace) -> Any:
    from critic.thresholds import ThresholdConfig

    return ThresholdConfig(
        alpha=args.alpha,
        delta=args.delta,
        min_rows=args.min_rows,
        min_executed=args.min_executed,
        granularity=args.granularity,
        max_candidates=args.max_candidates,
    )


def _pipeline_config(args: argparse.Namespace) -> Any:
    from critic.pipeline import PipelineConfig

    return PipelineConfig(
        kind=args.kind,
        label=args.label,
        calibration=args.calibration,
        thresholds=_threshold_config(args),
        policy_dir=args.policy,
        generative_epochs=args.epochs,
        time_budget_s=args.time_budget,
        seed=args.seed,
    )


def _train(args: argparse.Namespace) -> int:
    from critic.feedback import load_feedback_source, time_window
    from critic.pipeline import summary, train_critic

    records = time_window(load_feedback_source(args.feedback), args.window_days)
    out = Path(args.out)
    trained = train_critic(records, _pipeline_config(args), plots_dir=out)
    trained.critic.save(out / "critic")
    (out / "thresholds.json").write_text(json.dumps(trained.thresholds.to_dict(), indent=1))
    (out / "summary.json").write_text(json.dumps(summary(trained), indent=1, default=str))
    print(trained.comparison.render_markdown())
    print()
    print(trained.thresholds.render_markdown())
    print(f"\ncritic written to {out / 'critic'} (thresholds.json, summary.json and plots beside it)")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    import numpy as np

    from critic.base import accept_scores, labelled, labels, slice_of
    from critic.evaluate import CriticScores, compare_critics
    from critic.feedback import load_feedback_source
    from critic.persist import load_critic
    from critic.pipeline import check_thresholds
    from critic.registry import CriticRegistry
    from critic.thresholds import SliceThresholds

    records = labelled(load_feedback_source(args.feedback), args.label)
    thresholds_data: dict[str, Any] | None = None
    if args.registry:
        registry = CriticRegistry(args.registry)
        version = args.version or registry.champion()
        if version is None:
            raise ValueError(f"--registry: {args.registry} has no champion; name a --version")
        critic = load_critic(registry.artifact_path(version))
        thresholds_data = registry.thresholds(version)
    elif args.critic:
        critic = load_critic(Path(args.critic))
        candidate = Path(args.critic).parent / "thresholds.json"
        if candidate.is_file():
            thresholds_data = json.loads(candidate.read_text())
    else:
        raise ValueError("give --critic DIR or --registry DIR")
    y = labels(records, args.label)
    slices = [slice_of(r) for r in records]
    baseline = np.array([r.proposal.features.probability for r in records])
    out = Path(args.out)
    comparison = compare_critics(
        [CriticScores("policy confidence", baseline), CriticScores(critic.name, accept_scores(critic, records))],
        y,
        slices,
        baseline="policy confidence",
        plots_dir=out,
        title=f"{critic.name} on {len(records)} rows",
    )
    print(comparison.render_markdown())
    print()
    print(comparison.render_per_action_type())
    result: dict[str, Any] = {"comparison": comparison.data()}
    if thresholds_data is not None:
        hold = check_thresholds(SliceThresholds.from_dict(thresholds_data), accept_scores(critic, records), y, slices)
        result["thresholds_hold"] = hold.holds
        result["realised_error"] = hold.realised_error
        result["coverage"] = hold.coverage
        print(
            f"\nthresholds hold on these rows: {hold.holds} (realised error {hold.realised_error}, "
            f"coverage {hold.coverage:.1%})"
        )
    out.mkdir(parents=True, exist_ok=True)
    (out / "evaluation.json").write_text(json.dumps(result, indent=1, default=str))
    print(f"\nplots and evaluation.json written to {out}")
    return 0


def _retrain(args: argparse.Namespace) -> int:
    from critic.retrain import RetrainConfig, retrain

    config = RetrainConfig(
        pipeline=_pipeline_config(args),
        window_days=args.window_days,
        min_gain=args.min_gain,
        policy_version=args.policy_version,
    )
    now = datetime.fromisoformat(args.now) if args.now else None
    outcome = retrain(args.feedback, args.registry, config, now=now, report_dir=args.report)
    verdict = "promoted" if outcome.promoted else "not promoted"
    print(f"{outcome.version}: {verdict} ({outcome.reason}); champion: {outcome.champion}")
    origin = outcome.provenance
    print(f"rows: {origin['rows']} from {origin['source']} by source {json.dumps(origin['by_source'])}")
    print(f"report: {outcome.report}")
    return 0


def _import_feedback(args: argparse.Namespace) -> int:
    from critic.feedback import as_imported, load_feedback_source
    from critic.store import FeedbackStore

    records = as_imported(load_feedback_source(args.source))
    with FeedbackStore(args.feedback) as store:
        added = store.add(records)
    print(f"{added} of {len(records)} rows added to the feedback store as source 'import'")
    return 0


def _versions(args: argparse.Namespace) -> int:
    from critic.registry import CriticRegistry

    registry = CriticRegistry(args.registry)
    champion = registry.champion()
    for m in registry.versions():
        mark = "*" if m.version == champion else " "
        aurc = m.metrics.get("aurc")
        print(f"{mark} {m.version}  {m.kind}  rows={m.rows.train}  aurc={aurc if aurc is None else round(aurc, 4)}")
    return 0


def _promote(args: argparse.Namespace) -> int:
    from critic.registry import CriticRegistry

    CriticRegistry(args.registry).promote(args.version, args.reason)
    print(f"{args.version} is the champion")
    return 0


def _rollback(args: argparse.Namespace) -> int:
    from critic.registry import CriticRegistry

    version = CriticRegistry(args.registry).rollback(args.reason)
    print(f"rolled back: {version} is the champion again")
    return 0


def _optional_days(text: str) -> float | None:
    if text.lower() in {"all", "none"}:
        return None
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0 days or 'all', got {text}")
    return value


def _add_training_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--feedback", required=True, help="a .jsonl file, a directory of them, or a database URL")
    parser.add_argument("--kind", choices=["feature", "generative", "confidence"], default="feature")
    parser.add_argument(
        "--label", choices=["unacceptable", "accepted", "acceptable"], default="unacceptable",
        help="unacceptable (default): errors are model_error and other rejections, acceptable alternatives count "
        "as acceptable, environment rows carry no label; accepted: only an accept is positive (the paper's); "
        "acceptable: acceptable_alternative rejections are positive, environment and other are errors",
    )  # fmt: skip
    parser.add_argument("--policy", default=None, help="policy checkpoint (the generative critic's backbone)")
    parser.add_argument("--calibration", choices=["auto", "isotonic", "sigmoid"], default="auto")
    parser.add_argument("--alpha", type=unit_fraction, default=0.05, help="tolerated error among executed steps")
    parser.add_argument("--delta", type=unit_fraction, default=0.1, help="allowed chance the guarantee fails")
    parser.add_argument("--min-rows", type=positive_int, default=100, help="fewer calibration rows: no threshold")
    parser.add_argument(
        "--min-executed",
        type=positive_int,
        default=None,
        help="rows the first tested threshold executes (default: the fewest on which an error rate of alpha/2 passes)",
    )
    parser.add_argument("--max-candidates", type=positive_int, default=30, help="thresholds tested per slice")
    parser.add_argument(
        "--granularity", choices=["pooled", "slice", "action_type", "process", "global"], default="pooled",
        help="pooled (default): the hierarchy global -> action type -> slice, cells chosen from row counts",
    )  # fmt: skip
    parser.add_argument("--window-days", type=_optional_days, default=28.0, help="rolling window, or 'all'")
    parser.add_argument("--epochs", type=positive_int, default=2, help="generative critic epochs")
    parser.add_argument("--time-budget", type=float, default=None, help="generative critic training seconds")
    parser.add_argument("--seed", type=int, default=0)


def register(commands: argparse._SubParsersAction) -> None:
    critic = commands.add_parser("critic", help="the acceptance critic, its thresholds and registry")
    sub = critic.add_subparsers(dest="critic_command", required=True, metavar="SUBCOMMAND")

    train = sub.add_parser("train", help="train, calibrate and threshold a critic on feedback")
    _add_training_options(train)
    train.add_argument("--out", required=True, help="output directory")
    train.set_defaults(handler=_train)

    evaluate = sub.add_parser("evaluate", help="a critic against the policy's confidence on labelled feedback")
    evaluate.add_argument("--feedback", required=True)
    evaluate.add_argument("--critic", default=None, help="a saved critic directory")
    evaluate.add_argument("--registry", default=None, help="a registry (its champion unless --version)")
    evaluate.add_argument("--version", default=None)
    evaluate.add_argument("--label", choices=["unacceptable", "accepted", "acceptable"], default="unacceptable")
    evaluate.add_argument("--out", required=True, help="where plots and evaluation.json go")
    evaluate.set_defaults(handler=_evaluate)

    retrain = sub.add_parser("retrain", help="the nightly job: retrain, evaluate, promote or keep the champion")
    _add_training_options(retrain)
    retrain.add_argument("--registry", required=True, help="registry directory")
    retrain.add_argument("--min-gain", type=float, default=0.0, help="AURC the challenger must gain")
    retrain.add_argument("--policy-version", default="unknown")
    retrain.add_argument("--report", default=None, help="report directory (default: REGISTRY/reports/VERSION)")
    retrain.add_argument("--now", default=None, help="end of the window, ISO time (default: newest feedback)")
    retrain.set_defaults(handler=_retrain)

    imports = sub.add_parser(
        "import-feedback", help="add rows from a .jsonl file (or directory) to a feedback store, marked as imported"
    )
    imports.add_argument("source", help="a .jsonl file or a directory of them")
    imports.add_argument("--feedback", required=True, help="the feedback store's database URL")
    imports.set_defaults(handler=_import_feedback)

    versions = sub.add_parser("versions", help="list registered critics (* = champion)")
    versions.add_argument("--registry", required=True)
    versions.set_defaults(handler=_versions)

    promote = sub.add_parser("promote", help="make a registered version the champion")
    promote.add_argument("--registry", required=True)
    promote.add_argument("--version", required=True)
    promote.add_argument("--reason", required=True)
    promote.set_defaults(handler=_promote)

    rollback = sub.add_parser("rollback", help="return to the previous champion")
    rollback.add_argument("--registry", required=True)
    rollback.add_argument("--reason", required=True)
    rollback.set_defaults(handler=_rollback)
