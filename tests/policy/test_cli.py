"""``autopilot policy ...``: train, propose and evaluate from the command line; bad input fails clearly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from importers.jsonl import read_traces
from sandbox.generate import generate
from sandbox.scenario import scenario_by_name
from schemas.actions import validate_action
from schemas.proposal import Proposal
from service.cli import main


@pytest.fixture(scope="module")
def traces_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("cli") / "traces.jsonl"
    generate(30, 5, path, scenario_by_name("default"), progress=False)
    return path


def test_train_propose_evaluate(traces_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = tmp_path / "model"
    argv = ["policy", "train", "--traces", str(traces_path), "--out", str(model), "--epochs", "1"]
    assert main([*argv, "--hidden", "32", "--layers", "1", "--threads", "1", "--max-traces", "24"]) == 0
    assert "policy written to" in capsys.readouterr().out
    assert (model / "policy.json").is_file() and (model / "config.json").is_file()  # the LM, loadable alone
    assert (model / "combined.json").is_file()

    state = next(iter(read_traces(traces_path))).steps[1].state
    state_file = tmp_path / "state.json"
    state_file.write_text(state.model_dump_json())
    assert main(["policy", "propose", "--model", str(model), "--state", str(state_file), "-k", "2"]) == 0
    proposal = Proposal.model_validate_json(capsys.readouterr().out)
    validate_action(proposal.action, state.screen)
    assert proposal.state_etag == state.etag and len(proposal.alternatives) <= 1

    out_json = tmp_path / "eval.json"
    argv = ["policy", "evaluate", "--model", str(model), "--traces", str(traces_path), "--train", str(traces_path)]
    assert main([*argv, "--json", str(out_json)]) == 0
    printed = capsys.readouterr().out
    assert "suffix_ngram_6" in printed and "ceiling" in printed
    assert "Which predictor answers where" in printed and "combined policy" in printed
    data = json.loads(out_json.read_text())
    assert {"most_frequent_per_screen", "suffix_ngram_6"} <= set(data)
    # sandbox traces carry no timestamps: nothing to say about right-censored cases (tests/policy/test_censoring.py)
    assert "Right-censored" not in printed and "censoring" not in data


def test_bad_input_is_a_clear_error(traces_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["policy", "train", "--traces", str(tmp_path / "missing.jsonl"), "--out", str(tmp_path / "m")]) == 2
    assert "error: --traces:" in capsys.readouterr().err
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    assert main(["policy", "train", "--traces", str(empty), "--out", str(tmp_path / "m")]) == 2
    assert "holds no traces" in capsys.readouterr().err
    assert not (tmp_path / "m").exists()  # nothing half-written
    lines = traces_path.read_text(encoding="utf-8").splitlines()[:3]
    lines[1] = lines[1].replace('"step":0', '"step":-1', 1)  # a trace whose first step number is invalid
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join(lines) + "\n", encoding="utf-8")
    assert main(["policy", "train", "--traces", str(bad), "--out", str(tmp_path / "m")]) == 2
    assert f"{bad}:2: steps.0.step:" in capsys.readouterr().err  # the file, the line and the field
    assert not (tmp_path / "m").exists()
    assert main(["policy", "propose", "--model", str(tmp_path), "--state", str(empty)]) == 2
    assert "not a policy directory" in capsys.readouterr().err
