"""The web playground: static files served by the server itself (no CDN, no build step).

``GET /`` and ``GET /playground`` answer ``index.html``; ``/playground/app.js`` and ``/playground/style.css`` the
script and style. Every answer carries a Content-Security-Policy that allows only this origin (no inline script,
no third-party code, no framing), so a key typed into the page can only be sent back to this server. The pages are
open (no bearer key): the page asks for the key and keeps it in the tab's ``sessionStorage``.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import Response

from server.errors import ApiError

HERE = Path(__file__).resolve().parent
FILES = {"index.html": "text/html; charset=utf-8", "app.js": "text/javascript; charset=utf-8",
         "style.css": "text/css; charset=utf-8"}
PATHS = ("/", "/playground", *(f"/playground/{name}" for name in FILES))  # open paths (no bearer key)
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; connect-src 'self'; "
       "base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer",
           "Cache-Control": "no-cache"}

router = APIRouter(include_in_schema=False)


def _file(name: str) -> Response:
    if name not in FILES:
        raise ApiError(404, "not_found", f"/playground/{name} does not exist; files: {', '.join(FILES)}")
    return Response((HERE / name).read_bytes(), media_type=FILES[name], headers=HEADERS)


@router.get("/")
@router.get("/playground")
async def page():
    return _file("index.html")


@router.get("/playground/{name}")
async def asset(name: str):
    return _file(name)
