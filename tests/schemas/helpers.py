"""Small assertions shared by the schema tests."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from pydantic import ValidationError

from schemas import Action, ActionValidationError, ScreenSchema, validate_action


def loc_text(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(part) for part in loc)


def assert_error_names(excinfo: pytest.ExceptionInfo[ValidationError], field: str) -> None:
    """Some error of the ValidationError names ``field`` in its location or its message."""
    errors = excinfo.value.errors()
    assert any(field in loc_text(e["loc"]) or field in e["msg"] for e in errors), (field, errors)


def validation_error(build: Callable[[], object], field: str) -> None:
    """``build()`` raises a pydantic ValidationError that names ``field``."""
    with pytest.raises(ValidationError) as excinfo:
        build()
    assert_error_names(excinfo, field)


def assert_invalid(action: Action, screen: ScreenSchema, field: str) -> None:
    """``validate_action`` rejects ``action`` on ``screen`` and names the action field ``field``."""
    with pytest.raises(ActionValidationError) as excinfo:
        validate_action(action, screen)
    assert excinfo.value.field == field, (action, str(excinfo.value))
    assert str(excinfo.value).startswith(f"{field}: ")
    if field != "type":
        assert field in type(action).model_fields, f"{field!r} is not a field of {type(action).__name__}"
