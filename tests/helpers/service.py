"""The service for a run on a real (background uvicorn) server, as the service and browser tests start it."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pneumoseg.inference.predictor import Predictor
from pneumoseg.service import ServiceSettings, create_app, serve_in_background


@contextmanager
def serve_run(run: Path, settings: ServiceSettings) -> Iterator[str]:
    """``create_app([run], settings)`` with a CPU predictor (batch 1) served in the background; yields its URL."""
    predictor = Predictor([run], device="cpu", batch_size=1)
    with serve_in_background(create_app([run], settings, predictor=predictor)) as url:
        yield url
