"""End to end in headless Chromium: upload a real SIIM DICOM, see the overlay, move the sliders.

Skipped (with the reason) where Chromium, ChromeDriver or the shared sample is missing. Set
PNEUMOSEG_SCREENSHOT_DIR to keep the screenshots (always written under tmp_path too).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.shared_data import SIIM, require_siim

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")

pytestmark = [
    require_siim,
    pytest.mark.skipif(not (CHROMIUM.exists() and CHROMEDRIVER.exists()),
                       reason=f"headless browser test needs {CHROMIUM} and {CHROMEDRIVER} "
                              "(Debian: apt-get install chromium chromium-driver)"),
]
webdriver = pytest.importorskip("selenium.webdriver", reason="selenium not installed")

# Pixels of the canvas: how many are not black, how many are red-tinted (mask), and a checksum.
CANVAS_STATS = """
const c = document.getElementById('canvas');
const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
let nonBlack = 0, red = 0, sum = 0;
for (let i = 0; i < d.length; i += 4) {
  if (d[i] || d[i + 1] || d[i + 2]) nonBlack++;
  if (d[i] > d[i + 1] + 40) red++;
  sum = (sum + d[i] * 3 + d[i + 1] * 5 + d[i + 2] * 7) % 1000000007;
}
return {w: c.width, h: c.height, nonBlack, red, sum};
"""


@pytest.fixture(scope="module")
def driver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-background-networking", "--disable-component-update", "--no-first-run",
                "--window-size=1400,1000", f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        options.add_argument(arg)
    drv = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    drv.set_page_load_timeout(30)
    try:
        yield drv
    finally:
        drv.quit()


def _screenshot(drv: object, tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    drv.save_screenshot(str(path))  # type: ignore[attr-defined]
    keep = os.environ.get("PNEUMOSEG_SCREENSHOT_DIR")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(keep) / name)


def test_upload_dicom_draws_overlay_and_sliders_rethreshold(server: str, driver: object, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    drv = driver
    wait = WebDriverWait(drv, 60)
    dicom = sorted((SIIM / "dicom").glob("*.dcm"))[0]
    drv.get(server + "/")  # type: ignore[attr-defined]
    find = drv.find_element  # type: ignore[attr-defined]
    wait.until(lambda d: "model" in d.find_element(By.ID, "model").text)

    find(By.ID, "file").send_keys(str(dicom))
    wait.until(lambda d: d.find_element(By.ID, "result").get_attribute("data-state") == "ready")
    assert find(By.ID, "probability").text.strip()
    area0 = find(By.ID, "area").text
    assert area0.endswith("px")
    assert find(By.ID, "verdict").text.split("\n")[0] in ("Pneumothorax detected", "No pneumothorax detected")
    assert dicom.stem in find(By.ID, "meta").text
    stats0 = drv.execute_script(CANVAS_STATS)  # type: ignore[attr-defined]
    assert (stats0["w"], stats0["h"]) == (1024, 1024)
    assert stats0["nonBlack"] > 0.5 * 1024 * 1024, stats0  # the radiograph is drawn
    _screenshot(drv, tmp_path, "viewer-upload.png")

    # Threshold slider to its minimum, then its maximum: re-thresholded in the browser.
    slider = find(By.ID, "threshold")
    slider.send_keys(Keys.HOME)
    area_low, stats_low = find(By.ID, "area").text, drv.execute_script(CANVAS_STATS)  # type: ignore[attr-defined]
    slider.send_keys(Keys.END)
    area_high, stats_high = find(By.ID, "area").text, drv.execute_script(CANVAS_STATS)  # type: ignore[attr-defined]
    assert find(By.ID, "threshold-value").text == "0.99"
    assert len({area0, area_low, area_high}) > 1 or len({stats0["sum"], stats_low["sum"], stats_high["sum"]}) > 1
    assert stats_low["red"] >= stats_high["red"]
    assert int(area_low.replace(",", "").split()[0]) >= int(area_high.replace(",", "").split()[0])
    slider.send_keys(Keys.HOME)
    _screenshot(drv, tmp_path, "viewer-threshold-low.png")

    # Opacity 0: no tint at all.
    find(By.ID, "opacity").send_keys(Keys.HOME)
    assert drv.execute_script(CANVAS_STATS)["red"] == 0  # type: ignore[attr-defined]
    find(By.ID, "opacity").send_keys(Keys.END)
    assert drv.execute_script(CANVAS_STATS)["red"] >= stats_low["red"]  # type: ignore[attr-defined]

    # A non-image upload shows the server's 415 message; the page keeps working.
    bad = tmp_path / "notes.txt"
    bad.write_text("not a radiograph\n" * 20)
    drv.execute_script("window.scrollTo(0, 0)")  # type: ignore[attr-defined]
    find(By.ID, "file").send_keys(str(bad))
    wait.until(lambda d: "415" in d.find_element(By.ID, "status").text)
    assert "DICOM" in find(By.ID, "status").text
    _screenshot(drv, tmp_path, "viewer-error.png")
