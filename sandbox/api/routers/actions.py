"""Actions on a case's current screen: fill, select, toggle, click, chat, transfer, close."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, status

from sandbox.api.deps import Platform, transaction
from sandbox.api.errors import CONFLICT, NOT_FOUND, field_error, unprocessable, unprocessable_response
from sandbox.api.models import ActionRequest
from sandbox.platform import Case, SandboxPlatform
from schemas import Action, ActionValidationError, ButtonControl, ClickControl, UIState

router = APIRouter(prefix="/cases/{case_id}/actions", tags=["actions"])

_UNPROCESSABLE = unprocessable_response(
    "The body is malformed, or the action does not fit the current screen: the error is located "
    "at `['body', 'action', <field>]` (`control_id`, `value`, `option`, `queue`, `resolution` or `type`)"
)


def _submits(case: Case, action: Action) -> bool:
    if not isinstance(action, ClickControl):
        return False
    control = case.spec.schemas[case.screen_id].control(action.control_id)
    return isinstance(control, ButtonControl) and control.submits


def _has_screen_task(platform: SandboxPlatform, case: Case) -> bool:
    """Whether the engine still has the user task of the screen shown. It has not after an engine error while
    submitting (see the 409 for SpiffWorkflow errors): a second submit would then fail inside the platform."""
    ready = platform.open_tasks(case.case_id)
    return bool(ready) and ready[0]["name"] == case.screen_id


@router.post(
    "",
    response_model=UIState,
    summary="Apply an action to the current screen",
    description="Validates the action against the current screen and applies it; returns the new UI state. "
    "Retrying with the same `idempotency_key` returns the current state and applies nothing. 409 when the case "
    "has ended.",
    responses={**NOT_FOUND, **CONFLICT, **_UNPROCESSABLE},
)
def post_action(case_id: str, body: ActionRequest, platform: Platform) -> UIState:
    with transaction(platform):
        case = platform.case(case_id)
        replay = body.idempotency_key is not None and body.idempotency_key in case.idempotency
        if not replay and not case.ended and _submits(case, body.action) and not _has_screen_task(platform, case):
            raise HTTPException(
                status.HTTP_409_CONFLICT,
                f"case {case_id} has no ready task for screen {case.screen_id!r} to submit",
            )
        try:
            return platform.apply(case_id, body.action, body.idempotency_key)
        except ActionValidationError as exc:
            raise unprocessable(
                field_error(
                    ("body", "action", exc.field), exc.reason, "action_invalid", getattr(body.action, exc.field, None)
                )
            ) from None
