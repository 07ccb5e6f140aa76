"""Request and response bodies of the task API. Screens and UI states are the project's own schema models."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from sandbox.processes.registry import PROCESSES
from schemas import Action, ScreenSchema
from schemas.state import FieldValue

CaseStatus = Literal["open", "closed", "transferred", "stuck"]


class _In(BaseModel):
    # A typo in a client's body (``idempotencyKey``) must be an error, not a silently ignored field.
    model_config = ConfigDict(extra="forbid")


class Health(BaseModel):
    status: Literal["ok"] = "ok"


class ProcessOut(BaseModel):
    process_id: str
    title: str
    screen_ids: list[str] = Field(description="The screens (BPMN user tasks) of the process.")


class CreateCase(_In):
    process_id: str | None = Field(
        default=None, description="The process to start; null draws one from the scenario's process mix."
    )

    @field_validator("process_id")
    @classmethod
    def _known(cls, value: str | None) -> str | None:
        # Checked here rather than left to the platform: a refused create must not use up a case index, or every
        # later case of the seeded stream would shift.
        if value is not None and value not in PROCESSES:
            raise ValueError(f"unknown process {value!r} (known: {', '.join(sorted(PROCESSES))})")
        return value


class CaseCreated(BaseModel):
    case_id: str
    session_id: str
    process_id: str


class CaseSummary(BaseModel):
    case_id: str
    session_id: str
    process_id: str
    screen_id: str = Field(description="The current screen; the last one for an ended case.")
    step: int = Field(description="Actions applied so far.")
    status: CaseStatus


class TaskOut(BaseModel):
    task_id: str = Field(description="The engine's id of this task instance; it changes when the task is redone.")
    name: str = Field(description="The task's name in the process: the id of its screen.")
    title: str


class TaskScreen(BaseModel):
    case_id: str
    task_id: str
    screen: ScreenSchema
    values: dict[str, FieldValue] = Field(description="The form's current values (empty for a task not on screen).")


class ActionRequest(_In):
    action: Action
    idempotency_key: str | None = Field(
        default=None,
        min_length=1,
        max_length=200,
        description="A key seen before on this case makes the call return the current state and apply nothing.",
    )


class Outcome(BaseModel):
    case_id: str
    status: CaseStatus
    resolution_code: str | None = Field(description="The resolution code or transfer queue the case ended with.")
    correct: bool = Field(description="Whether the outcome matches the case's hidden truth.")
    fields: dict[str, FieldValue] = Field(description="The decisive form values, as submitted.")
