"""Trace and TraceStep: one case worked by an operator, step by step (state, action)."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import Field, model_validator

from schemas.actions import Action
from schemas.base import Payload, Strict
from schemas.state import UIState


class TraceSource(StrEnum):
    SANDBOX = "sandbox"
    XES = "xes"
    CSV = "csv"
    UILOG = "uilog"
    SERVICE = "service"


class TraceStep(Strict):
    step: int = Field(ge=0)
    state: UIState
    action: Action
    operator_id: str | None = None
    timestamp: datetime | None = None
    duration_s: float | None = Field(default=None, ge=0.0, description="Operator time spent on this action.")
    bayes_p: float | None = Field(
        default=None,
        ge=0.0,
        le=1.0,
        description="Probability that the best possible policy, seeing only the state, predicts this step's "
        "action exactly (computed by the sandbox from its own generative model; None when unknown).",
    )
    bayes_type_p: float | None = Field(default=None, ge=0.0, le=1.0, description="The same for the action type alone.")
    bayes_hit: bool | None = Field(
        default=None,
        description="Whether the best possible policy's prediction (the most probable action given the state) is "
        "this step's action exactly. Its mean over a group of steps chosen by their action, such as the steps of "
        "one action type, is that policy's accuracy there, which the mean of bayes_p is not.",
    )
    bayes_type_hit: bool | None = Field(default=None, description="The same for the action type alone.")


class Trace(Payload):
    trace_id: str = Field(min_length=1)
    source: TraceSource
    case_id: str = Field(min_length=1)
    process_id: str = Field(min_length=1)
    steps: list[TraceStep] = Field(default_factory=list)
    attributes: dict[str, Any] = Field(
        default_factory=dict, description="Case-level metadata (scenario, seed, customer id, split keys)."
    )
    ground_truth: dict[str, Any] = Field(
        default_factory=dict,
        description="Hidden truth of the case (sandbox only). Never shown to a policy; used for outcome quality.",
    )

    @model_validator(mode="after")
    def _ordered(self) -> Trace:
        for i, step in enumerate(self.steps):
            if step.step != i:
                raise ValueError(f"steps.{i}.step: expected {i}, got {step.step}")
        return self
