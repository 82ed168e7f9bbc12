"""Fixtures for the PACS tests: a small untrained run, reference predictions, a real Orthanc."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest

from pneumoseg.errors import ConfigError
from pneumoseg.pacs import box
from pneumoseg.pacs.box import free_port

__all__ = ["THRESHOLD", "Orthanc", "free_port"]

THRESHOLD = 0.55  #: the untrained seeded net's probabilities are ~0.54-0.56: partial masks, never empty or full


@pytest.fixture(scope="session")
def pacs_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The seed U-Net at 64 px, untrained (seeded weights, PyTorch's own head init: ``output_prior`` null,
    since the 0.01 foreground prior would make every mask empty), threshold 0.55 in its config."""
    import torch

    from pneumoseg.config import load_config
    from pneumoseg.training.run_folder import init_run

    with torch.random.fork_rng():
        torch.manual_seed(0)
        return init_run(load_config("seed_unet", ["model.name=unet", "data.size=64", "model.output_prior=null",
                                                  f"postprocess.threshold={THRESHOLD}"]),
                        tmp_path_factory.mktemp("pacs") / "run")


class Orthanc(box.Orthanc):
    """The PACS box's Orthanc (``pneumoseg.pacs.box.start_orthanc``) with two test helpers."""

    def upload(self, files: Iterable[Path]) -> list[str]:  # type: ignore[override]
        """POST each file to /instances; their Orthanc ids."""
        return [answer["ID"] for answer in super().upload(files)]

    def instances(self, modality: str) -> list[dict[str, Any]]:
        """Every instance of a series of ``modality`` (expanded)."""
        found = []
        for series in self.rest("POST", "/tools/find", {"Level": "Series", "Query": {"Modality": modality},
                                                         "Expand": True}):
            found += [self.rest("GET", f"/instances/{i}") for i in series["Instances"]]
        return found


@pytest.fixture
def orthanc(tmp_path: Path) -> Iterator[Orthanc]:
    """A fresh Orthanc (DICOMweb plugin on) on free loopback ports, its storage in tmp; killed afterwards."""
    try:
        box.find_orthanc()
    except ConfigError as exc:
        pytest.skip(str(exc))
    started = box.start_orthanc(tmp_path, timeout=20)
    server = Orthanc(*(getattr(started, f.name) for f in fields(started)))
    try:
        yield server
    finally:
        server.process.kill()  # its storage is thrown away with tmp_path: no need for a clean shutdown
        server.process.wait()
