"""The viewer's API: real intensities for window/level, downloads (RLE, SEG, SR), the rule in words,
``--browse`` (listing, on-demand prediction, ground truth, path traversal) and no CDN-backed /docs."""

from __future__ import annotations

import io
import os
import zlib
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pydicom
import pytest
from fastapi.testclient import TestClient
from pydicom.pixels import apply_modality_lut
from pydicom.uid import generate_uid
from typer.testing import CliRunner

from pneumoseg.cli.main import app as cli_app
from pneumoseg.errors import ConfigError
from pneumoseg.inference.predictor import Predictor
from pneumoseg.io.rle import read_annotations, rle_decode
from pneumoseg.service import ServiceSettings, create_app
from tests.helpers.dicom import save_dicom, sc_dataset
from tests.shared_data import SIIM, require_siim

TOKEN = "viewer-token-0123456789abcdef"


def _dicom_16bit(path: Path, pixels: np.ndarray, photometric: str = "MONOCHROME1") -> Path:
    """A 12-bit CR with RescaleSlope 2 / Intercept -1000 and a window: values a viewer must not lose."""
    return save_dicom(sc_dataset(
        np.ascontiguousarray(pixels, dtype=np.uint16), 12, photometric,
        StudyInstanceUID=generate_uid(), SeriesInstanceUID=generate_uid(),
        PatientID="P16", PatientName="Test^Patient", Modality="CR", BodyPartExamined="CHEST",
        PatientBirthDate="", PatientSex="F", StudyDate="20240101", StudyTime="120000",
        ReferringPhysicianName="", StudyID="1", AccessionNumber="",
        RescaleSlope=2, RescaleIntercept=-1000, WindowCenter=2600, WindowWidth=4000, PixelSpacing=[0.2, 0.25]), path)


def _post(client: TestClient, path: Path, token: str | None = None):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return client.post("/predict", files={"file": (path.name, path.read_bytes(), "application/octet-stream")},
                       headers=headers)


def _codes(client: TestClient, url: str, shape: tuple[int, int]) -> np.ndarray:
    r = client.get(url)
    assert r.status_code == 200 and r.headers["content-type"] == "application/octet-stream"
    return np.frombuffer(zlib.decompress(r.content), dtype="<u2").reshape(shape)


def _png(client: TestClient, url: str) -> np.ndarray:
    r = client.get(url)
    assert r.status_code == 200, r.text
    return cv2.imdecode(np.frombuffer(r.content, np.uint8), cv2.IMREAD_UNCHANGED)


