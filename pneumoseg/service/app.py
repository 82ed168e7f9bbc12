"""The app factory: ``create_app(run_dirs, settings) -> FastAPI`` with the model loaded once."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from pneumoseg import __version__
from pneumoseg.errors import PneumosegError
from pneumoseg.inference.predictor import Predictor
from pneumoseg.service.browse import BrowseFolder, BrowseNameError
from pneumoseg.service.inference import ImageTooLargeError, ServiceModel, UnsupportedMediaError
from pneumoseg.service.limits import BodySizeLimit
from pneumoseg.service.routes import api_router
from pneumoseg.service.routes.pages import page_csp
from pneumoseg.service.security import HostGuard, SecurityHeaders, allowed_host_set
from pneumoseg.service.settings import ServiceSettings
from pneumoseg.service.uploads import remove_stale_uploads

__all__ = ["create_app"]


def _error(status: int):
    def handler(_: Request, exc: Exception) -> JSONResponse:
        return JSONResponse({"detail": str(exc), "error": type(exc).__name__}, status_code=status)

    return handler


def create_app(run_dirs: Sequence[str | os.PathLike[str]], settings: ServiceSettings | None = None,
               predictor: Predictor | None = None) -> FastAPI:
    """Load the runs (an ensemble when several) into a Predictor and build the app around it.

    ``predictor`` may be passed pre-loaded (tests, benchmarks), else it is built from ``run_dirs``
    with ``settings.checkpoint/device/tta/backend``. Loading errors (missing run, bad checkpoint, a bad
    ``--browse`` folder or ``--truth`` file) raise here, before any server starts. Upload folders left by older versions in the temporary
    directory are removed (``app.state.stale_uploads_removed`` says how many). ``app.state.model``
    is the ServiceModel, ``app.state.settings`` the settings, ``app.state.browse`` the BrowseFolder
    (None without ``settings.browse_dir``).
    """
    settings = settings or ServiceSettings()
    runs = [Path(r) for r in run_dirs]
    if predictor is None:
        predictor = Predictor(runs, checkpoint=settings.checkpoint, tta=settings.tta, device=settings.device,
                              batch_size=1, backend=settings.backend)
    browse = (BrowseFolder(settings.browse_dir, settings.truth, settings.browse_max_files)
              if settings.browse_dir is not None else None)
    # No /docs or /redoc: FastAPI's pages load Swagger UI / ReDoc from a CDN, blank offline.
    app = FastAPI(title=settings.title, version=__version__, docs_url=None, redoc_url=None,
                  description="Pneumothorax segmentation of chest radiographs (SIIM-ACR): upload a DICOM or "
                              "PNG to POST /predict; open / for the viewer. The schema is at /openapi.json.")
    app.state.settings = settings
    app.state.browse = browse
    app.state.model = ServiceModel(predictor, runs, settings)
    app.state.stale_uploads_removed = remove_stale_uploads()
    app.add_exception_handler(UnsupportedMediaError, _error(415))
    app.add_exception_handler(BrowseNameError, _error(404))
    app.add_exception_handler(ImageTooLargeError, _error(413))
    app.add_exception_handler(PneumosegError, _error(422))
    app.add_middleware(BodySizeLimit, limit_bytes=settings.max_upload_bytes)
    app.add_middleware(SecurityHeaders, page_csp=page_csp())
    # Added last = outermost: a foreign Host or Origin is refused before any other work.
    app.add_middleware(HostGuard, allowed=allowed_host_set(settings.bind_host, settings.allowed_hosts))
    app.include_router(api_router)
    return app
