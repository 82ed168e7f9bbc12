"""Service fixtures: the briefly trained run as a Predictor, an in-process client, a real uvicorn server;
one torch thread in every module (two shared cores)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from pneumoseg.inference.predictor import Predictor
from pneumoseg.service import ServiceSettings, create_app
from pneumoseg.service.settings import ALLOWED_HOSTS_ENV
from tests.helpers.service import serve_run
from tests.helpers.threads import one_thread_per_module  # noqa: F401  (autouse: one torch thread)


@pytest.fixture(scope="session", autouse=True)
def _allow_testclient_host() -> Iterator[None]:
    """TestClient sends ``Host: testserver``: allow it through the documented setting (its default
    is read from $PNEUMOSEG_ALLOWED_HOSTS), as a deployment would allow its own name."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(ALLOWED_HOSTS_ENV, "testserver")
        yield


@pytest.fixture(scope="module")
def predictor(trained_run: Path) -> Predictor:
    return Predictor([trained_run], device="cpu", batch_size=1)


@pytest.fixture(scope="module")
def client(trained_run: Path, predictor: Predictor) -> Iterator[TestClient]:
    with TestClient(create_app([trained_run], ServiceSettings(), predictor=predictor)) as c:
        yield c


@pytest.fixture(scope="module")
def server(trained_run: Path) -> Iterator[str]:
    with serve_run(trained_run, ServiceSettings()) as url:
        yield url
