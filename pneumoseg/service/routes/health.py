"""``GET /health``: ``{"status": "ok", "model": ..., ...}`` while the model is loaded (never needs the token).

Details (run folders, post-processing, result store use, limits) are included only when no token
is configured or the request carries it.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from pneumoseg.service.deps import ModelDep
from pneumoseg.service.security import request_authorized

__all__ = ["router"]

router = APIRouter(tags=["health"])


@router.get("/health")
async def health(model: ModelDep, request: Request) -> dict[str, Any]:
    """Liveness and what is being served (503 when no model is loaded)."""
    authorized = await request_authorized(request)
    return {"status": "ok", "auth_required": request.app.state.settings.token is not None,
            **model.describe(detailed=authorized)}
