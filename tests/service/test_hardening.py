"""The service with hostile input: pixel bombs, the result store's byte budget, the token, temp files, options."""

from __future__ import annotations

import functools
import hashlib
import base64
import io
import re
import resource
import struct
import tempfile
import threading
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pydicom
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from typer.testing import CliRunner

from pneumoseg.cli.main import app as cli_app
from pneumoseg.errors import ConfigError
from pneumoseg.io.images import read_image
from pneumoseg.inference.predictor import Predictor
from pneumoseg.service import ServiceSettings, create_app
from pneumoseg.service.decode import display_name
from pneumoseg.service.security import is_loopback
from pneumoseg.service.store import ResultStore
from pneumoseg.service.uploads import remove_stale_uploads

TOKEN = "t0ken-for-tests-0123456789abcdef"
runner = CliRunner()


@pytest.fixture(scope="module")
def dicom_bytes(synth_data: Path) -> bytes:
    return sorted((synth_data / "dicom").glob("*.dcm"))[0].read_bytes()


def _post(client: TestClient, name: str, data: bytes, headers: dict[str, str] | None = None):
    return client.post("/predict", files={"file": (name, data, "application/octet-stream")}, headers=headers)


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


@functools.cache
def huge_png(width: int = 20_000, height: int = 20_000) -> bytes:
    """A valid 1-bit grayscale PNG of width x height black pixels (a few tens of kB; streamed, never in memory)."""
    row = b"\0" * (1 + (width + 7) // 8)  # filter byte + packed bits
    z = zlib.compressobj(9)
    idat = b"".join(z.compress(row) for _ in range(height)) + z.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


def huge_jpeg(width: int = 30_000, height: int = 30_000) -> bytes:
    """A small JPEG whose SOF header is patched to declare width x height."""
    buf = io.BytesIO()
    Image.new("L", (16, 16)).save(buf, format="JPEG")
    data = bytearray(buf.getvalue())
    sof = data.find(b"\xff\xc0")
    data[sof + 5: sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def _max_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def test_huge_png_is_refused_from_its_header_quickly_and_without_memory(client: TestClient,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    data = huge_png()
    with monkeypatch.context() as m:
        m.setattr(Image, "MAX_IMAGE_PIXELS", None)
        with Image.open(io.BytesIO(data)) as im:  # independent reader: it is a valid 20000 x 20000 PNG
            assert im.size == (20_000, 20_000)
    assert len(data) < 1_000_000
    rss = _max_rss_mb()
    start = time.perf_counter()
    r = _post(client, "bomb.png", data)
    elapsed = time.perf_counter() - start
    assert r.status_code == 413, r.text
    detail = r.json()["detail"]
    assert detail.startswith("bomb.png:") and "20000 x 20000" in detail and "64,000,000" in detail
    assert "\n" not in detail
    assert elapsed < 2.0
    assert _max_rss_mb() - rss < 100  # decoding would have taken 400 MB
    assert client.get("/health").json()["status"] == "ok"


def test_huge_jpeg_header_is_413(client: TestClient) -> None:
    r = _post(client, "bomb.jpg", huge_jpeg())
    assert r.status_code == 413 and "30000 x 30000" in r.json()["detail"]


def test_max_pixels_is_configurable_and_an_image_at_the_limit_passes(trained_run: Path, predictor: Predictor) -> None:
    png = cv2.imencode(".png", np.full((40, 50), 128, np.uint8))[1].tobytes()
    with TestClient(create_app([trained_run], ServiceSettings(max_pixels=2000), predictor=predictor)) as c:
        assert _post(c, "ok.png", png).status_code == 200  # 40 x 50 = 2000: at the limit
        big = cv2.imencode(".png", np.full((40, 51), 128, np.uint8))[1].tobytes()
        r = _post(c, "big.png", big)
        assert r.status_code == 413 and "51 x 40 = 2,040 pixels" in r.json()["detail"]


def test_dicom_with_huge_rows_and_columns_is_413(client: TestClient, dicom_bytes: bytes) -> None:
    ds = pydicom.dcmread(io.BytesIO(dicom_bytes))
    ds.Rows, ds.Columns = 60_000, 60_000
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    start = time.perf_counter()
    r = _post(client, "huge.dcm", buf.getvalue())
    assert r.status_code == 413, r.text
    assert time.perf_counter() - start < 2.0
    detail = r.json()["detail"]
    assert detail.startswith("huge.dcm:") and "60000 x 60000" in detail and "\n" not in detail


@pytest.mark.parametrize("encode", ["16bit", "rgba", "rgb"])
def test_png_pixels_match_read_image(client: TestClient, tmp_path: Path, encode: str) -> None:
    rng = np.random.default_rng(0)
    arr = {"16bit": rng.integers(0, 65536, (37, 53), dtype=np.uint16),
           "rgba": rng.integers(0, 256, (37, 53, 4), dtype=np.uint8),
           "rgb": rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)}[encode]
    path = tmp_path / "x.png"
    path.write_bytes(cv2.imencode(".png", arr)[1].tobytes())
    body = _post(client, "x.png", path.read_bytes()).json()
    png = client.get(body["urls"]["image"]).content
    served = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_UNCHANGED)
    assert np.array_equal(served, read_image(path))


# ---------------------------------------------------------------- image work outside the model lock


def test_decoding_and_post_processing_run_outside_the_model_lock(trained_run: Path, predictor: Predictor,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    app = create_app([trained_run], ServiceSettings(), predictor=predictor)
    model = app.state.model
    seen: list[tuple[str, object]] = []
    forward, finish = predictor.probs_at_model_size, predictor.finish

    def spy_forward(images):
        seen.append(("forward", images[0].shape))
        return forward(images)

    def spy_finish(image, prob):
        seen.append(("finish_locked", model._forward_lock.locked()))
        return finish(image, prob)

    monkeypatch.setattr(predictor, "probs_at_model_size", spy_forward)
    monkeypatch.setattr(predictor, "finish", spy_finish)
    big = cv2.imencode(".png", np.random.default_rng(1).integers(0, 256, (900, 700), dtype=np.uint8))[1].tobytes()
    with TestClient(app) as c:
        assert _post(c, "big.png", big).status_code == 200
        # A pixel bomb is refused while another request holds the model: it never waits for the lock.
        with model._forward_lock:
            start = time.perf_counter()
            r = _post(c, "bomb.png", huge_png())
            assert r.status_code == 413 and time.perf_counter() - start < 2.0
    # The forward pass got the image already at the model's size; finish ran without the lock.
    assert seen == [("forward", (predictor.size, predictor.size)), ("finish_locked", False)]


# ---------------------------------------------------------------- the result store


@dataclass
class _Value:
    nbytes: int


def test_result_store_is_bounded_by_bytes_and_evicts_the_oldest() -> None:
    store = ResultStore(max_bytes=100)
    assert store.put("a", _Value(40)) and store.put("b", _Value(40))  # type: ignore[arg-type]
    assert store.nbytes == 80
    assert store.get("a") is not None  # a is now the most recently used
    assert store.put("c", _Value(30))  # type: ignore[arg-type]
    assert store.get("b") is None and store.get("a") is not None and store.get("c") is not None
    assert store.nbytes == 70 and len(store) == 2
    assert not store.put("huge", _Value(101))  # type: ignore[arg-type]
    assert store.get("huge") is None and store.nbytes == 70  # nothing evicted for it
    assert store.put("d", _Value(100))  # type: ignore[arg-type]
    assert len(store) == 1 and store.nbytes == 100
    counted = ResultStore(max_bytes=10**6, max_items=2)
    for key in "xyz":
        counted.put(key, _Value(1))  # type: ignore[arg-type]
    assert counted.get("x") is None and len(counted) == 2


def test_service_store_evicts_by_bytes_and_reports_a_result_too_large_to_keep(
        trained_run: Path, predictor: Predictor, dicom_bytes: bytes) -> None:
    with TestClient(create_app([trained_run], ServiceSettings(), predictor=predictor)) as probe:
        first = _post(probe, "a.dcm", dicom_bytes).json()
        one = probe.get("/health").json()["result_store_bytes"]
    assert first["stored"] is True and 1_000 < one < 600_000  # compressed: well under 3 bytes/pixel
    budget_mb = 2.5 * one / 1e6  # room for two results
    with TestClient(create_app([trained_run], ServiceSettings(result_store_mb=budget_mb), predictor=predictor)) as c:
        ids = [_post(c, "a.dcm", dicom_bytes).json()["id"] for _ in range(3)]
        assert c.get(f"/predict/{ids[0]}").status_code == 404
        assert c.get(f"/predict/{ids[1]}/overlay.png").status_code == 200
        assert c.get(f"/predict/{ids[2]}/mask.png").status_code == 200
        health = c.get("/health").json()
        assert health["results_cached"] == 2 and health["result_store_bytes"] <= budget_mb * 1e6
    with TestClient(create_app([trained_run], ServiceSettings(result_store_mb=one / 2e6), predictor=predictor)) as c:
        r = _post(c, "a.dcm", dicom_bytes)
        assert r.status_code == 200
        body = r.json()
        assert body["stored"] is False and body["urls"] is None and "result store" in body["note"]
        assert body["area_px"] == first["area_px"] and body["rle"] == first["rle"]  # the answer is complete
        assert c.get(f"/predict/{body['id']}").status_code == 404
        assert c.get("/health").json()["results_cached"] == 0


# ---------------------------------------------------------------- the token


def test_token_is_required_on_the_api_but_not_on_health_or_the_page(trained_run: Path, predictor: Predictor,
                                                                    dicom_bytes: bytes) -> None:
    auth = {"Authorization": f"Bearer {TOKEN}"}
    with TestClient(create_app([trained_run], ServiceSettings(token=TOKEN), predictor=predictor)) as c:
        assert c.get("/").status_code == 200
        health = c.get("/health")
        assert health.status_code == 200 and health.json()["auth_required"] is True
        assert "runs" not in health.json() and "postprocess" not in health.json()  # details need the token
        assert str(trained_run) in str(c.get("/health", headers=auth).json()["runs"])
        for headers in (None, {"Authorization": "Bearer wrong-token-0123456789"}, {"Authorization": TOKEN},
                        {"Authorization": f"Basic {TOKEN}"}, {"Authorization": f"Bearer {TOKEN}x"}):
            r = _post(c, "a.dcm", dicom_bytes, headers)
            assert r.status_code == 401, (headers, r.text)
            assert r.headers["www-authenticate"] == "Bearer" and "token" in r.json()["detail"]
        r = _post(c, "a.dcm", dicom_bytes, auth)
        assert r.status_code == 200, r.text
        url = r.json()["urls"]["overlay"]
        assert c.get(url).status_code == 401
        assert c.get(url, headers=auth).status_code == 200
        assert c.get(f"/predict/{r.json()['id']}").status_code == 401
        assert c.get(f"/predict/{r.json()['id']}", headers={"authorization": f"bearer {TOKEN}"}).status_code == 200


def test_settings_validate_the_token_and_never_show_it() -> None:
    settings = ServiceSettings(token=TOKEN)
    assert TOKEN not in repr(settings) and settings.to_dict()["token"] is True
    for bad in ("short", "has space in the token 0123", "nön-ascii-token-0123456789"):
        with pytest.raises(ConfigError, match="at least 16"):
            ServiceSettings(token=bad)


def test_page_works_with_a_token_and_has_a_csp_matching_its_script(client: TestClient) -> None:
    r = client.get("/")
    html = r.text
    assert 'id="token"' in html and "sessionStorage" in html and "Authorization" in html
    (script,) = re.findall(r"<script>(.*?)</script>", html, re.DOTALL)
    digest = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
    csp = r.headers["content-security-policy"]
    assert f"'sha256-{digest}'" in csp and "default-src 'none'" in csp and "unsafe-eval" not in csp
    assert r.headers["x-content-type-options"] == "nosniff" and r.headers["x-frame-options"] == "DENY"
    png = cv2.imencode(".png", np.zeros((20, 20), np.uint8))[1].tobytes()
    body = _post(client, "z.png", png).json()
    assert client.get(body["urls"]["prob"]).headers["cache-control"] == "no-store"  # patient data: not cached


# ---------------------------------------------------------------- uploads stay in memory


@pytest.fixture()
def temp_file_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record every temporary file or folder created through ``tempfile`` (none are expected)."""
    calls: list[str] = []
    for name in ("TemporaryFile", "NamedTemporaryFile", "mkstemp", "mkdtemp", "TemporaryDirectory"):
        original = getattr(tempfile, name)

        def spy(*args, _name=name, _original=original, **kwargs):
            calls.append(_name)
            return _original(*args, **kwargs)

        monkeypatch.setattr(tempfile, name, spy)
    return calls


def _stale(root: Path) -> list[Path]:
    return sorted(root.glob("pneumoseg-upload-*"))


def test_uploads_never_touch_the_disk(client: TestClient, dicom_bytes: bytes, temp_file_calls: list[str]) -> None:
    before = _stale(Path(tempfile.gettempdir()))
    noise = np.random.default_rng(2).integers(0, 256, (1100, 1100), dtype=np.uint8)
    big_png = cv2.imencode(".png", noise)[1].tobytes()
    assert len(big_png) > 1024 * 1024  # over Starlette's default in-memory spool of 1 MB
    results: list[int] = []

    def post(name: str, data: bytes) -> None:
        results.append(_post(client, name, data).status_code)

    threads = [threading.Thread(target=post, args=a) for a in (("a.dcm", dicom_bytes), ("big.png", big_png))]
    for t in threads:
        t.start()
    during = _stale(Path(tempfile.gettempdir()))
    for t in threads:
        t.join()
    assert results == [200, 200]
    assert temp_file_calls == []
    assert during == before and _stale(Path(tempfile.gettempdir())) == before


def test_a_traversal_file_name_creates_no_file(client: TestClient, dicom_bytes: bytes, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch, temp_file_calls: list[str]) -> None:
    work = tmp_path / "a" / "b"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)
    for name in ("../../x.dcm", "/tmp/x.dcm", "..\\..\\x.dcm", "../x\0.dcm"):
        r = _post(client, name, dicom_bytes)
        assert r.status_code == 200, (name, r.text)
        shown = r.json()["filename"]
        assert shown.startswith("x") and shown.endswith(".dcm") and not {"/", "\\", "\0"} & set(shown), name
    png = cv2.imencode(".png", np.zeros((30, 30), np.uint8))[1].tobytes()
    body = _post(client, "../../../etc/passwd.png", png).json()
    assert body["filename"] == "passwd.png" and body["image_id"] == "passwd"
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []
    assert temp_file_calls == []


def test_display_name_keeps_only_a_printable_last_component() -> None:
    assert display_name("../../x.dcm") == "x.dcm"
    assert display_name("C:\\dir\\x.png") == "x.png"
    assert display_name("a/\x1b[31mred\x07.dcm") == "[31mred.dcm"
    assert display_name("..") == display_name("") == display_name(None) == "upload"
    assert len(display_name("y" * 5000)) == 200


def test_stale_upload_folders_are_removed_at_start(tmp_path: Path, trained_run: Path, predictor: Predictor,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    stale = tmp_path / "pneumoseg-upload-abc123"
    stale.mkdir()
    (stale / "patient.dcm").write_bytes(b"secret")
    keep = tmp_path / "elsewhere"
    keep.mkdir()
    (keep / "keep.dcm").write_bytes(b"keep")
    (tmp_path / "pneumoseg-upload-link").symlink_to(keep, target_is_directory=True)
    (tmp_path / "pneumoseg-upload-file").write_bytes(b"not a folder")
    (tmp_path / "other-dir").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    app = create_app([trained_run], ServiceSettings(), predictor=predictor)
    assert app.state.stale_uploads_removed == 1
    assert not stale.exists() and (keep / "keep.dcm").read_bytes() == b"keep"
    assert (tmp_path / "pneumoseg-upload-link").is_symlink() and (tmp_path / "other-dir").is_dir()
    assert remove_stale_uploads(tmp_path) == 0


# ---------------------------------------------------------------- the command line


def test_is_loopback() -> None:
    for host in ("127.0.0.1", "127.1.2.3", "::1", "[::1]", "localhost"):
        assert is_loopback(host), host
    for host in ("0.0.0.0", "::", "192.168.1.5", "example.org", "10.0.0.1"):
        assert not is_loopback(host), host


@pytest.mark.parametrize(("option", "value", "expected"), [
    ("--max-upload-mb", "inf", "--max-upload-mb must be a number > 0"),
    ("--max-upload-mb", "-5", "--max-upload-mb must be a number > 0"),
    ("--max-upload-mb", "nan", "--max-upload-mb must be a number > 0"),
    ("--max-pixels", "inf", "--max-pixels must be an integer > 0"),
    ("--max-pixels", "0", "--max-pixels must be an integer > 0"),
    ("--max-pixels", "1.5", "--max-pixels must be an integer > 0"),
    ("--result-store-mb", "-1", "--result-store-mb must be a number > 0"),
    ("--result-store-mb", "inf", "--result-store-mb must be a number > 0"),
    ("--cache-size", "inf", "--cache-size must be an integer > 0"),
    ("--cache-size", "0", "--cache-size must be an integer > 0"),
    ("--max-concurrent", "-1", "--max-concurrent must be an integer > 0"),
    ("--port", "inf", "--port must be an integer in 1-65535"),
    ("--port", "70000", "--port must be an integer in 1-65535"),
    ("--token", "short", "at least 16"),
])
def test_serve_rejects_bad_numbers_on_one_line_before_loading(tmp_path: Path, option: str, value: str,
                                                              expected: str) -> None:
    # The run does not exist: an error about the option proves nothing was loaded first.
    result = runner.invoke(cli_app, ["serve", str(tmp_path / "no-such-run"), option, value, "--port", "8765"]
                           if option != "--port" else ["serve", str(tmp_path / "no-such-run"), option, value])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and expected in lines[0], result.output
    assert "no-such-run" not in result.output and "Traceback" not in result.output


def _free_port(host: str) -> int:
    import socket

    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def test_serve_warns_on_a_non_loopback_host_and_takes_the_token_from_the_environment(
        trained_run: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import uvicorn

    calls: list[dict] = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: calls.append({"app": app, **kw}))
    port = _free_port("0.0.0.0")
    result = runner.invoke(cli_app, ["serve", str(trained_run), "--host", "0.0.0.0", "--port", str(port),
                                     "--device", "cpu"], env={"PNEUMOSEG_TOKEN": ""})
    assert result.exit_code == 0, result.output
    warning = [line for line in result.output.splitlines() if line.startswith("warning:")]
    assert len(warning) == 1 and "0.0.0.0" in warning[0] and "--token" in warning[0]
    assert calls[-1]["app"].state.settings.token is None

    result = runner.invoke(cli_app, ["serve", str(trained_run), "--port", str(_free_port("127.0.0.1")),
                                     "--device", "cpu", "--max-pixels", "1e6"], env={"PNEUMOSEG_TOKEN": TOKEN})
    assert result.exit_code == 0, result.output
    assert "warning:" not in result.output and TOKEN not in result.output
    assert "token required" in result.output
    settings = calls[-1]["app"].state.settings
    assert settings.token == TOKEN and settings.max_pixels == 1_000_000
    assert calls[-1]["host"] == "127.0.0.1"


def test_settings_reject_non_finite_numbers_in_python_too() -> None:
    for kwargs in ({"max_upload_mb": float("inf")}, {"max_pixels": -1}, {"result_store_mb": float("nan")},
                   {"cache_size": 2.5}, {"max_concurrent": 0}, {"max_upload_mb": True}):
        with pytest.raises(ConfigError):
            ServiceSettings(**kwargs)  # type: ignore[arg-type]
