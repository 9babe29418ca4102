"""The `attnmap serve` page in a real headless browser (Debian's chromium and chromium-driver,
driven by selenium): it loads, shows the stream, and switching the method in the page changes
the map drawn on the stream, to exactly the overlay the Explainer gives for that method.

Skips only where chromium or its driver is not installed (`.ci/run` installs both)."""

from __future__ import annotations

import shutil
import time

import cv2
import httpx
import numpy as np
import pytest
from extras import need

from attnmap import Explainer
from attnmap.runtime.draw.style import OverlayStyle
from attnmap.runtime.engine.engine import Job
from attnmap.runtime.frames.synth import write_demo_inputs
from attnmap.runtime.fronts.serve.stream import StreamConfig

# serve_helpers and the server import starlette and uvicorn
need("starlette", "serve")
need("uvicorn", "serve")
from serve_helpers import SHIPPED, running_server  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(CHROMIUM is None or DRIVER is None,
                                reason="needs Debian's chromium and chromium-driver "
                                       "(apt-get install -y chromium chromium-driver)")


@pytest.fixture
def browser(tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
                 f"--user-data-dir={tmp_path / 'profile'}"):
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=DRIVER), options=opts)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def _expected_overlay(explainer: Explainer, path, method: str) -> np.ndarray:
    """What the stream loop draws without its HUD: the explanation's overlay without a caption."""
    ex = explainer.explain(str(path), method=method)
    return ex.overlay(OverlayStyle(label=False))


def _snapshot(url: str) -> np.ndarray:
    r = httpx.get(url + "/v1/stream/snapshot", timeout=30)
    assert r.status_code == 200, r.text
    return cv2.imdecode(np.frombuffer(r.content, np.uint8), cv2.IMREAD_COLOR)


def _wait_for(predicate, what: str, seconds: float = 60.0):
    deadline = time.monotonic() + seconds
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def test_page_shows_the_stream_and_its_method_control_changes_the_map(browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    images, _ = write_demo_inputs(tmp_path / "demo", seed=1, n_images=2, video_frames=2)
    still = images[1]  # a still image played in a loop: every frame is the same, only the map can change
    reference = Explainer(SHIPPED)
    rollout, attention = (_expected_overlay(reference, still, m) for m in ("rollout", "attention"))
    assert np.abs(rollout.astype(int) - attention.astype(int)).mean() > 1.0  # the two maps look different

    config = StreamConfig(hud=False, max_fps=10)
    with running_server(str(still), job=Job(method="rollout"), config=config) as (srv, stream):
        browser.get(srv.url + "/")
        img = browser.find_element(By.ID, "stream")
        _wait_for(lambda: browser.execute_script("return arguments[0].naturalWidth", img) == 192,
                  "the stream to show a 192-pixel frame")
        _wait_for(lambda: browser.find_element(By.TAG_NAME, "body").get_attribute("data-method") == "rollout",
                  "the page to read the state")
        assert browser.find_elements(By.CSS_SELECTOR, "#topk li"), "the page lists the top-k"
        assert browser.find_element(By.ID, "fps").text != "-"
        _wait_for(lambda: np.abs(_snapshot(srv.url).astype(int) - rollout.astype(int)).max() <= 1,
                  "the rollout overlay on the stream")

        Select(browser.find_element(By.ID, "method")).select_by_value("attention")

        _wait_for(lambda: httpx.get(srv.url + "/v1/stream/state").json()["state"]["method"] == "attention",
                  "the page's change to reach the server")
        _wait_for(lambda: np.abs(_snapshot(srv.url).astype(int) - attention.astype(int)).max() <= 1,
                  "the attention overlay on the stream")
        _wait_for(lambda: browser.find_element(By.TAG_NAME, "body").get_attribute("data-method") == "attention",
                  "the page to show the new method")
        assert browser.execute_script("return arguments[0].naturalWidth", img) == 192  # still streaming
        logs = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
        assert not logs, logs
