"""The demo page: ``GET /ui/`` (and ``/`` redirecting to it) serves a static page that calls the API.

The page is three files shipped in ``api/static`` (no build step, no CDN, works offline). It holds
no data, so it is served without the API key; everything it shows comes from ``POST /extract`` and
``GET /info``, which it calls with the key the user types in (kept in the tab's sessionStorage and
sent as ``X-API-Key``), so it reaches exactly what the API lets that key reach.
Turned off with ``HUGIE_UI=0`` (``hugie serve --no-ui``).
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, HTTPException
from fastapi.responses import RedirectResponse, Response

STATIC_DIR = Path(__file__).with_name("static")

_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
          ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml", ".png": "image/png"}

#: sent with every file of the page: it may only talk to its own origin, and it may not be framed
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                               "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def _load(directory: Path) -> dict[str, tuple[bytes, str]]:
    return {p.name: (p.read_bytes(), _TYPES[p.suffix]) for p in sorted(directory.iterdir())
            if p.is_file() and p.suffix in _TYPES}


def ui_router(directory: Path = STATIC_DIR) -> APIRouter:
    """Routes of the page: ``/`` and ``/ui`` redirect to ``/ui/``; ``/ui/{file}`` serves ``directory``'s files.

    Redirects are relative, so the page also works behind a proxy that mounts the service under a prefix.
    """
    files = _load(directory)  # a handful of small files, read once
    router = APIRouter(include_in_schema=False)

    def serve(name: str) -> Response:
        if name not in files:
            raise HTTPException(404, f"no such file: /ui/{name}")
        body, media_type = files[name]
        return Response(body, media_type=media_type, headers=SECURITY_HEADERS)

    @router.get("/")
    async def root():
        return RedirectResponse("ui/", status_code=307)

    @router.get("/ui")
    async def ui_no_slash():
        return RedirectResponse("ui/", status_code=307)

    @router.get("/ui/")
    async def page():
        return serve("index.html")

    @router.get("/ui/{name}")
    async def asset(name: str):
        return serve(name)

    return router
