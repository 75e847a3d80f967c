"""The web page in a real browser (Debian's chromium + chromium-driver through selenium, headless).

Uploads the nuclei image through the page, waits for the overlay, reads the object count from the
page and checks it against `unetkit predict --measure` on the same file. The screenshot is kept in
`test-artifacts/serve-page.png` (git-ignored).
"""
from __future__ import annotations

import csv
import shutil
import socket
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="serving needs the 'serve' extra: pip install 'unetkit[serve]'")
selenium = pytest.importorskip("selenium", reason="the browser test needs selenium (pip install selenium)")

from _serve_helpers import nuclei_model_file, nuclei_png  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from unetkit.cli.main import app as cli  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (CHROMIUM and DRIVER), reason="no Chromium: install Debian's chromium and "
                       "chromium-driver (scripts/setup.sh does where apt is available) to run the browser test"),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def server():
    import uvicorn

    from unetkit.serve import create_app

    port = _free_port()
    config = uvicorn.Config(create_app([str(nuclei_model_file())]), host="127.0.0.1", port=port, log_level="warning")
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not srv.started and time.time() < deadline:
        time.sleep(0.05)
    assert srv.started, "the server did not start"
    yield f"http://127.0.0.1:{port}"
    srv.should_exit = True
    thread.join(10)


@pytest.fixture
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1360,1200", "--force-device-scale-factor=1"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    yield driver
    driver.quit()


def test_page_counts_nuclei_like_predict_measure(server: str, browser, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    image = nuclei_png(tmp_path)
    result = CliRunner().invoke(cli, ["predict", str(nuclei_model_file()), str(image), "--out", str(tmp_path / "out"),
                                      "--measure", "--no-overlay"])
    assert result.exit_code == 0, result.output
    with open(tmp_path / "out" / "counts.csv", newline="") as f:
        expected = int(next(csv.DictReader(f))["total"])
    assert expected > 0

    browser.get(server + "/")
    wait = WebDriverWait(browser, 120)
    wait.until(ec.element_to_be_clickable((By.ID, "model")))
    browser.find_element(By.ID, "files").send_keys(str(image))
    card = wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, ".card[data-state]")))
    assert card.get_attribute("data-state") == "done", card.text
    overlay = card.find_element(By.CSS_SELECTOR, ".view-overlay")
    assert overlay.get_attribute("data-ready") == "true"
    assert (overlay.get_property("width"), overlay.get_property("height")) == (512, 512)
    shown = int(card.find_element(By.CSS_SELECTOR, "[data-testid=count-total]").text)
    # the overlay really shows the mask: some pixels are tinted with the class colour
    tinted = browser.execute_script(
        "const c = arguments[0].getContext('2d').getImageData(0, 0, 512, 512).data; let n = 0;"
        "for (let i = 0; i < c.length; i += 4) if (c[i] !== c[i + 1]) n++; return n;", overlay)
    ARTIFACTS.mkdir(exist_ok=True)
    browser.find_element(By.CSS_SELECTOR, ".table-box summary").click()
    browser.save_screenshot(str(ARTIFACTS / "serve-page.png"))
    assert shown == expected
    assert tinted > 1000

    # a bad file gets a clear message on the page, not a broken card
    bad = tmp_path / "notes.txt"
    bad.write_text("not an image")
    browser.find_element(By.ID, "files").send_keys(str(bad))
    wait.until(lambda d: d.find_element(By.CSS_SELECTOR, ".card").get_attribute("data-state") == "failed")
    message = browser.find_element(By.CSS_SELECTOR, ".card .message").text
    assert "415" in message and "notes.txt" in message and "unsupported file type" in message
