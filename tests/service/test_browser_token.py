"""Headless Chromium against a server started with a token: the page asks for it, then works as usual.

Skipped (with the reason) where Chromium or ChromeDriver is missing. Uses a synthetic DICOM only.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from pneumoseg.service import ServiceSettings
from tests.helpers.browser import chromium, needs_chromium
from tests.helpers.service import serve_run

TOKEN = "browser-token-0123456789abcdef"

pytestmark = needs_chromium
pytest.importorskip("selenium.webdriver", reason="selenium not installed")


@pytest.fixture(scope="module")
def token_server(trained_run: Path) -> Iterator[str]:
    with serve_run(trained_run, ServiceSettings(token=TOKEN)) as url:
        yield url


@pytest.fixture(scope="module")
def driver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    with chromium(tmp_path_factory.mktemp("chromium-token")) as drv:
        yield drv


def test_page_asks_for_the_token_then_uploads_and_opens_links_with_it(token_server: str, driver: object,
                                                                      synth_data: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    drv = driver
    wait = WebDriverWait(drv, 60)
    find = drv.find_element  # type: ignore[attr-defined]
    dicom = sorted((synth_data / "dicom").glob("*.dcm"))[0]
    drv.get(token_server + "/")  # type: ignore[attr-defined]
    wait.until(lambda d: d.find_element(By.ID, "auth").is_displayed())  # /health says a token is needed
    assert "model" in find(By.ID, "model").text

    find(By.ID, "file").send_keys(str(dicom))  # without the token: the 401 is explained
    wait.until(lambda d: "needs an access token" in d.find_element(By.ID, "status").text)  # the 401, in words

    find(By.ID, "token").send_keys(TOKEN + Keys.TAB)
    assert drv.execute_script("return sessionStorage.getItem('pneumoseg-token')") == TOKEN  # type: ignore[attr-defined]
    drv.execute_script("document.getElementById('file').value = ''")  # type: ignore[attr-defined]
    find(By.ID, "file").send_keys(str(dicom))
    wait.until(lambda d: d.find_element(By.ID, "result").get_attribute("data-state") == "ready")
    size = drv.execute_script(  # type: ignore[attr-defined]
        "const c = window.pneumosegViewer.layer(); return [c.width, c.height]")
    assert size == [256, 256]  # the image at its own resolution, fetched with the token
    assert find(By.ID, "area").text.endswith("px")

    result_id = find(By.ID, "result").get_attribute("data-id")
    main = drv.current_window_handle  # type: ignore[attr-defined]
    find(By.ID, "link-json").click()
    wait.until(lambda d: len(d.window_handles) == 2)
    drv.switch_to.window(next(h for h in drv.window_handles if h != main))  # type: ignore[attr-defined]
    wait.until(lambda d: result_id in d.find_element(By.TAG_NAME, "body").text)
    drv.close()  # type: ignore[attr-defined]
    drv.switch_to.window(main)  # type: ignore[attr-defined]
