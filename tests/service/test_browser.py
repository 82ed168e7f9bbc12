"""End to end in headless Chromium at 1400 x 1000: browse real SIIM DICOMs with their ground truth,
upload a real PNG, window/level on its values, zoom, invert, download, and a failed upload.

Skipped (with the reason) where Chromium, ChromeDriver or the shared sample is missing. Set
PNEUMOSEG_SCREENSHOT_DIR to keep the screenshots (always written under tmp_path too).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.request import urlopen

import cv2
import numpy as np
import pydicom
import pytest

from pneumoseg.service import ServiceSettings
from tests.helpers.browser import chromium, needs_chromium, save_screenshot
from tests.helpers.service import serve_run
from tests.shared_data import SIIM, require_siim

pytestmark = [require_siim, needs_chromium]
pytest.importorskip("selenium.webdriver", reason="selenium not installed")

# Grey values (red channel) of the composed image at the input's resolution, at given (x, y) points.
LAYER_AT = """
const c = window.pneumosegViewer.layer(), pts = arguments[0];
const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
return pts.map(([x, y]) => [d[4 * (y * c.width + x)], d[4 * (y * c.width + x) + 1], d[4 * (y * c.width + x) + 2]]);
"""
# Where the image lands in the page (CSS px) and the window's size.
GEOMETRY = """
const r = document.getElementById('canvas').dataset.rect;
return {rect: r ? r.split(',').map(Number) : null, vw: window.innerWidth, vh: window.innerHeight,
        state: window.pneumosegViewer.state()};
