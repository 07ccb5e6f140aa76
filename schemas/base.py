"""The base of every payload: strict fields and a schema version that is checked on input."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

SCHEMA_VERSION = "1.0"
_MAJOR = SCHEMA_VERSION.split(".")[0]


class Strict(BaseModel):
    """A nested model: unknown fields are errors, so a typo in a producer never passes silently."""

    model_config = ConfigDict(extra="forbid")


class Payload(Strict):
    """A top-level message or record. Readers accept any minor version of their own major version."""

    schema_version: str = SCHEMA_VERSION

    @field_validator("schema_version")
    @classmethod
    def _same_major(cls, value: str) -> str:
        major = value.split(".")[0]
        if major != _MAJOR:
            raise ValueError(f"unsupported schema version {value!r}; this reader understands {_MAJOR}.x")
        return value


def validation_message(error: ValidationError) -> str:
    """``field: message`` of the first error: what a reader needs to fix the producer."""
    first = error.errors()[0]
    loc = ".".join(str(part) for part in first["loc"]) or "(record)"
    return f"{loc}: {first['msg']}"