def test_dicom_intensities_are_the_modality_lut_values(client: TestClient, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    stored = rng.integers(0, 4096, size=(96, 80), dtype=np.uint16)
    path = _dicom_16bit(tmp_path / "deep.dcm", stored)
    body = _post(client, path).json()
    it = body["intensity"]
    assert it["source"] == "modality" and it["exact"] and it["scale"] == 1.0
    assert (it["window_center"], it["window_width"]) == (2600, 4000)
    assert it["invert"] is True  # MONOCHROME1: low values white
    codes = _codes(client, body["urls"]["values"], (96, 80))
    reference = apply_modality_lut(pydicom.dcmread(path).pixel_array, pydicom.dcmread(path))  # independent: pydicom
    np.testing.assert_array_equal(it["offset"] + it["scale"] * codes.astype(np.float64), reference)
    assert it["min"] == reference.min() and it["max"] == reference.max()
    # mm² from the file's PixelSpacing (0.2 x 0.25 mm): px * 0.05
    assert body["pixel_spacing_mm"] == [0.2, 0.25]
    assert body["area_mm2"] == pytest.approx(body["area_px"] * 0.05, abs=0.01)


def test_png_intensities_are_the_8bit_values_with_an_identity_window(client: TestClient, tmp_path: Path) -> None:
    img = np.tile(np.arange(256, dtype=np.uint8), (40, 1))
    path = tmp_path / "ramp.png"
    cv2.imwrite(str(path), img)
    body = _post(client, path).json()
    it = body["intensity"]
    assert it["source"] == "display" and (it["offset"], it["scale"]) == (0.0, 1.0)
    assert it["window_center"] - it["window_width"] / 2 == 0 and it["window_center"] + it["window_width"] / 2 == 255
    np.testing.assert_array_equal(_codes(client, body["urls"]["values"], img.shape), img)
    assert body["pixel_spacing_mm"] is None and body["area_mm2"] is None
    assert body["urls"].get("seg") is None and body["urls"].get("sr") is None
    assert client.get(f"/predict/{body['id']}/seg.dcm").status_code == 404  # SEG/SR need a DICOM input
    assert client.get(f"/predict/{body['id']}/truth.png").status_code == 404


def test_rle_seg_and_sr_downloads_agree_with_the_mask(client: TestClient, predictor: Predictor,
                                                      tmp_path: Path) -> None:
    from pneumoseg.io.dicom.seg import read_segmentation

    rng = np.random.default_rng(1)
    path = _dicom_16bit(tmp_path / "seg-source.dcm", rng.integers(0, 4096, size=(64, 64), dtype=np.uint16),
                        "MONOCHROME2")
    body = _post(client, path).json()
    mask = _png(client, body["urls"]["mask"]) > 127
    assert body["rule"] == predictor.postprocess.describe() and body["rule_source"] == predictor.postprocess_source

    r = client.get(body["urls"]["rle"])
    assert r.status_code == 200 and "attachment" in r.headers["content-disposition"]
    header, row = r.text.splitlines()
    assert header == "ImageId,EncodedPixels"
    image_id, rle = row.split(",", 1)
    assert image_id == body["image_id"]
    np.testing.assert_array_equal(rle_decode(rle, 64, 64), mask)

    seg_bytes = client.get(body["urls"]["seg"]).content
    assert client.get(body["urls"]["seg"]).content[-64:] == seg_bytes[-64:]
    (tmp_path / "seg.dcm").write_bytes(seg_bytes)
    seg = read_segmentation(tmp_path / "seg.dcm")
    assert seg.Modality == "SEG" and seg.StudyInstanceUID == pydicom.dcmread(path).StudyInstanceUID
    assert seg.SOPInstanceUID == body["dicom_outputs"]["seg_sop_uid"]
    np.testing.assert_array_equal(seg.pixel_array.reshape(64, 64).astype(bool), mask)

    r = client.get(body["urls"]["sr"])
    assert r.status_code == 200, r.text
    sr = pydicom.dcmread(io.BytesIO(r.content))
    assert sr.Modality == "SR" and sr.SOPInstanceUID == body["dicom_outputs"]["sr_sop_uid"]
    assert body["dicom_outputs"]["seg_sop_uid"] in str(sr)  # the SR references exactly the downloadable SEG


@require_siim
def test_real_dicom_area_in_mm2_uses_pixel_spacing(client: TestClient) -> None:
    from pneumoseg.io.dicom.read import area_mm2

    path = sorted((SIIM / "dicom").glob("*.dcm"))[0]
    body = _post(client, path).json()
    mask = _png(client, body["urls"]["mask"]) > 127
    expected = area_mm2(mask, pydicom.dcmread(path, stop_before_pixels=True))
    assert body["area_mm2"] == pytest.approx(expected, abs=0.01)
    assert body["intensity"]["source"] == "modality" and body["intensity"]["window_width"] == 255.0


def test_docs_are_not_served_or_advertised(client: TestClient) -> None:
    assert client.get("/docs").status_code == 404 and client.get("/redoc").status_code == 404
    assert client.get("/openapi.json").status_code == 200
    assert "/docs" not in client.get("/").text
    assert "/docs" not in CliRunner().invoke(cli_app, ["serve", "--help"]).output


# ------------------------------------------------------------------ --browse


@pytest.fixture(scope="module")
def browse_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A PNG layout (images/ + masks/), a nested DICOM, a non-image file, and a link leading outside."""
    root = tmp_path_factory.mktemp("browse")
    outside = tmp_path_factory.mktemp("outside") / "secret.png"
    rng = np.random.default_rng(2)
    for name in ("b", "a"):
        img = rng.integers(0, 255, size=(48, 64), dtype=np.uint8)
        (root / "images").mkdir(exist_ok=True)
        cv2.imwrite(str(root / "images" / f"{name}.png"), img)
    (root / "masks").mkdir()
    truth = np.zeros((48, 64), np.uint8)
    truth[10:30, 20:40] = 255
    cv2.imwrite(str(root / "masks" / "a.png"), truth)
    (root / "sub" / "deep").mkdir(parents=True)
    _dicom_16bit(root / "sub" / "deep" / "c.dcm", rng.integers(0, 4096, size=(40, 40), dtype=np.uint16))
    (root / "notes.txt").write_text("not an image")
    cv2.imwrite(str(outside), np.full((8, 8), 7, np.uint8))
    os.symlink(outside, root / "link.png")
    return root


@pytest.fixture(scope="module")
def browse_client(trained_run: Path, predictor: Predictor, browse_dir: Path) -> Iterator[TestClient]:
    settings = ServiceSettings(browse_dir=str(browse_dir), browse_max_files=100)
    with TestClient(create_app([trained_run], settings, predictor=predictor)) as c:
        yield c


def test_browse_lists_images_sorted_without_masks_or_links_and_paginates(browse_client: TestClient) -> None:
    body = browse_client.get("/browse").json()
    names = [x["name"] for x in body["items"]]
    assert names == ["images/a.png", "images/b.png", "sub/deep/c.dcm"]
    assert body["total"] == 3 and body["truncated"] is False and body["truth"]["png_masks"] is True
    assert [x["has_truth"] for x in body["items"]] == [True, False, False]
    page = browse_client.get("/browse?offset=1&limit=1").json()
    assert [x["name"] for x in page["items"]] == ["images/b.png"] and page["items"][0]["index"] == 1
    assert browse_client.get("/browse?limit=0").status_code == 422
    assert browse_client.get("/browse?limit=100000").status_code == 422


def test_browse_item_predicts_once_with_ground_truth_and_neighbours(browse_client: TestClient,
                                                                   browse_dir: Path) -> None:
    first = browse_client.get("/browse/item", params={"name": "images/a.png"}).json()
    assert first["browse"] == {"name": "images/a.png", "index": 0, "total": 3, "prev": None, "next": "images/b.png"}
    truth = _png(browse_client, first["urls"]["truth"]) > 127
    expected = cv2.imread(str(browse_dir / "masks" / "a.png"), cv2.IMREAD_GRAYSCALE) > 127
    np.testing.assert_array_equal(truth, expected)
    mask = _png(browse_client, first["urls"]["mask"]) > 127
    inter, total = int((mask & expected).sum()), int(mask.sum() + expected.sum())
    assert first["truth"]["area_px"] == int(expected.sum()) == 400
    assert first["truth"]["dice"] == pytest.approx(2 * inter / total if total else 1.0, abs=1e-6)
    again = browse_client.get("/browse/item?index=0").json()
    assert again["id"] == first["id"]  # served from the result store, not predicted again
    last = browse_client.get("/browse/item?index=2").json()
    assert last["format"] == "dicom" and last["browse"]["next"] is None and last["truth"] is None
    assert last["urls"]["seg"]


@pytest.mark.parametrize("name", ["../outside/secret.png", "/etc/passwd", "images/../../x.png", "images\\a.png",
                                  "link.png", "notes.txt", "masks/a.png", "images/./a.png", "images/a.png\0",
                                  "%2e%2e/%2e%2e/etc/passwd", ""])
def test_browse_refuses_names_that_are_not_listed_files(browse_client: TestClient, name: str) -> None:
    r = browse_client.get("/browse/item", params={"name": name})
    assert r.status_code in (404, 422), (name, r.status_code)
    assert "secret" not in r.text or "not one of" in r.text


def test_browse_path_containment_after_resolve(browse_dir: Path) -> None:
    from pneumoseg.service.browse import BrowseFolder, BrowseNameError

    folder = BrowseFolder(browse_dir)
    assert folder.path("images/a.png") == (browse_dir / "images" / "a.png").resolve()
    folder.names = (*folder.names, "link.png", "../outside/secret.png")  # even if a name slipped into the list
    folder._index = {n: i for i, n in enumerate(folder.names)}
    for bad in ("link.png", "../outside/secret.png"):
        with pytest.raises(BrowseNameError):
            folder.path(bad)


def test_browse_index_errors_cap_and_no_browse(browse_client: TestClient, client: TestClient, trained_run: Path,
                                               predictor: Predictor, browse_dir: Path) -> None:
    assert browse_client.get("/browse/item?index=3").status_code == 404
    assert browse_client.get("/browse/item").status_code == 422
    assert browse_client.get("/browse/item?index=0&name=images/a.png").status_code == 422
    assert client.get("/browse").status_code == 404  # not started with --browse
    capped = create_app([trained_run], ServiceSettings(browse_dir=str(browse_dir), browse_max_files=2),
                        predictor=predictor)
    with TestClient(capped) as c:
        body = c.get("/browse").json()
        assert body["total"] == 2 and body["truncated"] is True
    with pytest.raises(ConfigError, match="not a folder"):
        create_app([trained_run], ServiceSettings(browse_dir=str(browse_dir / "nope")), predictor=predictor)
    with pytest.raises(ConfigError, match="needs --browse"):
        ServiceSettings(truth="train-rle.csv")


def test_browse_needs_the_token(trained_run: Path, predictor: Predictor, browse_dir: Path) -> None:
    app = create_app([trained_run], ServiceSettings(browse_dir=str(browse_dir), token=TOKEN), predictor=predictor)
    with TestClient(app) as c:
        assert c.get("/browse").status_code == 401
        assert c.get("/browse/item?index=0").status_code == 401
        ok = c.get("/browse/item?index=0", headers={"Authorization": f"Bearer {TOKEN}"})
        assert ok.status_code == 200 and ok.json()["browse"]["index"] == 0


def test_browse_truth_from_a_challenge_csv(trained_run: Path, predictor: Predictor, synth_data: Path) -> None:
    csv = synth_data / "train-rle.csv"
    annotations = read_annotations(csv)
    settings = ServiceSettings(browse_dir=str(synth_data / "dicom"), truth=str(csv))
    with TestClient(create_app([trained_run], settings, predictor=predictor)) as c:
        listing = c.get("/browse").json()
        assert listing["truth"]["csv"] == "train-rle.csv" and listing["total"] == 60
        for index in (0, 1, 2):
            body = c.get(f"/browse/item?index={index}").json()
            expected = annotations.mask(body["image_id"], body["height"], body["width"])
            assert body["truth"]["source"] == "train-rle.csv"
            assert body["truth"]["area_px"] == int(expected.sum())
            np.testing.assert_array_equal(_png(c, body["urls"]["truth"]) > 127, expected)
