"""The sandbox's REST task API: what a real BPM platform's task API looks like from the adapter's side.

``create_app`` builds the FastAPI application; ``autopilot sandbox serve`` runs it with uvicorn. Routes live under
``/api/v1``, one router per resource (see ``sandbox.api.routers``).
"""

from sandbox.api.app import API_PREFIX, create_app

__all__ = ["API_PREFIX", "create_app"]
