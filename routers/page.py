"""The booking page: `GET /` serves static/index.html; its script and style sheet live under /static/."""

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"

# The page holds a bearer token: it may load code only from this origin, talk only to this
# origin, and not be framed by another site.
PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; "
        "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-cache",
}

router = APIRouter(include_in_schema=False)


@router.get("/")
async def index() -> FileResponse:
    """The booking page."""
    return FileResponse(STATIC_DIR / "index.html", headers=PAGE_HEADERS)


router.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
