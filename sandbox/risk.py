"""The sandbox's default risk configuration: which actions of its processes may never run without a human."""

from __future__ import annotations

from schemas import ActionType, RiskPolicy, RiskTier
from schemas.risk import RiskOverride

# Closing an account is irreversible, and the retention offer commits the business to a discount: both are
# always-ask. Reading screens (lookups) is non-critical; everything else is critic-gated.
DEFAULT_RISK_POLICY = RiskPolicy(
    overrides=[
        RiskOverride(process_id="account_closure", action_type=ActionType.CLICK_CONTROL, control_id="close_account",
                     tier=RiskTier.ALWAYS_ASK),
        RiskOverride(process_id="account_closure", action_type=ActionType.SEND_TEXT_TO_CHAT, tier=RiskTier.ALWAYS_ASK),
        RiskOverride(action_type=ActionType.CLICK_CONTROL, control_id="lookup_order", tier=RiskTier.NON_CRITICAL),
        RiskOverride(action_type=ActionType.CLICK_CONTROL, control_id="lookup_invoice", tier=RiskTier.NON_CRITICAL),
        RiskOverride(action_type=ActionType.CLICK_CONTROL, control_id="lookup_plans", tier=RiskTier.NON_CRITICAL),
        RiskOverride(action_type=ActionType.CLICK_CONTROL, control_id="lookup_account", tier=RiskTier.NON_CRITICAL),
    ]
)  # fmt: skip
