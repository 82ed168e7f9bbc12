"""OHIF over Orthanc shows pneumoseg's SEG on a real radiograph, in headless Chromium (the PACS in a box).

A real challenge DICOM goes through ``PacsBox`` (Orthanc -> ``pneumoseg listen`` -> SEG -> Orthanc);
Chromium opens the study in OHIF's segmentation mode, loads the SEG (double-click, "Yes"), and the
screenshot must show the segmentation colour where the SEG's mask is and not far from it; the
segment panel must list "Pneumothorax". Screenshots are written under pytest's tmp dir (path printed;
PNEUMOSEG_SCREENSHOT_DIR keeps a copy). Skipped (with the reason) without Chromium, Orthanc or
OHIF's files (``make install`` fetches them into .ohif/dist).
"""

from __future__ import annotations

import http.client
import io
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pydicom
import pytest

from pneumoseg.errors import ConfigError
from pneumoseg.pacs.box import OhifServer, PacsBox, find_ohif, find_orthanc
from tests.helpers.browser import MISSING_CHROMIUM, chromium, save_screenshot
from tests.helpers.threads import one_torch_thread
from tests.shared_data import SIIM, require_siim

OHIF_DIR = Path(os.environ.get("PNEUMOSEG_OHIF_DIR") or Path(__file__).resolve().parents[2] / ".ohif" / "dist")
#: the real radiograph: 1024 x 1024 CR, JPEG Baseline
SOURCE = SIIM / "dicom" / "1.2.276.0.7230010.3.1.4.8323329.1000.1517875165.878027.dcm"
MASK_QUANTILE = 0.88  #: the threshold: this quantile of the run's probabilities on SOURCE (~12 % of the image)


def _missing() -> str | None:
    if MISSING_CHROMIUM is not None:
        return MISSING_CHROMIUM
    try:
        find_orthanc()
        find_ohif(OHIF_DIR)
    except ConfigError as exc:
        return str(exc)
    return None


needs_browser_orthanc_ohif = pytest.mark.skipif(_missing() is not None, reason=str(_missing()))

# The viewport showing the radiograph: where image pixel (0, 0) and (columns, rows) land in the page (CSS px).
IMAGE_RECT = """
const cs = window.cornerstone, uid = arguments[0];
for (const el of cs.getEnabledElements()) {
  const vp = el.viewport, id = vp.getCurrentImageId && vp.getCurrentImageId();
  if (!id || !id.includes(uid)) continue;
  const r = vp.canvas.getBoundingClientRect(), img = cs.metaData.get('imagePixelModule', id);
  const a = vp.worldToCanvas(cs.utilities.imageToWorldCoords(id, [0, 0]));
  const b = vp.worldToCanvas(cs.utilities.imageToWorldCoords(id, [img.columns, img.rows]));
  return {x0: r.left + a[0], y0: r.top + a[1], x1: r.left + b[0], y1: r.top + b[1],
          vx0: r.left, vy0: r.top, vx1: r.right, vy1: r.bottom, dpr: window.devicePixelRatio};
}
return null;
"""


