"""Risk tiers, autonomy stages and slices: configuration that decides how much autonomy an action gets."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path

from pydantic import Field, ValidationError

from schemas.actions import ActionType
from schemas.base import Payload, Strict


class RiskTier(StrEnum):
    NON_CRITICAL = "non_critical"  # executes without the critic
    CRITICAL = "critical"  # critic-gated
    ALWAYS_ASK = "always_ask"  # never executed without a human


class AutonomyStage(StrEnum):
    LOGGING = "logging"  # the system only records traces
    COPILOT = "copilot"  # proposals are shown; a human executes
    AUTOPILOT = "autopilot"  # confident proposals execute in the background


class SliceKey(Strict):
    """The unit autonomy is granted to: a process and an action type."""

    process_id: str = Field(min_length=1)
    action_type: ActionType

    def __str__(self) -> str:
        return f"{self.process_id}/{self.action_type.value}"


class RiskOverride(Strict):
    process_id: str | None = Field(default=None, description="None matches every process.")
    action_type: ActionType | None = Field(default=None, description="None matches every action type.")
    control_id: str | None = Field(default=None, description="None matches every target.")
    tier: RiskTier


class RiskPolicy(Payload):
    """Tiers per action type with overrides per process / action type / control; the most specific rule wins."""

    default_tiers: dict[ActionType, RiskTier] = Field(
        default_factory=lambda: {
            ActionType.FILL_FIELD: RiskTier.CRITICAL,
            ActionType.SELECT_OPTION: RiskTier.CRITICAL,
            ActionType.TOGGLE_CHECKBOX: RiskTier.CRITICAL,
            ActionType.CLICK_CONTROL: RiskTier.CRITICAL,
            ActionType.SEND_TEXT_TO_CHAT: RiskTier.CRITICAL,
            ActionType.TRANSFER_CHAT: RiskTier.CRITICAL,
            ActionType.CLOSE_CHAT: RiskTier.CRITICAL,
        }
    )
    overrides: list[RiskOverride] = Field(default_factory=list)
    processes: list[str] | None = Field(
        default=None,
        description="The processes this deployment may automate; any other process is always-ask. None: every one.",
    )

    def tier_for(self, process_id: str, action_type: ActionType, control_id: str | None = None) -> RiskTier:
        if self.processes is not None and process_id not in self.processes:
            return RiskTier.ALWAYS_ASK
        best: tuple[int, RiskTier] | None = None
        for rule in self.overrides:
            if rule.process_id is not None and rule.process_id != process_id:
                continue
            if rule.action_type is not None and rule.action_type != action_type:
                continue
            if rule.control_id is not None and rule.control_id != control_id:
                continue
            specificity = sum(x is not None for x in (rule.process_id, rule.action_type, rule.control_id))
            if best is None or specificity >= best[0]:
                best = (specificity, rule.tier)
        if best is not None:
            return best[1]
        return self.default_tiers.get(action_type, RiskTier.CRITICAL)


def load_risk_policy(path: str | Path) -> RiskPolicy:
    """A risk file (JSON, validated as ``RiskPolicy``): a user's tiers, always-ask actions and process list.
    Raises ValueError naming the file and the offending field."""
    source = Path(path)
    try:
        text = source.read_text(encoding="utf-8")
    except OSError as exc:
        raise ValueError(f"risk_file: cannot read {source}: {exc.strerror or exc}") from exc
    try:
        return RiskPolicy.model_validate_json(text)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "(root)"
        raise ValueError(f"risk_file: {source}: {where}: {first['msg']}") from exc
