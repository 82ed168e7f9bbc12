"""``GET /health``: ``{"status": "ok", "model": ..., "runs": [...], ...}`` while the model is loaded."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from pneumoseg.service.deps import ModelDep

__all__ = ["router"]

router = APIRouter(tags=["health"])


@router.get("/health")
def health(model: ModelDep) -> dict[str, Any]:
    """Liveness and what is being served (503 when no model is loaded)."""
    return {"status": "ok", **model.describe()}
