"""One module per resource: ``health``, ``predict`` (upload + result images), ``pages`` (the viewer), ``browse`` (serve --browse)."""

from __future__ import annotations

from fastapi import APIRouter

from pneumoseg.service.routes import browse, health, pages, predict

__all__ = ["api_router"]

api_router = APIRouter()
api_router.include_router(pages.router)
api_router.include_router(health.router)
api_router.include_router(predict.router)
api_router.include_router(browse.router)
