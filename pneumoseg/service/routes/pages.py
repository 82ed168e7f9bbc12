"""``GET /``: the single-page viewer (plain HTML/CSS/JS, no external resources)."""

from __future__ import annotations

from functools import cache
from importlib.resources import files

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

__all__ = ["index_html", "router"]

router = APIRouter(tags=["viewer"])


@cache
def index_html() -> str:
    """The packaged ``pneumoseg/service/static/index.html``."""
    return files("pneumoseg.service").joinpath("static/index.html").read_text(encoding="utf-8")


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
def index() -> HTMLResponse:
    return HTMLResponse(index_html(), headers={"Cache-Control": "no-cache"})
