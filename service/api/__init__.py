"""The FastAPI service: copilot, operator inbox, sessions, supervisor, health and metrics, plus the two pages.

``create_app`` (``service.api.app``) builds the application around an ``AutopilotService``
(``service.api.context``); ``autopilot serve`` runs it with uvicorn. See docs/operations.md.
"""
