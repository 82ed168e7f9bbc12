"""The viewer service's JSON API and PNG routes through FastAPI's TestClient, and ``pneumoseg serve``."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import cv2
import numpy as np
import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from pneumoseg.cli.main import app as cli_app
from pneumoseg.io.dicom.read import read_dicom
from pneumoseg.inference.inputs import load_input
from pneumoseg.inference.predictor import Predictor
from pneumoseg.io.rle import rle_decode
from pneumoseg.service import ServiceSettings, create_app
from pneumoseg.service.inference import UnsupportedMediaError, sniff
from tests.shared_data import SIIM, require_siim

SUMMARY_KEYS = {"id", "image_id", "has_pneumothorax", "probability", "area_px", "area_percent", "rle", "threshold",
                "postprocess", "width", "height", "meta", "urls", "format", "filename", "model", "elapsed_ms",
                "stored"}


@pytest.fixture(scope="module")
def dicom_path(synth_data: Path) -> Path:
    return sorted((synth_data / "dicom").glob("*.dcm"))[0]


def _post(client: TestClient, name: str, data: bytes, content_type: str = "application/octet-stream"):
    return client.post("/predict", files={"file": (name, data, content_type)})


def _png_array(client: TestClient, url: str) -> np.ndarray:
    r = client.get(url)
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    arr = cv2.imdecode(np.frombuffer(r.content, np.uint8), cv2.IMREAD_UNCHANGED)
    assert arr is not None, url
    return arr


def _assert_healthy(client: TestClient) -> None:
    r = client.get("/health")
    assert r.status_code == 200 and r.json()["status"] == "ok"


def test_health_reports_the_loaded_model(client: TestClient, trained_run: Path, predictor: Predictor) -> None:
    body = client.get("/health").json()
    assert body["status"] == "ok"
    assert body["model"] == predictor.model_name
    assert body["runs"] == [str(trained_run)]
    assert body["postprocess"] == predictor.postprocess.to_dict()


def test_predict_dicom_matches_the_predictor_and_rle_decodes_to_area(client: TestClient, dicom_path: Path,
                                                                    predictor: Predictor) -> None:
    r = _post(client, dicom_path.name, dicom_path.read_bytes(), "application/dicom")
    assert r.status_code == 200, r.text
    body = r.json()
    assert SUMMARY_KEYS <= set(body)
    image = load_input(dicom_path)
    expected = predictor.predict_batch([image])[0]
    assert body["image_id"] == image.image_id
    assert body["format"] == "dicom" and body["stored"] is True
    assert (body["height"], body["width"]) == image.pixels.shape
    assert body["meta"] == json.loads(json.dumps(image.meta.as_dict()))  # tuples arrive as lists
    assert body["postprocess"] == predictor.postprocess.to_dict()
    assert body["threshold"] == predictor.postprocess.mask_threshold
    mask = rle_decode(body["rle"], body["height"], body["width"])
    assert int(mask.sum()) == body["area_px"] == expected.area_px
    assert (mask == expected.mask).all()
    assert body["has_pneumothorax"] == (body["area_px"] > 0)
    assert body["probability"] == pytest.approx(expected.probability, abs=1e-5)
    assert body["area_percent"] == pytest.approx(100 * body["area_px"] / mask.size, abs=1e-3)


def test_result_pngs_decode_at_the_input_size(client: TestClient, dicom_path: Path, predictor: Predictor) -> None:
    body = _post(client, dicom_path.name, dicom_path.read_bytes()).json()
    h, w = body["height"], body["width"]
    image = _png_array(client, body["urls"]["image"])
    overlay = _png_array(client, body["urls"]["overlay"])
    prob = _png_array(client, body["urls"]["prob"])
    mask = _png_array(client, body["urls"]["mask"])
    assert image.shape == prob.shape == mask.shape == (h, w)
    assert image.dtype == prob.dtype == np.uint8
    assert overlay.shape == (h, w, 3)
    assert (image == read_dicom(dicom_path).pixels).all()
    assert ((mask > 127) == rle_decode(body["rle"], h, w)).all()
    expected = predictor.predict_batch([load_input(dicom_path)])[0].prob
    assert np.abs(prob.astype(np.float32) / 255 - expected).max() <= 1 / 255 + 1e-6
    assert client.get(f"/predict/{body['id']}").json()["rle"] == body["rle"]


def test_predict_png_has_no_metadata(client: TestClient, dicom_path: Path, tmp_path: Path) -> None:
    pixels = read_dicom(dicom_path).pixels[:, :200]  # not square: width and height must not swap
    ok, buf = cv2.imencode(".png", pixels)
    assert ok
    r = _post(client, "phantom_7.png", buf.tobytes(), "image/png")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["meta"] is None and body["format"] == "png"
    assert body["image_id"] == "phantom_7"
    assert (body["height"], body["width"]) == pixels.shape
    assert int(rle_decode(body["rle"], body["height"], body["width"]).sum()) == body["area_px"]
    assert _png_array(client, body["urls"]["overlay"]).shape == (*pixels.shape, 3)


@require_siim
def test_predict_real_siim_dicom(client: TestClient) -> None:
    path = sorted((SIIM / "dicom").glob("*.dcm"))[0]
    body = _post(client, path.name, path.read_bytes()).json()
    assert (body["width"], body["height"]) == (1024, 1024)
    assert body["image_id"] == path.stem
    assert body["meta"]["modality"] and body["meta"]["transfer_syntax_name"].startswith("JPEG Baseline")
    assert int(rle_decode(body["rle"], 1024, 1024).sum()) == body["area_px"]
    assert _png_array(client, body["urls"]["prob"]).shape == (1024, 1024)


def test_dicom_without_preamble_is_accepted(client: TestClient, dicom_path: Path) -> None:
    data = dicom_path.read_bytes()
    assert data[128:132] == b"DICM"
    r = _post(client, "bare.dcm", data[132:])
    assert r.status_code == 200, r.text
    assert r.json()["image_id"] == load_input(dicom_path).image_id


def test_upload_over_the_cap_is_413(trained_run: Path, predictor: Predictor, dicom_path: Path) -> None:
    settings = ServiceSettings(max_upload_mb=0.002)  # 2,000 bytes
    with TestClient(create_app([trained_run], settings, predictor=predictor)) as small:
        for size in (2_001, 300_000):  # just over (checked by the route), far over (refused before reading)
            r = _post(small, "big.dcm", b"\0" * size)
            assert r.status_code == 413, (size, r.text)
            assert "0.002 MB" in r.json()["detail"]
            _assert_healthy(small)
        assert _post(small, "small.txt", b"x" * 1_000).status_code == 415  # under the cap: sniffed as usual


def test_text_file_is_415(client: TestClient) -> None:
    r = _post(client, "notes.dcm", b"this is a text file, not an image\n" * 20, "text/plain")
    assert r.status_code == 415
    assert "DICOM" in r.json()["detail"] and "PNG" in r.json()["detail"]
    _assert_healthy(client)


@pytest.mark.parametrize("cut", ["half", "header"])
def test_truncated_dicom_is_422_naming_the_file(client: TestClient, dicom_path: Path, cut: str) -> None:
    data = dicom_path.read_bytes()
    data = data[: len(data) // 2] if cut == "half" else data[:400]
    r = _post(client, "broken.dcm", data)
    assert r.status_code == 422, r.text
    detail = r.json()["detail"]
    assert detail.startswith("broken.dcm:") and "truncated" in detail
    assert "pneumoseg-upload" not in detail and "/tmp" not in detail  # no temporary path exists or leaks
    _assert_healthy(client)


def test_corrupt_png_and_empty_upload_are_422(client: TestClient) -> None:
    r = _post(client, "bad.png", b"\x89PNG\r\n\x1a\n" + b"\0" * 64)
    assert r.status_code == 422 and r.json()["detail"].startswith("bad.png:")
    assert _post(client, "empty.dcm", b"").status_code == 422
    _assert_healthy(client)


def test_missing_file_field_is_422(client: TestClient) -> None:
    assert client.post("/predict", data={"other": "x"}).status_code == 422


def test_results_are_kept_in_a_bounded_lru(trained_run: Path, predictor: Predictor, dicom_path: Path) -> None:
    data = dicom_path.read_bytes()
    with TestClient(create_app([trained_run], ServiceSettings(cache_size=2), predictor=predictor)) as c:
        ids = [_post(c, "a.dcm", data).json()["id"] for _ in range(3)]
        assert c.get(f"/predict/{ids[0]}/overlay.png").status_code == 404
        assert c.get(f"/predict/{ids[2]}/overlay.png").status_code == 200
        assert c.get("/health").json()["results_cached"] == 2
    assert len(set(ids)) == 3


def test_unknown_result_is_404_and_malformed_ids_and_names_are_422(client: TestClient) -> None:
    assert client.get("/predict/0123456789abcdef0123456789abcdef/overlay.png").status_code == 404
    assert client.get("/predict/0123456789abcdef0123456789abcdef").status_code == 404
    for bad in ("0123456789abcdef", "..%2F..%2Fetc", "0123456789ABCDEF0123456789ABCDEF"):
        assert client.get(f"/predict/{bad}/overlay.png").status_code in (404, 422), bad
        assert client.get(f"/predict/{bad}").status_code in (404, 422), bad
    body = _post(client, "x.png", cv2.imencode(".png", np.zeros((32, 48), np.uint8))[1].tobytes()).json()
    assert len(body["id"]) == 32 and int(body["id"], 16) >= 0
    assert client.get(f"/predict/{body['id']}/secret.png").status_code == 422


def test_viewer_page_has_the_stable_ids(client: TestClient) -> None:
    r = client.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    for element_id in ("file", "result", "probability", "area", "verdict", "canvas", "threshold", "opacity", "meta"):
        assert f'id="{element_id}"' in r.text
    assert "http://" not in r.text and "https://" not in r.text  # no external resources


def test_sniff_units() -> None:
    assert sniff(b"\0" * 128 + b"DICM" + b"\0" * 8) == "dicom"
    assert sniff(b"\x89PNG\r\n\x1a\n....") == "png"
    with pytest.raises(UnsupportedMediaError):
        sniff(b"GIF89a" + b"\0" * 200)


runner = CliRunner()


def test_serve_cli_loads_the_model_and_runs_uvicorn(trained_run: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import uvicorn

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    calls: list[dict] = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: calls.append({"app": app, **kw}))
    result = runner.invoke(cli_app, ["serve", str(trained_run), "--port", str(port), "--max-upload-mb", "7",
                                     "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert f"http://127.0.0.1:{port}/" in result.output
    (call,) = calls
    assert call["host"] == "127.0.0.1" and call["port"] == port
    assert call["app"].state.settings.max_upload_mb == 7
    assert call["app"].state.model.runs == [str(trained_run)]


def test_serve_cli_reports_a_missing_run_and_a_busy_port_on_one_line(tmp_path: Path, trained_run: Path) -> None:
    result = runner.invoke(cli_app, ["serve", str(tmp_path / "no-such-run"), "--port", "8765"])
    assert result.exit_code == 2
    assert "error:" in result.output and "no-such-run" in result.output
    assert "Traceback" not in result.output
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        result = runner.invoke(cli_app, ["serve", str(trained_run), "--port", str(busy.getsockname()[1])])
    assert result.exit_code == 2 and "cannot listen on" in result.output


@pytest.mark.parametrize(("filename", "image_id"), [
    ("case_.png", "case_"), ("case_7_.jpg", "case_7_"), ("a b.png", "a_b"), ("-x.png", "x"), (".hidden.png", "hidden"),
    ("éé.png", "_"), ("....png", "upload"),
])
def test_upload_image_id_is_predicts_file_stem(filename: str, image_id: str) -> None:
    """The viewer's ImageId of an upload is the one `pneumoseg predict` gives the same file (a trailing
    underscore stays), and always a name `safe_name` accepts."""
    from pneumoseg.service.decode import _image_id_from_name
    from pneumoseg.util.paths import safe_name

    assert _image_id_from_name(filename) == image_id
    assert safe_name(image_id) == image_id
