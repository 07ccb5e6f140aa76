"""``autopilot serve`` needs a BPM: without a BPM URL it refuses with a message naming the setting, unless the
embedded sandbox is asked for explicitly; contradictory flags are refused too. Nothing starts in these cases."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from service.api.server_thread import ServerThread
from service.api.settings import ServiceSettings
from service.cli import main


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    (tmp_path / "tokens.json").write_text(json.dumps({"tokens": []}))
    return tmp_path


def test_serve_without_a_bpm_url_refuses(
    data_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AUTOPILOT_BPM_URL", raising=False)
    assert main(["serve", "--data-dir", str(data_dir)]) == 2
    err = capsys.readouterr().err
    assert "bpm_url: not set" in err and "--sandbox" in err
    assert not (data_dir / "runtime.db").exists()  # nothing was started


def test_sandbox_and_a_bpm_url_exclude_each_other(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["serve", "--data-dir", str(data_dir), "--sandbox", "--bpm-url", "http://127.0.0.1:9/api/v1"]
    assert main(argv) == 2
    assert "sandbox: --sandbox and a BPM URL exclude each other" in capsys.readouterr().err


def test_simulated_operators_need_the_sandbox(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["serve", "--data-dir", str(data_dir), "--bpm-url", "http://127.0.0.1:9/api/v1", "--simulated-operators"]
    assert main(argv) == 2
    assert "simulated_operators: only with --sandbox" in capsys.readouterr().err


def test_sandbox_serve_gets_past_the_bpm_check(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # With --sandbox the next missing thing is the policy (no demo has run in this data dir), not the BPM.
    assert main(["serve", "--data-dir", str(data_dir), "--sandbox"]) == 2
    assert "policy_dir:" in capsys.readouterr().err


def test_a_bad_keep_alive_is_refused_naming_the_setting(
    data_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AUTOPILOT_KEEP_ALIVE_S", "0")
    assert main(["serve", "--data-dir", str(data_dir), "--sandbox"]) == 2
    assert "keep_alive_s" in capsys.readouterr().err


def test_the_keep_alive_outlasts_common_proxy_and_pool_idle_timeouts() -> None:
    # A server that closes an idle connection first races the client's next request on it (a ReadError in
    # bench.api_load with uvicorn's and httpx's 5 s); nginx and cloud load balancers keep upstreams 60 s.
    assert ServiceSettings().keep_alive_s > 60
    thread = ServerThread(object(), keep_alive_s=ServiceSettings().keep_alive_s)
    assert thread.server.config.timeout_keep_alive == ServiceSettings().keep_alive_s
