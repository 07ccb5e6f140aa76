"""A case's task list, the form of a ready task, and completing a task (submitting its form).

Like a BPM task API, a task is addressed by the engine's task id: completing a task id that is no longer ready
(already completed, or never existed) is a 409, which makes a retried completion safe.
"""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, status
from fastapi.exceptions import RequestValidationError

from sandbox.api.deps import Platform, transaction
from sandbox.api.errors import CONFLICT, NOT_FOUND, field_error, unprocessable, unprocessable_response
from sandbox.api.models import TaskOut, TaskScreen
from sandbox.platform import CaseEnded, SandboxPlatform
from schemas import ButtonControl, ClickControl, UIState

router = APIRouter(prefix="/cases/{case_id}/tasks", tags=["tasks"])

_UNPROCESSABLE = unprocessable_response(
    "Required fields are empty: one error per field, located at `['form', <control id>]`"
)


def _tasks(platform: SandboxPlatform, case_id: str) -> list[TaskOut]:
    return [TaskOut(**task) for task in platform.open_tasks(case_id)]


@router.get("", response_model=list[TaskOut], summary="List the case's ready user tasks", responses=NOT_FOUND)
def list_tasks(case_id: str, platform: Platform) -> list[TaskOut]:
    with transaction(platform):
        return _tasks(platform, case_id)


@router.get(
    "/{task_id}/screen",
    response_model=TaskScreen,
    summary="Read a ready task's form",
    description="The task's screen schema with the form's current values. 404 for a task that is not ready.",
    responses=NOT_FOUND,
)
def get_task_screen(case_id: str, task_id: str, platform: Platform) -> TaskScreen:
    with transaction(platform):
        case = platform.case(case_id)
        task = next((t for t in _tasks(platform, case_id) if t.task_id == task_id), None)
        if task is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"task {task_id!r} is not a ready task of case {case_id!r}")
        on_screen = task.name == case.screen_id
        return TaskScreen(
            case_id=case.case_id,
            task_id=task.task_id,
            screen=case.spec.schemas[task.name],
            values=dict(case.values) if on_screen else {},
        )


@router.post(
    "/{task_id}/complete",
    response_model=UIState,
    summary="Complete a task (submit its form)",
    description="Clicks the screen's submit button. 409 when the task is not the case's ready task or its screen "
    "has no submit button (the case is then finished from the chat: close or transfer). 422 when required fields "
    "are empty; nothing changes then.",
    responses={**NOT_FOUND, **CONFLICT, **_UNPROCESSABLE},
)
def complete_task(case_id: str, task_id: str, platform: Platform) -> UIState:
    with transaction(platform):  # the checks below must still hold when the click lands
        case = platform.case(case_id)
        if case.ended:
            raise CaseEnded(f"case {case_id} has ended ({case.ended})")
        ready = _tasks(platform, case_id)
        # The platform shows (and submits) the first ready task; any other id is stale or unknown.
        if not ready or ready[0].task_id != task_id or ready[0].name != case.screen_id:
            raise HTTPException(
                status.HTTP_409_CONFLICT,
                f"task {task_id!r} is not the ready task of case {case_id!r} "
                f"(ready: {', '.join(t.task_id for t in ready) or 'none'})",
            )
        schema = case.spec.schemas[case.screen_id]
        submit = next(
            (c for c in schema.controls if isinstance(c, ButtonControl) and c.submits and c.enabled),
            None,
        )
        if submit is None:
            raise HTTPException(
                status.HTTP_409_CONFLICT,
                f"screen {schema.screen_id!r} has no submit button: finish the case from the chat",
            )
        missing = platform.missing_required(case_id)
        if missing:
            raise _missing_error(missing, schema.screen_id)
        state = platform.apply(case_id, ClickControl(control_id=submit.id))
        # Our check mirrors the platform's; should they ever differ, the platform's refusal still becomes a 422.
        form_errors = state.panels.get("form_errors")
        if form_errors is not None:
            raise _missing_error(list(form_errors.fields), schema.screen_id)
        return state


def _missing_error(fields: list[str], screen_id: str) -> RequestValidationError:
    return unprocessable(
        *(field_error(("form", f), f"Field required by screen {screen_id!r}", "missing") for f in fields)
    )
