"""Hot reload of the registry's champion: a nightly promotion (or a rollback) reaches the copilot route and the
in-process workers without a restart, critic and thresholds together (real registry, broker and store)."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from critic.registry import CriticRegistry, Manifest, RowCounts, data_hash
from critic.thresholds import SliceThresholds, ThresholdConfig, ThresholdResult
from sandbox.harness import service_runtime
from service.api.app import create_app
from service.api.auth import TokenStore
from service.api.context import AutopilotService
from service.runtime.bus.broker import EmbeddedBroker
from tests.api.conftest import issue_tokens, service_settings

pytestmark = pytest.mark.integration


def register(registry: CriticRegistry, critic: Any, version: str, thresholds: SliceThresholds, tmp: Path) -> str:
    now = datetime.now(UTC)
    manifest = Manifest(
        version=version,
        kind=critic.name,
        window_start=now,
        window_end=now,
        rows=RowCounts(train=10, calibration=0, test=0),
        data_hash=data_hash(["a"], [1]),
        policy_version="tiny",
        alpha=0.1,
        delta=0.1,
    )
    return registry.register(critic.save(tmp / version), manifest, thresholds.to_dict())


def slice_thresholds(value: float) -> SliceThresholds:
    result = ThresholdResult(value, 400, 300, 3, 0.01, 0.05, 0.7, "set by hand")
    return SliceThresholds(ThresholdConfig(granularity="slice"), {"refund_request/click_control": result})


def test_a_new_champion_is_loaded_without_a_restart(
    tmp_path: Path, broker: EmbeddedBroker, models: tuple[Any, Any, SliceThresholds]
) -> None:
    policy, critic, global_thresholds = models
    policy.save(tmp_path / "policy")
    registry = CriticRegistry(tmp_path / "registry")
    registry.promote(register(registry, critic, "critic-v1", global_thresholds, tmp_path), "first")
    settings = service_settings(tmp_path, broker.bootstrap, registry_poll_s=0)
    service = AutopilotService.from_settings(settings, service_runtime).start()
    try:
        assert service.critic_version == "critic-v1"
        assert service.reload_champion() is False  # nothing new
        tokens = issue_tokens(tmp_path / "tokens.json")
        client = TestClient(create_app(service, TokenStore(tmp_path / "tokens.json")))
        assert 'autopilot_critic_info{version="critic-v1"} 1.0' in client.get("/metrics").text

        registry.promote(register(registry, critic, "critic-v2", slice_thresholds(0.42), tmp_path), "nightly")
        assert service.reload_champion() is True
        assert service.critic_version == "critic-v2"
        assert 'autopilot_critic_info{version="critic-v2"} 1.0' in client.get("/metrics").text
        slices = client.get("/api/v1/supervisor/slices", headers=tokens.header("supervisor")).json()
        refund = [s for s in slices if s["slice"] == {"process_id": "refund_request", "action_type": "click_control"}]
        # The new thresholds are in force, and the slice they hold for was promoted (400 rows >= 200).
        assert refund and refund[0]["threshold"] == 0.42 and refund[0]["stage"] == "autopilot"
        worker = service.runtime.workers[0]
        assert service.runtime.wait_until(lambda: worker.thresholds is service.thresholds, timeout=10.0)

        registry.rollback("v2 misbehaves")
        assert service.reload_champion() is True and service.critic_version == "critic-v1"
    finally:
        service.stop()


def test_the_service_runs_its_policy_in_a_child_process_when_asked(
    tmp_path: Path, broker: EmbeddedBroker, models: tuple[Any, Any, SliceThresholds]
) -> None:
    """AUTOPILOT_POLICY_PROCESSES=1 (decision 0013): the copilot route is answered by the policy in a child
    process, as the policy in process answers it, and stopping the service stops the child."""
    from policy.process import PolicyProcesses
    from policy.replies import with_reply_guard

    policy, critic, global_thresholds = models
    policy.save(tmp_path / "policy")
    registry = CriticRegistry(tmp_path / "registry")
    registry.promote(register(registry, critic, "critic-v1", global_thresholds, tmp_path), "first")
    settings = service_settings(tmp_path, broker.bootstrap, registry_poll_s=0, policy_processes=1, workers=0)
    service = AutopilotService.from_settings(settings, service_runtime).start()
    try:
        assert isinstance(service.policy, PolicyProcesses) and service.policy.version_ == policy.version_
        child = service.policy.pids()[0]
        assert child is not None and child != os.getpid()
        platform = service.runtime.platform
        assert platform is not None
        state = platform.observe(sorted(platform.cases)[0])
        suggestion = service.suggest(state)
        expected = with_reply_guard(policy, settings.reply_guard).propose_batch([state])[0]  # as the service runs it
        assert suggestion is not None and expected is not None
        assert suggestion.proposal.action == expected.action
    finally:
        service.stop()
    assert service.policy.pids() == [None]  # the child is stopped with the service
