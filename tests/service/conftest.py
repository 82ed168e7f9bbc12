"""A real uvicorn server on 127.0.0.1 serving the briefly trained run (one per test module)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from pneumoseg.predict import Predictor
from pneumoseg.service import ServiceSettings, create_app, serve_in_background


@pytest.fixture(scope="module")
def server(trained_run: Path) -> Iterator[str]:
    torch.set_num_threads(1)
    predictor = Predictor([trained_run], device="cpu", batch_size=1)
    with serve_in_background(create_app([trained_run], ServiceSettings(), predictor=predictor)) as url:
        yield url
