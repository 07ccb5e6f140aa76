"""The process definitions the platform can start."""

from __future__ import annotations

from fastapi import APIRouter

from sandbox.api.models import ProcessOut
from sandbox.processes.registry import PROCESSES

router = APIRouter(prefix="/processes", tags=["processes"])


@router.get("", response_model=list[ProcessOut], summary="List the deployed processes")
def list_processes() -> list[ProcessOut]:
    return [
        ProcessOut(process_id=spec.process_id, title=spec.title, screen_ids=list(spec.schemas))
        for spec in PROCESSES.values()
    ]
