"""The two pages: the operator copilot sidebar and the supervisor dashboard. Static HTML and JavaScript; the
pages ask for a token, keep it in the tab's sessionStorage and call the API with it (never in a URL)."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, HTTPException, status
from fastapi.responses import FileResponse, RedirectResponse

PAGES = Path(__file__).resolve().parent.parent / "pages"

router = APIRouter(tags=["pages"], include_in_schema=False)


@router.get("/")
def root() -> RedirectResponse:
    return RedirectResponse("/ui/dashboard")


@router.get("/ui/sidebar")
def sidebar() -> FileResponse:
    return FileResponse(PAGES / "sidebar.html", media_type="text/html")


@router.get("/ui/dashboard")
def dashboard() -> FileResponse:
    return FileResponse(PAGES / "dashboard.html", media_type="text/html")


@router.get("/ui/static/{name}")
def static(name: str) -> FileResponse:
    path = (PAGES / name).resolve()
    if path.parent != PAGES or not path.is_file() or path.suffix not in {".js", ".css"}:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "name: no such file")
    media = "text/javascript" if path.suffix == ".js" else "text/css"
    return FileResponse(path, media_type=media)
