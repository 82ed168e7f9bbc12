"""``serve --browse`` over the PNG layout: its masks read by the layout's one positivity rule, as
prepare, explore and evaluate read them (a 0/1 mask is positive, not empty)."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from pneumoseg.data.explore import explore_png
from pneumoseg.data.prepare import prepare_png
from pneumoseg.inference.predictor import Predictor
from pneumoseg.service import ServiceSettings, create_app


@pytest.fixture(scope="module")
def layout(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, np.ndarray]]:
    """images/ + masks/ with the same region stored as 0/1, as 0/255, and a grey 0/200 mask."""
    root = tmp_path_factory.mktemp("layout")
    (root / "images").mkdir()
    (root / "masks").mkdir()
    region = np.zeros((48, 64), dtype=bool)
    region[10:30, 20:40] = True
    stored = {"zero_one": region.astype(np.uint8), "zero_255": region.astype(np.uint8) * 255,
              "zero_200": region.astype(np.uint8) * 200}
    rng = np.random.default_rng(3)
    for name, mask in stored.items():
        Image.fromarray(rng.integers(0, 255, size=(48, 64), dtype=np.uint8)).save(root / "images" / f"{name}.png")
        Image.fromarray(mask).save(root / "masks" / f"{name}.png")
    return root, {name: region for name in stored}


@pytest.fixture(scope="module")
def browse_client(trained_run: Path, predictor: Predictor, layout: tuple[Path, dict[str, np.ndarray]]
                  ) -> Iterator[TestClient]:
    settings = ServiceSettings(browse_dir=str(layout[0]), browse_max_files=100)
    with TestClient(create_app([trained_run], settings, predictor=predictor)) as c:
        yield c


def _png(client: TestClient, url: str) -> np.ndarray:
    r = client.get(url)
    assert r.status_code == 200, r.text
    return np.asarray(Image.open(io.BytesIO(r.content)))


def test_a_0_1_mask_shows_as_positive_in_browse_mode(browse_client: TestClient,
                                                    layout: tuple[Path, dict[str, np.ndarray]]) -> None:
    _, truth = layout
    for name, expected in truth.items():
        body = browse_client.get("/browse/item", params={"name": f"images/{name}.png"}).json()
        assert body["truth"]["has_pneumothorax"] is True, (name, body["truth"])
        assert body["truth"]["area_px"] == int(expected.sum()) == 400, name
        np.testing.assert_array_equal(_png(browse_client, body["urls"]["truth"]) > 127, expected)


def test_prepare_explore_and_browse_count_the_same_positives(layout: tuple[Path, dict[str, np.ndarray]],
                                                            browse_client: TestClient, tmp_path: Path) -> None:
    root, truth = layout
    summary = explore_png(root, tmp_path / "explored", n_samples=0, progress=False)
    prepared = prepare_png(root, tmp_path / "cache", size=128, workers=1, progress=False)
    shown = sum(browse_client.get("/browse/item", params={"name": f"images/{n}.png"}).json()["truth"]["area_px"] > 0
                for n in truth)
    assert summary["n_positive"] == prepared.n_positive == shown == len(truth)


def test_a_mask_of_another_size_is_one_line_naming_both_files(trained_run: Path, predictor: Predictor,
                                                              tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    Image.fromarray(np.zeros((48, 64), np.uint8)).save(tmp_path / "images" / "a.png")
    Image.fromarray(np.zeros((20, 20), np.uint8)).save(tmp_path / "masks" / "a.png")
    app = create_app([trained_run], ServiceSettings(browse_dir=str(tmp_path)), predictor=predictor)
    with TestClient(app, raise_server_exceptions=False) as c:
        r = c.get("/browse/item", params={"name": "images/a.png"})
    assert r.status_code == 422, r.text
    detail = r.json()["detail"]
    assert "masks/a.png is 20x20 but image" in detail and "images/a.png" in detail and "48x64" in detail
