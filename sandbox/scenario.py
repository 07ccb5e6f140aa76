"""Scenario knobs: process mix, a long-tail process, a drift event, a process held out as new, noise levels, and
the world's difficulty (``sandbox.world.World``: calibrated by default, ``classic`` before the calibration)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

from sandbox.world import World

DEFAULT_MIX: dict[str, float] = {
    "delivery_status": 0.25,
    "refund_damaged": 0.20,
    "address_change": 0.15,
    "plan_change": 0.15,
    "account_closure": 0.10,
    "billing_dispute": 0.13,
    "warranty_claim": 0.02,  # the long tail: few cases, so its slices stay in copilot mode
}


class Drift(BaseModel):
    """A business rule that changes mid-stream: from case index ``at_case`` on, ``rule`` takes ``value``."""

    model_config = ConfigDict(extra="forbid")
    rule: str = "refund_limit"
    at_case: int = Field(ge=0)
    value: float


class Scenario(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = "default"
    mix: dict[str, float] = Field(default_factory=lambda: dict(DEFAULT_MIX))
    held_out: list[str] = Field(default_factory=list, description="Processes excluded from the mix ('new').")
    rules: dict[str, float] = Field(default_factory=lambda: {"refund_limit": 150.0})
    drift: Drift | None = None
    typo_rate: float = Field(default=0.04, ge=0.0, le=0.5)
    operators: int = Field(default=12, ge=1)
    world: World = Field(default_factory=World, description="difficulty and review model (calibrated default)")

    @model_validator(mode="after")
    def _known_processes(self) -> Scenario:
        from sandbox.processes.registry import PROCESSES

        for pid in [*self.mix, *self.held_out]:
            if pid not in PROCESSES:
                raise ValueError(f"mix: unknown process {pid!r} (known: {', '.join(sorted(PROCESSES))})")
        if not any(w > 0 for p, w in self.mix.items() if p not in self.held_out):
            raise ValueError("mix: no process left with a positive weight")
        return self

    def rules_at(self, case_index: int) -> dict[str, float]:
        rules = dict(self.rules)
        if self.drift is not None and case_index >= self.drift.at_case:
            rules[self.drift.rule] = self.drift.value
        return rules

    def weights(self) -> tuple[list[str], list[float]]:
        names = [p for p, w in self.mix.items() if w > 0 and p not in self.held_out]
        return names, [self.mix[p] for p in names]


SCENARIOS: dict[str, Scenario] = {
    "default": Scenario(),
    "classic": Scenario(name="classic", world=World.classic()),
    "drift": Scenario(name="drift", drift=Drift(at_case=1000, value=60.0)),
    "new_process": Scenario(name="new_process", held_out=["warranty_claim"]),
    "long_tail": Scenario(name="long_tail", mix={**DEFAULT_MIX, "warranty_claim": 0.005}),
    "only_new": Scenario(name="only_new", mix={"warranty_claim": 1.0}),
}


def scenario_by_name(name: str) -> Scenario:
    try:
        return SCENARIOS[name]
    except KeyError:
        raise ValueError(f"scenario: unknown {name!r} (known: {', '.join(SCENARIOS)})") from None
