"""The web gallery end to end in headless Chromium (Debian ``chromium`` + ``chromium-driver``, Selenium):
submit a job from the page, watch it finish, see target, previews, samples ("sample again") and plots.
Screenshots go to ``test-artifacts/browser/`` (kept by CI as test artifacts)."""

from __future__ import annotations

import os
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import embedded_server, target_zip_bytes

ROOT = Path(__file__).resolve().parents[1]
SHOTS = Path(os.environ.get("MINEGAN_TEST_ARTIFACTS", ROOT / "test-artifacts")) / "browser"
BIN = Path(sys.executable).parent


def _need_browser() -> None:
    if shutil.which("chromium") and shutil.which("chromedriver"):
        return
    if os.environ.get("CI"):
        pytest.fail("chromium/chromedriver missing in CI (scripts/test.sh installs them)")
    pytest.skip("chromium and chromium-driver not installed (apt-get install chromium chromium-driver)")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    _need_browser()
    with embedded_server(tmp_path_factory.mktemp("gallery")) as (url, _):
        yield url


@pytest.fixture(scope="module")
def browser():  # type: ignore[no-untyped-def]
    _need_browser()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--window-size=1200,2000"):
        opts.add_argument(arg)
    opts.binary_location = shutil.which("chromium") or "chromium"
    drv = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=opts)
    yield drv
    drv.quit()


def _wait(fn, timeout: float = 120.0):  # type: ignore[no-untyped-def]
    """Poll ``fn`` until it returns something truthy. The gallery re-renders its status block on every
    poll, so an element found a moment ago can go stale (or briefly vanish) between lookup and read:
    that counts as "not yet", not as a failure."""
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException

    deadline = time.time() + timeout
    last = None
    while time.time() < deadline:
        try:
            v = fn()
        except (StaleElementReferenceException, NoSuchElementException) as exc:
            v, last = None, exc
        if v:
            return v
        time.sleep(0.3)
    raise AssertionError(f"timed out (last transient error: {last!r})")


def test_submit_watch_and_see_samples_in_the_browser(server: str, browser, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    SHOTS.mkdir(parents=True, exist_ok=True)
    target = tmp_path / "target.zip"
    target.write_bytes(target_zip_bytes())
    browser.get(server + "/")
    _wait(lambda: browser.find_elements(By.CSS_SELECTOR, "#sources option"))
    browser.find_element(By.ID, "images").send_keys(str(target))
    Select(browser.find_element(By.ID, "sources")).select_by_value("tiny-src")
    Select(browser.find_element(By.ID, "method")).select_by_visible_text("minegan")
    for field, value in (("mining", "20"), ("finetune", "10"), ("batch", "8")):
        el = browser.find_element(By.ID, field)
        el.clear()
        el.send_keys(value)
    browser.save_screenshot(str(SHOTS / "1-submit-form.png"))
    browser.find_element(By.ID, "go").click()
    _wait(lambda: "/ui/jobs/" in browser.current_url)
    browser.save_screenshot(str(SHOTS / "2-job-running.png"))
    _wait(lambda: browser.find_elements(By.ID, "state") and browser.find_element(By.ID, "state").text == "succeeded")
    loaded = "return arguments[0].complete && arguments[0].naturalWidth > 0"
    samples = _wait(lambda: browser.find_elements(By.ID, "samples"))[0]
    _wait(lambda: browser.execute_script(loaded, samples))
    assert browser.execute_script("return arguments[0].naturalWidth", samples) == 4 * 30 + 2  # a 4x4 grid of 28 px images
    target_img = browser.find_element(By.ID, "target")
    _wait(lambda: browser.execute_script(loaded, target_img))
    previews = browser.find_elements(By.CSS_SELECTOR, "#previews img")
    assert len(previews) >= 5 and all(_wait(lambda p=p: browser.execute_script(loaded, p)) for p in previews)
    plots = browser.find_elements(By.CSS_SELECTOR, "#plots img")
    assert {p.get_attribute("alt") for p in plots} >= {"losses.png", "metrics.png"}
    assert any(a.text == "model.pt" for a in browser.find_elements(By.CSS_SELECTOR, "#artifacts a"))
    browser.save_screenshot(str(SHOTS / "3-job-finished.png"))
    first = samples.get_attribute("src")
    browser.find_element(By.ID, "again").click()
    _wait(lambda: samples.get_attribute("src") != first and browser.execute_script(loaded, samples))
    assert browser.find_element(By.ID, "seed").text != "0"
    browser.save_screenshot(str(SHOTS / "4-sampled-again.png"))
    browser.get(server + "/")
    _wait(lambda: "succeeded" in browser.find_element(By.ID, "jobs").text)
    browser.save_screenshot(str(SHOTS / "5-jobs-list.png"))
    assert all((SHOTS / f).stat().st_size > 5000 for f in os.listdir(SHOTS))
