"""The deployment's risk file (AUTOPILOT_RISK_FILE): validated by the schemas, named in every error, and the
sandbox's own file loads like any user's."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sandbox.risk import RISK_FILE
from schemas.actions import ActionType
from schemas.risk import RiskPolicy, RiskTier, load_risk_policy
from service.runtime.settings import RuntimeSettings


def test_the_sandbox_ships_a_valid_risk_file() -> None:
    policy = load_risk_policy(RISK_FILE)
    assert policy.tier_for("account_closure", ActionType.CLICK_CONTROL, "close_account") == RiskTier.ALWAYS_ASK
    assert policy.tier_for("refund_damaged", ActionType.CLICK_CONTROL, "lookup_order") == RiskTier.NON_CRITICAL
    assert policy.tier_for("refund_damaged", ActionType.FILL_FIELD, "order_id") == RiskTier.CRITICAL


def test_a_process_outside_the_list_is_always_ask() -> None:
    policy = RiskPolicy(processes=["refund_request"])
    assert policy.tier_for("refund_request", ActionType.FILL_FIELD) == RiskTier.CRITICAL
    assert policy.tier_for("payroll", ActionType.FILL_FIELD) == RiskTier.ALWAYS_ASK


def test_settings_read_the_file_and_default_to_critic_gated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "risk.json"
    path.write_text(json.dumps({"overrides": [{"action_type": "close_chat", "tier": "always_ask"}]}))
    monkeypatch.setenv("AUTOPILOT_RISK_FILE", str(path))
    assert RuntimeSettings().risk_policy().tier_for("any", ActionType.CLOSE_CHAT) == RiskTier.ALWAYS_ASK
    monkeypatch.setenv("AUTOPILOT_RISK_FILE", "")  # blank: unset
    assert RuntimeSettings().risk_policy() == RiskPolicy()


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        ('{"overrides": [{"action_type": "close_chat", "tier": "sometimes"}]}', "overrides.0.tier"),
        ('{"overrides": [{"action_type": "close_chat", "tier": "always_ask", "colour": 1}]}', "overrides.0.colour"),
        ("not json", "risk_file"),
    ],
)
def test_a_bad_file_is_refused_naming_the_field(tmp_path: Path, content: str, needle: str) -> None:
    path = tmp_path / "risk.json"
    path.write_text(content)
    with pytest.raises(ValueError, match="risk_file") as caught:
        load_risk_policy(path)
    assert needle in str(caught.value)


def test_a_missing_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="risk_file: cannot read"):
        load_risk_policy(tmp_path / "absent.json")