"""
# A checksum of the visible canvas.
VIEW_SUM = """
const c = document.getElementById('canvas');
const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
let s = 0; for (let i = 0; i < d.length; i += 4) s = (s + d[i] * 3 + d[i + 1] * 5 + (i % 9973)) % 1000000007;
return s;
"""


@pytest.fixture(scope="module")
def browse_server(trained_run: Path) -> Iterator[str]:
    settings = ServiceSettings(browse_dir=str(SIIM / "dicom"), truth=str(SIIM / "dicom" / "train-rle.csv"))
    with serve_run(trained_run, settings) as url:
        yield url


@pytest.fixture(scope="module")
def downloads(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("downloads")


@pytest.fixture(scope="module")
def driver(tmp_path_factory: pytest.TempPathFactory, downloads: Path) -> Iterator[object]:
    with chromium(tmp_path_factory.mktemp("chromium-profile"), downloads=downloads) as drv:
        yield drv


def _assert_whole_image_visible(drv: object) -> dict:
    geo = drv.execute_script(GEOMETRY)  # type: ignore[attr-defined]
    x, y, w, h = geo["rect"]
    assert x >= 0 and y >= 0 and x + w <= geo["vw"] + 0.5 and y + h <= geo["vh"] + 0.5, geo
    assert w > 400 and h > 400, geo  # and it is not a thumbnail
    return geo


def _ready(drv: object, previous: str | None = None):
    from selenium.webdriver.common.by import By

    def check(d: object) -> bool:
        el = d.find_element(By.ID, "result")  # type: ignore[attr-defined]
        return el.get_attribute("data-state") == "ready" and el.get_attribute("data-id") != previous
    return check


def _wait_file(folder: Path, suffix: str, timeout: float = 15.0) -> Path:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [p for p in folder.iterdir() if p.name.endswith(suffix)]
        if found:
            return found[0]
        time.sleep(0.1)
    raise AssertionError(f"no *{suffix} downloaded to {folder}: {sorted(p.name for p in folder.iterdir())}")


def test_browse_dicom_folder_with_truth_keys_side_by_side_and_seg_download(browse_server: str, driver: object,
                                                                          tmp_path: Path, downloads: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    drv, wait = driver, WebDriverWait(driver, 60)
    find = drv.find_element  # type: ignore[attr-defined]
    names = sorted(p.name for p in (SIIM / "dicom").glob("*.dcm"))
    drv.get(browse_server + "/")  # type: ignore[attr-defined]
    wait.until(_ready(drv))  # the first file opens by itself
    assert find(By.ID, "nav-pos").text == f"1 / {len(names)}"
    assert find(By.ID, "browse-list").get_attribute("value") == "0"
    first = find(By.ID, "result").get_attribute("data-id")
    _assert_whole_image_visible(drv)
    banner = find(By.ID, "banner")  # issue 21: what the model is, in the screenshot's first screen
    assert banner.is_displayed() and "not for clinical use" in banner.text
    assert "trained on" in banner.text.lower() and "synthetic" in banner.text.lower()  # the run's provenance
    box = drv.execute_script("const r = document.getElementById('banner').getBoundingClientRect();"  # type: ignore[attr-defined]
                             "return [r.top, r.bottom, window.innerHeight];")
    assert 0 <= box[0] < box[1] <= box[2], f"the banner is outside the first screen: {box}"
    save_screenshot(drv, tmp_path, "viewer-browse-1400x1000.png")

    find(By.TAG_NAME, "body").send_keys(Keys.ARROW_RIGHT)  # next image
    wait.until(_ready(drv, first))
    assert find(By.ID, "nav-pos").text == f"2 / {len(names)}"
    assert drv.execute_script(GEOMETRY)["state"]["index"] == 1  # type: ignore[attr-defined]
    assert names[1].removesuffix(".dcm") in find(By.ID, "meta").text
    assert "train-rle.csv" in find(By.ID, "truth-info").text and find(By.ID, "dice").text != "—"
    verdict = find(By.ID, "verdict").text
    summary = json.loads(urlopen(f"{browse_server}/predict/{find(By.ID, 'result').get_attribute('data-id')}").read())
    assert f"Rule applied: {summary['rule']}" in verdict and "mm²" in verdict  # the rule in words, area in mm²
    assert f"{summary['area_mm2']:.1f} mm²" in verdict.replace(",", "")

    find(By.TAG_NAME, "body").send_keys("s")  # side by side: truth left, prediction right
    assert find(By.ID, "layout").get_attribute("value") == "side"
    _assert_whole_image_visible(drv)
    save_screenshot(drv, tmp_path, "viewer-side-by-side.png")
    find(By.TAG_NAME, "body").send_keys("s")

    find(By.ID, "dl-seg").click()
    seg = pydicom.dcmread(_wait_file(downloads, ".seg.dcm"))
    referenced = seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0].ReferencedSOPInstanceUID
    assert seg.Modality == "SEG" and referenced == names[1].removesuffix(".dcm")

    second = find(By.ID, "result").get_attribute("data-id")
    find(By.ID, "prev").click()
    wait.until(_ready(drv, second))
    assert find(By.ID, "result").get_attribute("data-id") == first  # cached: the same stored result
    assert find(By.ID, "prev").get_attribute("disabled") is not None


def test_upload_png_window_level_zoom_invert_download_and_failed_upload(browse_server: str, driver: object,
                                                                        tmp_path: Path, downloads: Path) -> None:
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    drv, wait = driver, WebDriverWait(driver, 60)
    find = drv.find_element  # type: ignore[attr-defined]
    png = sorted((SIIM / "png" / "images").glob("*.png"))[0]
    pixels = cv2.imread(str(png), cv2.IMREAD_GRAYSCALE)
    drv.get(browse_server + "/")  # type: ignore[attr-defined]
    wait.until(_ready(drv))
    before = find(By.ID, "result").get_attribute("data-id")
    find(By.ID, "opacity").send_keys(Keys.HOME)  # no tint: the layer shows the windowed grey values
    find(By.ID, "file").send_keys(str(png))
    wait.until(_ready(drv, before))
    _assert_whole_image_visible(drv)
    save_screenshot(drv, tmp_path, "viewer-upload-png.png")

    rng = np.random.default_rng(0)
    pts = [[int(x), int(y)] for x, y in rng.integers(0, 1024, size=(40, 2))]
    values = np.array([pixels[y, x] for x, y in pts], dtype=np.float64)

    def grey(expected: np.ndarray | None = None) -> np.ndarray:
        """The canvas values at ``pts``; with ``expected``, polled until the page has redrawn (<= 3 s)."""
        deadline = time.monotonic() + 3
        while True:
            got = np.array([p[0] for p in drv.execute_script(LAYER_AT, pts)], dtype=np.float64)  # type: ignore[attr-defined]
            if expected is None or np.allclose(got, expected, atol=1) or time.monotonic() > deadline:
                return got
            time.sleep(0.05)

    np.testing.assert_array_equal(grey(values), values)  # default window on an 8-bit PNG: the identity
    view0 = drv.execute_script(VIEW_SUM)  # type: ignore[attr-defined]

    body = find(By.TAG_NAME, "body")
    body.send_keys("4")  # "narrow" preset: half the width around the same center
    st = drv.execute_script(GEOMETRY)["state"]  # type: ignore[attr-defined]
    assert (st["wc"], st["ww"]) == (127.5, 127.5)
    expected = np.clip(np.floor((values - (st["wc"] - st["ww"] / 2)) * 255 / st["ww"] + 0.5), 0, 255)
    np.testing.assert_allclose(grey(expected), expected, atol=1)
    assert drv.execute_script(VIEW_SUM) != view0  # type: ignore[attr-defined]

    canvas = find(By.ID, "canvas")
    ActionChains(drv).move_to_element(canvas).click_and_hold().move_by_offset(120, -60).release().perform()
    st2 = drv.execute_script(GEOMETRY)["state"]  # type: ignore[attr-defined]
    assert st2["ww"] > st["ww"] and st2["wc"] < st["wc"], (st, st2)  # right: wider; up: lower level
    expected = np.clip(np.floor((values - (st2["wc"] - st2["ww"] / 2)) * 255 / st2["ww"] + 0.5), 0, 255)
    dragged = grey(expected)
    np.testing.assert_allclose(dragged, expected, atol=1)
    assert find(By.ID, "preset").get_attribute("value") == "custom"

    body.send_keys("i")
    np.testing.assert_array_equal(grey(255 - dragged), 255 - dragged)
    body.send_keys("1")
    body.send_keys("i")

    w0 = drv.execute_script(GEOMETRY)["rect"][2]  # type: ignore[attr-defined]
    body.send_keys("+")
    time.sleep(0.1)
    geo = drv.execute_script(GEOMETRY)  # type: ignore[attr-defined]
    assert geo["state"]["zoom"] == pytest.approx(1.25) and geo["rect"][2] == pytest.approx(1.25 * w0, abs=1)
    save_screenshot(drv, tmp_path, "viewer-zoomed.png")
    body.send_keys("0")
    time.sleep(0.1)
    assert drv.execute_script(GEOMETRY)["rect"][2] == pytest.approx(w0, abs=0.5)  # type: ignore[attr-defined]

    find(By.ID, "dl-rle").click()
    rle = _wait_file(downloads, ".rle.txt").read_text().splitlines()
    assert rle[0] == "ImageId,EncodedPixels" and rle[1].split(",", 1)[1] == find(By.ID, "rle").get_attribute("value")
    assert not find(By.ID, "dl-seg").is_displayed()  # no DICOM SEG for a PNG upload

    bad = tmp_path / "notes.txt"
    bad.write_text("not a radiograph\n" * 20)
    find(By.ID, "file").send_keys(str(bad))
    wait.until(lambda d: "error" in d.find_element(By.ID, "status").get_attribute("class"))
    tech = find(By.CSS_SELECTOR, "#status .tech")
    assert not tech.is_displayed()  # the server's own message stays folded behind "details"
    status = drv.execute_script(  # type: ignore[attr-defined]
        "const s = document.getElementById('status').cloneNode(true); s.querySelector('.tech').remove(); "
        "return s.textContent")
    assert "not an image the viewer can read" in status and "DICOM" in status
    assert "b'" not in status and "415" not in status and "unsupported file type" in tech.get_attribute("textContent")
    assert find(By.ID, "result").get_attribute("data-state") == "empty" and not find(By.ID, "result").is_displayed()
    assert drv.execute_script(GEOMETRY)["rect"] is None  # type: ignore[attr-defined]  # the old image is gone
    save_screenshot(drv, tmp_path, "viewer-error.png")
