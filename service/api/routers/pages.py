"""The two pages: the operator copilot sidebar and the supervisor dashboard. Static HTML and JavaScript; the
pages ask for a token, keep it in the tab's sessionStorage and call the API with it (never in a URL)."""

from __future__ import annotations

import base64
import hashlib
import re
from pathlib import Path

from fastapi import APIRouter, HTTPException, status
from fastapi.responses import FileResponse, RedirectResponse

PAGES = Path(__file__).resolve().parent.parent / "pages"
_INLINE_SCRIPT = re.compile(r"<script>(.*?)</script>", re.DOTALL)


def _script_hashes(*names: str) -> str:
    """CSP source expressions for the pages' inline scripts: those scripts run, nothing injected does."""
    hashes = []
    for name in names:
        for body in _INLINE_SCRIPT.findall((PAGES / name).read_text()):
            digest = base64.b64encode(hashlib.sha256(body.encode()).digest()).decode()
            hashes.append(f"'sha256-{digest}'")
    return " ".join(hashes)


# Scripts from this origin (and the pages' own inline ones, by hash) only; no framing (clickjacking); the API
# and the event stream are same-origin. Inline style attributes stay allowed: they carry no code.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; "
    f"script-src 'self' {_script_hashes('sidebar.html', 'dashboard.html')}; "
    "style-src 'self' 'unsafe-inline'; img-src 'self' data: blob:; connect-src 'self'; "
    "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
PAGE_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}

router = APIRouter(tags=["pages"], include_in_schema=False)


@router.get("/")
def root() -> RedirectResponse:
    return RedirectResponse("/ui/dashboard")


@router.get("/ui/sidebar")
def sidebar() -> FileResponse:
    return FileResponse(PAGES / "sidebar.html", media_type="text/html", headers=PAGE_HEADERS)


@router.get("/ui/dashboard")
def dashboard() -> FileResponse:
    return FileResponse(PAGES / "dashboard.html", media_type="text/html", headers=PAGE_HEADERS)


@router.get("/ui/static/{name}")
def static(name: str) -> FileResponse:
    path = (PAGES / name).resolve()
    if path.parent != PAGES or not path.is_file() or path.suffix not in {".js", ".css"}:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "name: no such file")
    media = "text/javascript" if path.suffix == ".js" else "text/css"
    return FileResponse(path, media_type=media, headers={"X-Content-Type-Options": "nosniff"})
