"""The app factory: ``create_app(run_dirs, settings) -> FastAPI`` with the model loaded once."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from pneumoseg import __version__
from pneumoseg.errors import PneumosegError
from pneumoseg.predict import Predictor
from pneumoseg.service.inference import ServiceModel, UnsupportedMediaError
from pneumoseg.service.limits import BodySizeLimit
from pneumoseg.service.routes import api_router
from pneumoseg.service.settings import ServiceSettings

__all__ = ["create_app"]


def _unsupported(_: Request, exc: Exception) -> JSONResponse:
    return JSONResponse({"detail": str(exc), "error": type(exc).__name__}, status_code=415)


def _unreadable(_: Request, exc: Exception) -> JSONResponse:
    return JSONResponse({"detail": str(exc), "error": type(exc).__name__}, status_code=422)


def create_app(run_dirs: Sequence[str | os.PathLike[str]], settings: ServiceSettings | None = None,
               predictor: Predictor | None = None) -> FastAPI:
    """Load the runs (an ensemble when several) into a Predictor and build the app around it.

    ``predictor`` may be passed pre-loaded (tests, benchmarks), else it is built from ``run_dirs``
    with ``settings.checkpoint/device/tta``. Loading errors (missing run, bad checkpoint) raise
    here, before any server starts. ``app.state.model`` is the ServiceModel, ``app.state.settings``
    the settings.
    """
    settings = settings or ServiceSettings()
    runs = [Path(r) for r in run_dirs]
    if predictor is None:
        predictor = Predictor(runs, checkpoint=settings.checkpoint, tta=settings.tta, device=settings.device,
                              batch_size=1)
    app = FastAPI(title=settings.title, version=__version__,
                  description="Pneumothorax segmentation of chest radiographs (SIIM-ACR): upload a DICOM or "
                              "PNG to POST /predict; open / for the viewer.")
    app.state.settings = settings
    app.state.model = ServiceModel(predictor, runs, cache_size=settings.cache_size)
    app.add_exception_handler(UnsupportedMediaError, _unsupported)
    app.add_exception_handler(PneumosegError, _unreadable)
    app.add_middleware(BodySizeLimit, limit_bytes=settings.max_upload_bytes)
    app.include_router(api_router)
    return app
