"""The viewer service (``pneumoseg serve``): FastAPI app, routes and the single-page viewer.

``create_app(run_dirs, settings)`` loads the model once; ``serve_in_background`` runs it with
uvicorn on a thread (tests, benchmarks).
"""

from __future__ import annotations

from pneumoseg.service.app import create_app
from pneumoseg.service.server import serve_in_background
from pneumoseg.service.settings import ServiceSettings

__all__ = ["ServiceSettings", "create_app", "serve_in_background"]
