"""The sandbox's risk file (``sandbox/risk.json``): which actions of its processes may never run without a human.

Closing an account is irreversible, and the retention offer commits the business to a discount: both are
always-ask. Reading screens (lookups) is non-critical; everything else is critic-gated. A deployment points
``AUTOPILOT_RISK_FILE`` at its own file of the same form (``schemas.risk.RiskPolicy``).
"""

from __future__ import annotations

from pathlib import Path

from schemas.risk import load_risk_policy

RISK_FILE = Path(__file__).with_name("risk.json")
DEFAULT_RISK_POLICY = load_risk_policy(RISK_FILE)