@pytest.fixture(scope="module")
def ohif_run(pacs_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``pacs_run`` with its head spread around the median logit on SOURCE and the threshold at the
    ``MASK_QUANTILE`` probability: a mask of a few blobs covering ~12 % of the image (the untrained
    net's own map, neither empty, full nor speckle)."""
    import torch
    import yaml

    from pneumoseg.inference.inputs import load_input

    from pneumoseg.inference.predictor import Predictor

    run = tmp_path_factory.mktemp("ohif") / "run"
    shutil.copytree(pacs_run, run)
    image = load_input(SOURCE).pixels
    with one_torch_thread():
        prob = Predictor([run], device="cpu").probs_at_model_size([image])[0].astype(np.float64)
        logit = np.log(prob / (1 - prob))
        low, high = np.percentile(logit, [5, 95])
        k, median = 8.0 / max(float(high - low), 1e-6), float(np.median(logit))
        for ckpt in (run / "checkpoints").glob("*.ckpt"):
            data = torch.load(ckpt, map_location="cpu", weights_only=False)
            state = data["state_dict"]
            state["net.head.weight"] = state["net.head.weight"] * k
            state["net.head.bias"] = (state["net.head.bias"] - median) * k
            torch.save(data, ckpt)
        prob = Predictor([run], device="cpu").probs_at_model_size([image])[0]
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    cfg["postprocess"]["threshold"] = float(np.quantile(prob, MASK_QUANTILE))
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    return run


@pytest.fixture(scope="module")
def box(ohif_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PacsBox]:
    with PacsBox(str(ohif_run), tmp_path_factory.mktemp("box"), ohif_dir=OHIF_DIR) as started:
        yield started


@pytest.fixture(scope="module")
def driver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """WebGL through SwiftShader (OHIF's viewport needs it), device pixels = CSS pixels."""
    with chromium(tmp_path_factory.mktemp("chromium-profile"), page_load_timeout=60,
                  extra_args=("--enable-unsafe-swiftshader", "--use-angle=swiftshader",
                              "--force-device-scale-factor=1")) as drv:
        yield drv


def _screenshot(drv: object, tmp_path: Path, name: str) -> np.ndarray:
    """Save a screenshot (``save_screenshot``); its RGB pixels."""
    return cv2.cvtColor(cv2.imread(str(save_screenshot(drv, tmp_path, name))), cv2.COLOR_BGR2RGB)


def _wait(drv: object, what: str, condition: object, timeout: float = 45) -> object:
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(drv, timeout, poll_frequency=0.25).until(condition, message=f"OHIF: no {what}")


def test_ohif_server_serves_dist_routes_config_and_dicomweb(tmp_path: Path) -> None:
    """Without Orthanc or OHIF: files of dist/, index.html for client routes, nothing outside dist/, the
    generated app-config.js naming the box's DICOMweb root, and /dicom-web/ passed to the upstream as is."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
    from threading import Thread

    import requests

    dist = tmp_path / "dist"
    (dist / "sub").mkdir(parents=True)
    (dist / "index.html").write_text("<html>ohif</html>")
    (dist / "sub" / "a.js").write_text("var a = 1;")
    (dist / "app-config.js").write_text("window.config = {dataSources: ['aws']};")
    (tmp_path / "secret.txt").write_text("secret")
    seen: list[tuple[str, str, bytes]] = []

    class Upstream(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def _answer(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            seen.append((self.command, self.path, body))
            self.send_response(200)
            self.send_header("Content-Type", "application/dicom+json")
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"[]")

        do_GET = do_POST = _answer

    upstream = ThreadingHTTPServer(("127.0.0.1", 0), Upstream)
    Thread(target=upstream.serve_forever, daemon=True).start()
    server = OhifServer(dist, upstream.server_address[1]).start()
    try:
        get = lambda path: requests.get(server.url + path, timeout=10)  # noqa: E731
        assert get("/sub/a.js").text == "var a = 1;"
        assert get("/viewer?StudyInstanceUIDs=1.2.3").text == "<html>ohif</html>"  # SPA fallback
        assert get("/../secret.txt").text == "<html>ohif</html>"
        assert get("/%2e%2e/secret.txt").text == "<html>ohif</html>"
        config = get("/app-config.js").text
        assert f'"wadoRoot": "{server.url}/dicom-web"' in config and "aws" not in config
        answer = get("/dicom-web/studies?PatientID=x")
        assert answer.status_code == 200 and answer.json() == []
        assert answer.headers["Content-Type"] == "application/dicom+json"
        assert requests.post(server.url + "/dicom-web/studies", data=b"abc", timeout=10).status_code == 200
        assert seen == [("GET", "/dicom-web/studies?PatientID=x", b""), ("POST", "/dicom-web/studies", b"abc")]
        assert requests.post(server.url + "/viewer", timeout=10).status_code == 405
        idle = http.client.HTTPConnection("127.0.0.1", server.server_address[1], timeout=10)
        idle.request("GET", "/sub/a.js")
        assert idle.getresponse().read() == b"var a = 1;"  # the connection stays open (HTTP/1.1 keep-alive)
    finally:
        start = time.monotonic()
        server.stop()
        assert time.monotonic() - start < 5, "stop() waits for an idle keep-alive connection"
        upstream.shutdown()
        upstream.server_close()


@require_siim
@pytest.mark.slow
@needs_browser_orthanc_ohif
def test_ohif_draws_the_seg_over_the_radiograph(box: PacsBox, driver: object, tmp_path: Path) -> None:
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    start = time.monotonic()
    sent = box.send([SOURCE])
    box.wait_processed(sent, timeout=120)
    (study, (source_uid,)), = sent.items()
    assert box.results(study) == {"CR": 1, "SEG": 1}
    assert box.orthanc is not None
    seg_id = box.orthanc.rest("POST", "/tools/find", {"Level": "Instance", "Query": {"Modality": "SEG"}})[0]
    seg = pydicom.dcmread(io.BytesIO(box.orthanc.file(seg_id)))
    mask = np.asarray(seg.pixel_array).reshape(int(seg.Rows), int(seg.Columns)).astype(bool)
    assert 0.03 < mask.mean() < 0.3, mask.mean()

    url = box.viewer_url(study).replace("/viewer?", "/segmentation?")  # OHIF's segmentation mode: the segment panel
    print(f"OHIF: {url}")
    driver.get(url)  # type: ignore[attr-defined]
    thumbnail = _wait(driver, "SEG in the study browser", lambda d: next(
        iter(d.find_elements(By.XPATH, "//*[starts-with(normalize-space(text()), 'pneumoseg SEG')]")), False))
    ActionChains(driver).double_click(thumbnail).perform()
    yes = _wait(driver, "prompt to open the SEG", lambda d: next(iter(d.find_elements(
        By.XPATH, "//button[normalize-space(.)='Yes']")), False))
    yes.click()  # type: ignore[attr-defined]
    _wait(driver, "segment labelled Pneumothorax", lambda d: d.find_elements(
        By.XPATH, "//*[normalize-space(text())='Pneumothorax']"))
    time.sleep(2)  # the labelmap is drawn on the next render
    rect = _wait(driver, "viewport showing the radiograph", lambda d: d.execute_script(IMAGE_RECT, source_uid))
    shot = _screenshot(driver, tmp_path, "ohif_seg.png").astype(np.int16)
    assert rect["dpr"] == 1, rect

    # the page's pixels over the image, resampled to the image's grid (1024 x 1024)
    x0, y0, x1, y1 = (round(rect[k]) for k in ("x0", "y0", "x1", "y1"))
    vx0, vy0, vx1, vy1 = (round(rect[k]) for k in ("vx0", "vy0", "vx1", "vy1"))
    assert x1 - x0 > 300 and y1 - y0 > 300, rect  # not a thumbnail
    assert vx0 <= x0 and vy0 <= y0 and x1 <= vx1 + 1 and y1 <= vy1 + 1, rect  # the whole image is in view
    region = shot[y0:y1, x0:x1]
    red = (region[..., 0] - np.maximum(region[..., 1], region[..., 2])) > 25  # grey radiograph: R = G = B
    red_on_grid = cv2.resize(red.astype(np.uint8), (mask.shape[1], mask.shape[0]), interpolation=cv2.INTER_NEAREST) > 0
    scale = mask.shape[1] / (x1 - x0)  # image pixels per screen pixel
    inside = cv2.erode(mask.astype(np.uint8), np.ones((3, 3), np.uint8), iterations=int(3 * scale) + 1) > 0
    near = cv2.dilate(mask.astype(np.uint8), np.ones((3, 3), np.uint8), iterations=int(4 * scale) + 2) > 0
    coloured_inside = red_on_grid[inside].mean()
    far = red_on_grid & ~near
    print(f"mask {mask.mean():.3f} of the image; coloured inside {coloured_inside:.3f}; coloured far outside "
          f"{far.sum()} px of {red_on_grid.sum()}; {time.monotonic() - start:.0f} s")
    assert coloured_inside > 0.9, "OHIF does not draw the segmentation where the mask is"
    assert far.sum() <= 0.002 * red_on_grid.sum(), "segmentation colour far from the mask"
    # outside the image but inside the viewport: nothing red (the overlay is not shifted off the image)
    viewport = shot[vy0:vy1, vx0:vx1].copy()
    viewport[y0 - vy0:y1 - vy0, x0 - vx0:x1 - vx0] = 0
    assert ((viewport[..., 0] - np.maximum(viewport[..., 1], viewport[..., 2])) > 25).sum() < 50
