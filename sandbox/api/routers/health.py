"""Liveness."""

from __future__ import annotations

from fastapi import APIRouter

from sandbox.api.models import Health

router = APIRouter(tags=["health"])


@router.get("/health", response_model=Health, summary="Liveness check")
def health() -> Health:
    return Health()
