"""RiskPolicy.tier_for: the most specific matching override wins; defaults apply otherwise."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas import ActionType, RiskPolicy, RiskTier, SliceKey
from schemas.risk import RiskOverride
from tests.schemas import strategies as s

PIDS = st.sampled_from(["refund", "kyc"])
CIDS = st.sampled_from(["amount", "iban"])


def matches(rule: RiskOverride, process_id: str, action_type: ActionType, control_id: str | None) -> bool:
    return (
        rule.process_id in (None, process_id)
        and rule.action_type in (None, action_type)
        and rule.control_id in (None, control_id)
    )


def specificity(rule: RiskOverride) -> int:
    return sum(x is not None for x in (rule.process_id, rule.action_type, rule.control_id))


def test_defaults_without_overrides() -> None:
    policy = RiskPolicy()
    for action_type in ActionType:
        assert policy.tier_for("any", action_type) == RiskTier.CRITICAL
        assert policy.tier_for("any", action_type, "ctl") == RiskTier.CRITICAL


def test_custom_defaults_and_fallback() -> None:
    policy = RiskPolicy(default_tiers={ActionType.CLICK_CONTROL: RiskTier.NON_CRITICAL})
    assert policy.tier_for("p", ActionType.CLICK_CONTROL) == RiskTier.NON_CRITICAL
    assert policy.tier_for("p", ActionType.CLOSE_CHAT) == RiskTier.CRITICAL  # missing from default_tiers


def test_non_matching_overrides_leave_defaults() -> None:
    policy = RiskPolicy(
        default_tiers={ActionType.FILL_FIELD: RiskTier.NON_CRITICAL},
        overrides=[
            RiskOverride(process_id="kyc", tier=RiskTier.ALWAYS_ASK),
            RiskOverride(action_type=ActionType.CLOSE_CHAT, tier=RiskTier.ALWAYS_ASK),
            RiskOverride(control_id="iban", tier=RiskTier.ALWAYS_ASK),
        ],
    )
    assert policy.tier_for("refund", ActionType.FILL_FIELD, "amount") == RiskTier.NON_CRITICAL
    assert policy.tier_for("refund", ActionType.FILL_FIELD) == RiskTier.NON_CRITICAL
    assert policy.tier_for("refund", ActionType.FILL_FIELD, "iban") == RiskTier.ALWAYS_ASK


ORDERED_RULES = [
    RiskOverride(action_type=ActionType.FILL_FIELD, tier=RiskTier.NON_CRITICAL),
    RiskOverride(process_id="kyc", action_type=ActionType.FILL_FIELD, tier=RiskTier.CRITICAL),
    RiskOverride(process_id="kyc", action_type=ActionType.FILL_FIELD, control_id="iban", tier=RiskTier.ALWAYS_ASK),
]


@pytest.mark.parametrize("order", [[0, 1, 2], [2, 1, 0], [1, 2, 0], [2, 0, 1]])
def test_most_specific_wins_in_any_order(order: list[int]) -> None:
    policy = RiskPolicy(overrides=[ORDERED_RULES[i] for i in order])
    assert policy.tier_for("kyc", ActionType.FILL_FIELD, "iban") == RiskTier.ALWAYS_ASK
    assert policy.tier_for("kyc", ActionType.FILL_FIELD, "amount") == RiskTier.CRITICAL
    assert policy.tier_for("kyc", ActionType.FILL_FIELD) == RiskTier.CRITICAL
    assert policy.tier_for("refund", ActionType.FILL_FIELD, "iban") == RiskTier.NON_CRITICAL
    assert policy.tier_for("refund", ActionType.SELECT_OPTION, "iban") == RiskTier.CRITICAL  # default


@settings(max_examples=100, deadline=None)
@given(
    rules=st.lists(s.risk_overrides(PIDS, CIDS), max_size=8),
    defaults=st.dictionaries(st.sampled_from(list(ActionType)), st.sampled_from(list(RiskTier))),
    process_id=PIDS,
    action_type=st.sampled_from(list(ActionType)),
    control_id=st.none() | CIDS,
    data=st.data(),
)
def test_tier_for_matches_brute_force(
    rules: list[RiskOverride],
    defaults: dict[ActionType, RiskTier],
    process_id: str,
    action_type: ActionType,
    control_id: str | None,
    data: st.DataObject,
) -> None:
    policy = RiskPolicy(default_tiers=defaults, overrides=rules)
    tier = policy.tier_for(process_id, action_type, control_id)
    matching = [r for r in rules if matches(r, process_id, action_type, control_id)]
    if not matching:
        assert tier == defaults.get(action_type, RiskTier.CRITICAL)
        return
    top = max(specificity(r) for r in matching)
    best = {r.tier for r in matching if specificity(r) == top}
    assert tier in best
    if len(best) == 1:
        # an unambiguous answer does not depend on the order of the rules
        shuffled = data.draw(st.permutations(rules))
        assert (
            RiskPolicy(default_tiers=defaults, overrides=shuffled).tier_for(process_id, action_type, control_id) == tier
        )


def test_slice_key_str() -> None:
    assert str(SliceKey(process_id="refund", action_type=ActionType.CLOSE_CHAT)) == "refund/close_chat"
    assert (
        SliceKey.model_validate({"process_id": "refund", "action_type": "close_chat"}).action_type
        is ActionType.CLOSE_CHAT
    )


def test_risk_policy_json_keys_are_action_types() -> None:
    policy = RiskPolicy.model_validate_json('{"default_tiers": {"close_chat": "always_ask"}}')
    assert policy.default_tiers == {ActionType.CLOSE_CHAT: RiskTier.ALWAYS_ASK}
    with pytest.raises(ValueError, match="default_tiers"):
        RiskPolicy.model_validate_json('{"default_tiers": {"teleport": "always_ask"}}')
