"""``Annotated[..., Depends()]`` aliases the routes take: the loaded model and the settings."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, HTTPException, Request

from pneumoseg.service.inference import ServiceModel
from pneumoseg.service.settings import ServiceSettings

__all__ = ["ModelDep", "SettingsDep", "get_model", "get_settings"]


def get_model(request: Request) -> ServiceModel:
    """The model loaded by ``create_app``; 503 while there is none."""
    model = getattr(request.app.state, "model", None)
    if model is None:
        raise HTTPException(status_code=503, detail="model not loaded")
    return model


def get_settings(request: Request) -> ServiceSettings:
    return request.app.state.settings


ModelDep = Annotated[ServiceModel, Depends(get_model)]
SettingsDep = Annotated[ServiceSettings, Depends(get_settings)]
