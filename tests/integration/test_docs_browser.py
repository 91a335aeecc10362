"""/docs and /redoc in a real browser (headless Chromium driven by Selenium) against the real
stack: each renders the document, every request it makes goes to the API itself (or is blocked
by the page's policy before it leaves the browser), and Swagger UI's "Try it out" sends the key
given to its Authorize button as ``Authorization: Bearer <key>``.

Needs Debian's ``chromium`` and ``chromium-driver``; without them these tests are skipped.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator

import pytest

from harness import Stack

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER), reason="needs Debian's chromium and chromium-driver"),
]
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--window-size=1280,900")
WAIT_S = 30


@pytest.fixture
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator:  # type: ignore[type-arg]
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    options.set_capability("goog:loggingPrefs", {"performance": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
    driver.set_page_load_timeout(WAIT_S)
    try:
        yield driver
    finally:
        driver.quit()


def requests_made(driver) -> tuple[list[dict], set[str]]:  # type: ignore[no-untyped-def]
    """(each request the page asked for: url, method, headers; the ids of those the browser
    blocked by the Content-Security-Policy), from Chromium's DevTools log since the last call."""
    asked, blocked = [], set()
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            asked.append({"id": message["params"]["requestId"], **message["params"]["request"]})
        elif message["method"] == "Network.loadingFailed" and message["params"].get("blockedReason") == "csp":
            blocked.add(message["params"]["requestId"])
    return asked, blocked


def assert_only_own_origin(driver, base_url: str) -> list[dict]:  # type: ignore[no-untyped-def]
    asked, blocked = requests_made(driver)
    # Only what goes over a network: not data:, blob:, nor the browser's own chrome:// new tab page.
    elsewhere = [r["url"] for r in asked if r["id"] not in blocked and r["url"].startswith(("http", "ws"))
                 and not r["url"].startswith(base_url + "/")]
    assert not elsewhere, f"requests that left for another origin: {elsewhere}"
    return asked


def test_swagger_ui_sends_the_key_given_to_authorize_and_nothing_elsewhere(browser, stack: Stack) -> None:  # type: ignore[no-untyped-def]
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, WAIT_S)
    browser.get(f"{stack.api_url}/docs")
    title = wait.until(ec.visibility_of_element_located((By.CSS_SELECTOR, ".swagger-ui .info .title")))
    assert "Listing-photo recognition API" in title.text
    assert {"/docs", "/redoc", "/openapi.json"} <= {
        "/" + a.get_attribute("href").split("/", 3)[-1] for a in browser.find_elements(By.CSS_SELECTOR, ".info a")}

    browser.find_element(By.CSS_SELECTOR, "button.authorize").click()
    dialog = wait.until(ec.visibility_of_element_located((By.CSS_SELECTOR, ".modal-ux")))
    assert "ApiKey" in dialog.text and "Bearer" in dialog.text
    dialog.find_element(By.CSS_SELECTOR, "input").send_keys(stack.api_key)
    dialog.find_element(By.CSS_SELECTOR, "button.authorize").click()
    dialog.find_element(By.CSS_SELECTOR, "button.btn-done").click()

    operation = "#operations-recognitions-recognition_get"
    browser.find_element(By.CSS_SELECTOR, f"{operation} .opblock-summary-control").click()
    wait.until(ec.element_to_be_clickable((By.CSS_SELECTOR, f"{operation} .try-out__btn"))).click()
    browser.find_element(By.CSS_SELECTOR, f"{operation} input[placeholder='job_id']").send_keys("0" * 32)
    browser.find_element(By.CSS_SELECTOR, f"{operation} .execute").click()
    status = wait.until(ec.visibility_of_element_located(
        (By.CSS_SELECTOR, f"{operation} .live-responses-table .response .response-col_status")))
    assert status.text.strip().startswith("404")  # the key was taken: no such job, rather than a 401

    asked = assert_only_own_origin(browser, stack.api_url)
    tried = [r for r in asked if "/v1/recognitions/" in r["url"]]
    assert tried and tried[-1]["headers"].get("Authorization") == f"Bearer {stack.api_key}"


def test_redoc_renders_the_document_and_asks_nothing_of_another_origin(browser, stack: Stack) -> None:  # type: ignore[no-untyped-def]
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(f"{stack.api_url}/redoc")
    heading = WebDriverWait(browser, WAIT_S).until(ec.visibility_of_element_located((By.CSS_SELECTOR, "h1")))
    assert "Listing-photo recognition API" in heading.text
    assert "image_too_large" in browser.page_source  # the error codes' enum, with their meanings
    assert_only_own_origin(browser, stack.api_url)
