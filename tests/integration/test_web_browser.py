"""The web page in a real browser (headless Chromium driven by Selenium) against the real stack:
Gunicorn, Redis and a worker with the real reference model. Each state it reaches is saved as a
screenshot under var/screenshots/ (desktop, and a phone's 390×844 where the layout differs).

Needs Debian's ``chromium`` and ``chromium-driver`` (scripts/setup installs them when run as
root); without them these tests are skipped, saying which package is missing.
"""

from __future__ import annotations

import base64
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image

from common.jobstore import JobStore
from harness import ROOT, Stack
from recognition_api.auth import new_key

SCREENSHOTS = ROOT / "var" / "screenshots"
DESKTOP = (1280, 900)
PHONE = (390, 844)
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync")
WAIT_S = 90


def _browser_programs() -> tuple[str | None, str | None, str]:
    """(chromium, chromedriver, what is missing: the Debian packages to install, or "")."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    missing = [package for package, found in (("chromium", chromium), ("chromium-driver", driver)) if not found]
    return chromium, driver, " and ".join(missing)


CHROMIUM, CHROMEDRIVER, MISSING = _browser_programs()
# Decided when the module is collected, so that a machine without a browser starts no stack for it.
pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(bool(MISSING), reason=f"the browser tests need Debian's {MISSING} package(s), missing "
                       "here: apt-get install -y chromium chromium-driver (scripts/setup installs them as root)"),
]


class Page:
    """One Chromium with a fresh profile, on the page of one API."""

    def __init__(self, driver, base_url: str) -> None:  # type: ignore[no-untyped-def]
        self.driver = driver
        self.base_url = base_url

    def open(self, path: str = "/", *, size: tuple[int, int] = DESKTOP) -> None:
        self.resize(size)
        self.driver.get(self.base_url + path)
        self.driver.execute_script("sessionStorage.clear()")
        self.driver.get(self.base_url + path)

    def resize(self, size: tuple[int, int]) -> None:
        width, height = size
        phone = size == PHONE
        self.driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
            "width": width, "height": height, "deviceScaleFactor": 2 if phone else 1, "mobile": phone})
        # A phone's touch screen: its (pointer: coarse) styles apply.
        self.driver.execute_cdp_cmd("Emulation.setTouchEmulationEnabled", {"enabled": phone, "maxTouchPoints": 5})

    def by_id(self, element_id: str):  # type: ignore[no-untyped-def]
        from selenium.webdriver.common.by import By

        return self.driver.find_element(By.ID, element_id)

    def text(self, selector: str) -> str:
        from selenium.webdriver.common.by import By

        return self.driver.find_element(By.CSS_SELECTOR, selector).text

    def visible(self, element_id: str, timeout: float = WAIT_S) -> None:
        from selenium.webdriver.support.ui import WebDriverWait

        WebDriverWait(self.driver, timeout).until(lambda d: self.by_id(element_id).is_displayed())

    def first_visible(self, *element_ids: str, timeout: float = WAIT_S) -> str:
        from selenium.webdriver.support.ui import WebDriverWait

        return WebDriverWait(self.driver, timeout).until(
            lambda d: next((i for i in element_ids if self.by_id(i).is_displayed()), False))

    def enter_key(self, key: str) -> None:
        self.by_id("key-input").send_keys(key)
        self.driver.find_element("css selector", "#key-form button[type=submit]").click()
        self.visible("key-saved", 5)

    def choose(self, path: Path) -> None:
        self.by_id("file-input").send_keys(str(path))

    def fits_its_width(self) -> bool:
        return self.driver.execute_script(
            "return document.documentElement.scrollWidth <= window.innerWidth")

    def requested_urls(self) -> list[str]:
        return self.driver.execute_script(
            "return [location.href].concat(performance.getEntriesByType('resource').map(e => e.name))")

    def screenshot(self, name: str) -> Path:
        """The whole page (not only the viewport), as a PNG under var/screenshots/."""
        metrics = self.driver.execute_cdp_cmd("Page.getLayoutMetrics", {})
        content = metrics.get("cssContentSize") or metrics["contentSize"]
        shot = self.driver.execute_cdp_cmd("Page.captureScreenshot", {
            "format": "png", "captureBeyondViewport": True,
            "clip": {"x": 0, "y": 0, "width": content["width"], "height": content["height"], "scale": 1}})
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        path = SCREENSHOTS / f"{name}.png"
        path.write_bytes(base64.b64decode(shot["data"]))
        return path


@pytest.fixture(scope="module")
def web(stack: Stack) -> Iterator[tuple[Stack, str]]:
    """A second Gunicorn on the stack's Redis (and so its worker) that also knows an ``ops`` key
    and writes its access log: (that stack, the ops key)."""
    ops_key, digest = new_key()
    env = {**stack.env, "API_KEYS": f"{stack.env['API_KEYS']},ops:{digest};scopes=ops", "API_ACCESS_LOG": "1"}
    served = Stack(stack.tmp, env, stack.api_key, stack.redis_url)
    served.start_api()
    try:
        yield served, ops_key
    finally:
        served.stop()


@pytest.fixture(scope="module")
def page(web: tuple[Stack, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Page]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    options.add_argument(f"--window-size={DESKTOP[0]},{DESKTOP[1]}")
    driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
    driver.set_page_load_timeout(30)
    try:
        yield Page(driver, web[0].api_url)
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def coffee_file(coffee: Image.Image, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("photos") / "coffee.jpg"
    coffee.save(path, quality=92)
    return path


@pytest.fixture(scope="module")
def text_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("photos") / "listing.txt"
    path.write_text("A red espresso cup, barely used.\n")
    return path


def _recognize(page: Page, photo: Path) -> str:
    page.choose(photo)
    return page.first_visible("result", "error")


@pytest.mark.parametrize("size", [DESKTOP, PHONE], ids=["desktop", "phone"])
def test_a_photo_shows_the_suggestions_with_their_confidence(
    page: Page, web: tuple[Stack, str], coffee_file: Path, size: tuple[int, int],
) -> None:
    stack, _ = web
    page.open("/", size=size)
    page.enter_key(stack.api_key)
    assert _recognize(page, coffee_file) == "result", page.text("#error")
    assert page.text('[data-field="category"] .field-value') == "kitchen_tableware"
    assert page.text('[data-field="color"] .field-value') == "red"
    assert "version 1" in page.text("#result-model")
    # A field below its threshold says so, with both numbers.
    brand = page.text('[data-field="brand"]')
    assert "left blank" in brand and "below this field's threshold" in brand
    assert "Inference" in page.text("#timings") and "Total (server)" in page.text("#timings")
    assert page.text("#progress-text").startswith("Done")
    assert page.by_id("progress-bar").get_attribute("aria-valuenow") == "100"
    assert page.fits_its_width()
    name = "recognize-desktop" if size == DESKTOP else "recognize-phone"
    page.screenshot(name)


def test_a_big_photo_is_scaled_down_in_the_browser_before_upload(
    page: Page, web: tuple[Stack, str], coffee: Image.Image, tmp_path: Path,
) -> None:
    stack, _ = web
    big = tmp_path / "big.jpg"
    coffee.resize((3000, 2000)).save(big, quality=90)
    page.open("/")
    page.enter_key(stack.api_key)
    assert _recognize(page, big) == "result", page.text("#error")
    job = JobStore(stack.redis(), stack.env["REDIS_KEY_PREFIX"]).get(page.text("#result-id"))
    assert job is not None and (job["image_width"], job["image_height"]) == ("2048", "1365")
    assert page.text('[data-field="category"] .field-value') == "kitchen_tableware"


def test_the_sellers_feedback_is_sent(page: Page, web: tuple[Stack, str], coffee_file: Path) -> None:
    stack, _ = web
    page.open("/")
    page.enter_key(stack.api_key)
    assert _recognize(page, coffee_file) == "result"
    color = page.driver.find_element("css selector", "#feedback input[name=color]")
    color.clear()
    color.send_keys("burgundy")
    page.driver.find_element("css selector", "#feedback button[type=submit]").click()
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(page.driver, 10).until(lambda d: "Thank you" in page.text("#feedback-status"))
    status = page.text("#feedback-status")
    assert "category: accepted" in status and "color: changed" in status
    page.screenshot("feedback-desktop")


def test_a_text_file_shows_the_apis_message(page: Page, web: tuple[Stack, str], text_file: Path) -> None:
    stack, _ = web
    with stack.client() as client:
        expected = client.post("/v1/recognize", files={"image": ("listing.txt", text_file.read_bytes())}).json()
    assert expected["error"]["code"] == "image_not_an_image"
    page.open("/")
    page.enter_key(stack.api_key)
    assert _recognize(page, text_file) == "error"
    assert page.text("#error-code") == "image_not_an_image"
    assert page.text("#error-message") == expected["error"]["message"]
    assert "HTTP 415" in page.text("#error-title")
    page.screenshot("error-not-an-image-desktop")


def test_a_wrong_key_shows_the_401_message(page: Page, coffee_file: Path) -> None:
    page.open("/", size=PHONE)
    page.enter_key("rk_this-key-is-wrong")
    assert _recognize(page, coffee_file) == "error"
    assert page.text("#error-code") == "invalid_api_key"
    assert page.text("#error-message") == "This API key is not valid."
    assert "HTTP 401" in page.text("#error-title")
    assert page.fits_its_width()
    page.screenshot("error-wrong-key-phone")


@pytest.mark.parametrize("size", [DESKTOP, PHONE], ids=["desktop", "phone"])
def test_the_rollout_view_shows_the_active_version_to_an_ops_key(
    page: Page, web: tuple[Stack, str], size: tuple[int, int],
) -> None:
    _, ops_key = web
    page.open("/", size=size)
    page.enter_key(ops_key)
    page.driver.find_element("css selector", '[data-tab="rollout"]').click()  # a tab: no reload
    assert page.driver.current_url.endswith("/rollout")
    assert page.first_visible("rollout-state", "rollout-error") == "rollout-state", page.text("#rollout-error")
    assert page.text('[data-item="active"] dd') == "1"
    card = page.text('.version[data-version="1"]')
    assert "active" in card.lower() and "Ready workers" in card and "Queue depth" in card
    assert "Live accuracy" in card and "category" in card
    assert int(page.text('.version[data-version="1"] [data-stat="ready_workers"] dd')) >= 1
    assert "recognize.1" in page.text('.version[data-version="1"] [data-stat="queue_depth"]')
    assert page.fits_its_width()
    page.screenshot("rollout-desktop" if size == DESKTOP else "rollout-phone")


def test_the_rollout_view_tells_a_key_without_the_ops_scope_why_not(page: Page, web: tuple[Stack, str]) -> None:
    stack, _ = web
    page.open("/rollout")
    page.enter_key(stack.api_key)
    assert page.first_visible("rollout-state", "rollout-error") == "rollout-error"
    assert page.text("#rollout-error-code") == "permission_denied"
    assert "'ops' scope" in page.text("#rollout-error-message")
    assert "HTTP 403" in page.text("#rollout-error-title")
    page.screenshot("rollout-forbidden-desktop")


def test_the_key_never_reaches_a_url_or_the_access_log(
    page: Page, web: tuple[Stack, str], coffee_file: Path,
) -> None:
    stack, ops_key = web
    page.open("/")
    page.enter_key(ops_key)
    assert _recognize(page, coffee_file) == "result"
    page.driver.find_element("css selector", '[data-tab="rollout"]').click()
    page.visible("rollout-state")
    urls = page.requested_urls()
    assert any("/v1/recognize?wait=" in url for url in urls) and any(url.endswith("/v1/rollout") for url in urls)
    assert not [url for url in urls if ops_key in url or stack.api_key in url]
    # The access log saw those requests, and never a key (any of the keys this module used).
    log = stack.processes[-1].output()
    access = [json.loads(line) for line in log.splitlines() if '"logger": "access"' in line]
    assert {"/v1/recognize", "/v1/rollout", "/"} <= {entry["path"] for entry in access}
    for key in (ops_key, stack.api_key, "rk_this-key-is-wrong"):
        assert key not in log
    # The page keeps the key in the tab's session storage only.
    assert page.driver.execute_script("return sessionStorage.getItem('recognition.apiKey')") == ops_key
    assert page.driver.execute_script("return localStorage.length") == 0
    assert ops_key not in page.driver.page_source


def test_the_page_loads_every_asset_from_the_service(page: Page) -> None:
    page.open("/", size=PHONE)
    assert page.by_id("key-form").is_displayed() and page.fits_its_width()
    page.screenshot("start-phone")
    urls = page.requested_urls()
    assert urls and all(url.startswith(page.base_url + "/") for url in urls)
    for url in urls:
        assert httpx.get(url).status_code == 200, url
