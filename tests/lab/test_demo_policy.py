"""The demo's policy stage trains the product's default policy (the combined one), prints the floor table with the
choice of predictor per group, saves a directory the later stages load, and returns what the summary reads."""

from __future__ import annotations

from pathlib import Path

import pytest

from importers.jsonl import read_traces
from lab.demo import _policy_stage
from policy.combined import CombinedPolicy, load_policy
from sandbox.generate import generate
from sandbox.scenario import scenario_by_name
from schemas.actions import validate_action


def test_policy_stage_trains_the_combined_policy_and_prints_its_choice(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    traces = tmp_path / "traces.jsonl"
    generate(40, 3, traces, scenario_by_name("default"), progress=False)
    result = _policy_stage(traces, tmp_path / "policy", time_budget=15.0, seed=0)

    printed = capsys.readouterr().out
    assert "suffix_ngram_6" in printed and "| combined policy |" in printed
    assert "Which predictor answers where" in printed and "Held-out steps answered by" in printed

    assert {"model_dir", "version", "training_seconds", "test_cases", "action_accuracy", "ceiling"} <= set(result)
    assert set(result["action_accuracy"]) == {"most_frequent_per_screen", "suffix_ngram_6", "combined policy"}
    assert isinstance(result["training_seconds"], float) and result["training_seconds"] > 0
    assert result["ceiling"] is not None  # sandbox traces carry the Bayes ceiling

    policy = load_policy(result["model_dir"])  # what the critic, autopilot and service stages load
    assert isinstance(policy, CombinedPolicy) and policy.version_ == result["version"]
    state = read_traces(traces)[-1].steps[1].state
    proposal = policy.propose_batch([state])[0]
    assert proposal is not None and proposal.model_version == result["version"]
    validate_action(proposal.action, state.screen)
