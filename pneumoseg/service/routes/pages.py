"""``GET /``: the single-page viewer (plain HTML/CSS/JS, no external resources)."""

from __future__ import annotations

import base64
import hashlib
import re
from functools import cache
from importlib.resources import files

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

__all__ = ["index_html", "page_csp", "router"]

router = APIRouter(tags=["viewer"])
_SCRIPT = re.compile(r"<script>(.*?)</script>", re.DOTALL)


@cache
def index_html() -> str:
    """The packaged ``pneumoseg/service/static/index.html``."""
    return files("pneumoseg.service").joinpath("static/index.html").read_text(encoding="utf-8")


@cache
def page_csp() -> str:
    """Content-Security-Policy of the page: its own inline scripts (by SHA-256), same-origin fetches only."""
    hashes = " ".join(f"'sha256-{base64.b64encode(hashlib.sha256(s.encode()).digest()).decode()}'"
                      for s in _SCRIPT.findall(index_html()))
    return ("default-src 'none'; " f"script-src {hashes}; style-src 'unsafe-inline'; img-src 'self' blob: data:; "
            "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
def index() -> HTMLResponse:
    return HTMLResponse(index_html(), headers={"Cache-Control": "no-cache"})
