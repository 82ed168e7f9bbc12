"""Service fixtures: the briefly trained run as a Predictor, an in-process client, a real uvicorn server."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient

from pneumoseg.inference.predictor import Predictor
from pneumoseg.service import ServiceSettings, create_app, serve_in_background
from pneumoseg.service.settings import ALLOWED_HOSTS_ENV


@pytest.fixture(scope="session", autouse=True)
def _allow_testclient_host() -> Iterator[None]:
    """TestClient sends ``Host: testserver``: allow it through the documented setting (its default
    is read from $PNEUMOSEG_ALLOWED_HOSTS), as a deployment would allow its own name."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(ALLOWED_HOSTS_ENV, "testserver")
        yield


@pytest.fixture(scope="module")
def predictor(trained_run: Path) -> Predictor:
    torch.set_num_threads(1)
    return Predictor([trained_run], device="cpu", batch_size=1)


@pytest.fixture(scope="module")
def client(trained_run: Path, predictor: Predictor) -> Iterator[TestClient]:
    with TestClient(create_app([trained_run], ServiceSettings(), predictor=predictor)) as c:
        yield c


@pytest.fixture(scope="module")
def server(trained_run: Path) -> Iterator[str]:
    torch.set_num_threads(1)
    predictor = Predictor([trained_run], device="cpu", batch_size=1)
    with serve_in_background(create_app([trained_run], ServiceSettings(), predictor=predictor)) as url:
        yield url
