"""Headless Chromium for the browser tests (the viewer, OHIF): where it is, why a test skips, a driver.

``chromium`` needs the selenium package and skips the test (with the reason) where it is missing;
``needs_chromium`` skips where the Chromium or ChromeDriver binary is missing.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
#: why a headless browser test cannot run on this machine, or None
MISSING_CHROMIUM: str | None = (
    None if CHROMIUM.exists() and CHROMEDRIVER.exists()
    else f"headless browser test needs {CHROMIUM} and {CHROMEDRIVER} (Debian: apt-get install chromium chromium-driver)")
needs_chromium = pytest.mark.skipif(MISSING_CHROMIUM is not None, reason=str(MISSING_CHROMIUM))

#: every test's flags: a headless, sandbox-free, quiet browser with a 1400 x 1000 CSS px window
COMMON_ARGS = ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-background-networking",
               "--disable-component-update", "--no-first-run", "--window-size=1400,1000")


@contextmanager
def chromium(profile: Path, extra_args: Sequence[str] = ("--disable-gpu",), downloads: Path | None = None,
             page_load_timeout: float = 30) -> Iterator[Any]:
    """A headless Chromium WebDriver with its profile in ``profile``, quit after the block.

    ``extra_args``: flags besides ``COMMON_ARGS`` (default: no GPU); ``downloads``: where downloads land,
    without a prompt; ``page_load_timeout`` in seconds. Skips the test where selenium is not installed.
    """
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium not installed")
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = str(CHROMIUM)
    for arg in (*COMMON_ARGS, *extra_args, f"--user-data-dir={profile}"):
        options.add_argument(arg)
    if downloads is not None:
        options.add_experimental_option("prefs", {"download.default_directory": str(downloads),
                                                  "download.prompt_for_download": False})
    drv = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    drv.set_page_load_timeout(page_load_timeout)
    try:
        yield drv
    finally:
        drv.quit()


def save_screenshot(drv: Any, folder: Path, name: str) -> Path:
    """Save a screenshot to ``folder / name`` (its path printed), copied to $PNEUMOSEG_SCREENSHOT_DIR when set."""
    path = folder / name
    drv.save_screenshot(str(path))
    print(f"screenshot: {path}")
    keep = os.environ.get("PNEUMOSEG_SCREENSHOT_DIR")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(keep) / name)
    return path
