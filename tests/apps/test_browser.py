"""The page in a real headless Chromium: upload an image, read the displayed probability, compare with the JSON route.

Needs Debian's `chromium` and `chromium-driver` (.ci/run installs them); skipped with a message where they are missing.
Set CHESTXRAY_SCREENSHOT=PATH to also save a screenshot of the page (docs/serve-page.png is made this way,
from a synthetic phantom).
"""

import os
import shutil
import socket
import threading
import time

import httpx
import pytest

from chestxray.apps.serve import create_app
from chestxray.data.synthetic import make_dataset

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
DRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(not (CHROMIUM and DRIVER), reason="no Chromium and chromedriver here (apt install chromium chromium-driver)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tiny_run):
    import uvicorn

    port = free_port()
    config = uvicorn.Config(create_app(tiny_run), host="127.0.0.1", port=port, log_level="warning")
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    for _ in range(200):
        try:
            if httpx.get(url + "/ready", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.05)
    yield url
    srv.should_exit = True
    thread.join(10)


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--window-size=1200,820"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    yield driver
    driver.quit()


def test_page_shows_the_probability_of_the_json_route(server, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    # a synthetic phantom (no X-ray pixels from the shared data in the screenshot)
    phantom = next((make_dataset(tmp_path / "phantom", {"covid": 1, "normal": 1}, size=256, seed=7) / "train").rglob("*.png"))
    expected = httpx.post(server + "/predict", files=[("files", (phantom.name, phantom.read_bytes(), "image/png"))]).json()
    p = expected["predictions"][0]

    browser.get(server + "/")
    WebDriverWait(browser, 20).until(lambda d: "efficientnet" in d.find_element(By.ID, "model-line").text)
    browser.find_element(By.ID, "file").send_keys(str(phantom))
    browser.find_element(By.ID, "go").click()
    shown = WebDriverWait(browser, 60).until(EC.visibility_of_element_located((By.ID, "p-infected")))
    WebDriverWait(browser, 60).until(lambda d: d.find_element(By.ID, "p-infected").get_attribute("data-p"))
    assert float(shown.get_attribute("data-p")) == p["p_infected"]
    assert shown.text == f"{p['p_infected']:.3f}"
    assert browser.find_element(By.ID, "threshold").text == f"{p['threshold']:.3f}"
    assert browser.find_element(By.ID, "label").text.lower() == p["predicted"]
    assert "not a diagnostic device" in browser.find_element(By.ID, "research-warning").text
    WebDriverWait(browser, 60).until(lambda d: d.find_element(By.ID, "overlay").get_attribute("src").startswith("data:image/png"))
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert not errors, errors
    if os.environ.get("CHESTXRAY_SCREENSHOT"):
        time.sleep(0.5)
        browser.save_screenshot(os.environ["CHESTXRAY_SCREENSHOT"])


def test_page_shows_the_error_of_a_bad_upload(server, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    bad = tmp_path / "notes.png"
    bad.write_text("not an image at all")
    browser.get(server + "/")
    browser.find_element(By.ID, "file").send_keys(str(bad))
    browser.find_element(By.ID, "go").click()
    WebDriverWait(browser, 30).until(lambda d: d.find_element(By.ID, "error").is_displayed())
    text = browser.find_element(By.ID, "error").text
    assert "415" in text and "notes.png" in text
