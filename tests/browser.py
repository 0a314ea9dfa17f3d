"""A real headless Chromium for the web console's tests, driven with Selenium.

The browser and its driver are Debian's packages (``apt-get install -y chromium
chromium-driver``; ``.ci/run`` and ``scripts/test.sh`` install them when missing). Browsers that
download themselves cannot be fetched here, so Selenium is told exactly which binaries to use
and never looks for others. A missing browser fails the test with that instruction: a console
that was never tested must not pass.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from typing import Any, TypeVar

import pytest
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException, TimeoutException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.wait import WebDriverWait

T = TypeVar("T")

INSTALL_HINT = (
    "the web console tests need a real browser: apt-get install -y chromium chromium-driver "
    "(scripts/test.sh and .ci/run install them when they can)"
)


def find_browser() -> tuple[str, str]:
    """Paths of the Chromium binary and its chromedriver; fails the test when either lacks."""
    binary = os.environ.get("CHROMIUM_BIN") or shutil.which("chromium")
    driver = os.environ.get("CHROMEDRIVER_BIN") or shutil.which("chromedriver")
    if not binary or not driver:
        missing = [
            name for name, path in (("chromium", binary), ("chromedriver", driver)) if not path
        ]
        pytest.fail(f"{', '.join(missing)} not found: {INSTALL_HINT}", pytrace=False)
    return binary, driver


def start_chromium(width: int = 1280, height: int = 900) -> WebDriver:
    """Headless Chromium with its console log readable (``browser_errors``)."""
    binary, driver = find_browser()
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for argument in (
        "--headless=new",
        "--no-sandbox",  # tests run as root
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--disable-extensions",
        "--no-first-run",
        "--force-device-scale-factor=1",
        "--lang=en-US",
        f"--window-size={width},{height}",
    ):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(options=options, service=Service(executable_path=driver))


def browser_errors(driver: WebDriver) -> list[dict[str, Any]]:
    """Console entries of level SEVERE since the last call (JavaScript errors, failed loads,
    CSP violations)."""
    return [entry for entry in driver.get_log("browser") if entry.get("level") == "SEVERE"]


def wait_for(
    driver: WebDriver, condition: Callable[[WebDriver], T | None], timeout: float, what: str
) -> T:
    """Poll ``condition`` until it returns something truthy; on timeout fail naming ``what``
    and the page's visible text. An element the page re-rendered between finding it and
    looking at it (stale) is a miss for that poll, not a failure."""
    waiting = WebDriverWait(
        driver, timeout, poll_frequency=0.1, ignored_exceptions=(StaleElementReferenceException,)
    )
    try:
        return waiting.until(lambda d: condition(d) or False)  # type: ignore[no-any-return]
    except TimeoutException:
        text = driver.execute_script("return document.body.innerText")
        raise AssertionError(
            f"timed out after {timeout} s waiting for {what}; page:\n{text}"
        ) from None


def click_when(
    driver: WebDriver, find: Callable[[WebDriver], WebElement | None], timeout: float, what: str
) -> None:
    """Find an element and click it, again if the page re-rendered it between the two (a
    listing refreshed after a save replaces its rows)."""

    def clicked(d: WebDriver) -> bool:
        element = find(d)
        if element is None:
            return False
        element.click()
        return True

    wait_for(driver, clicked, timeout, what)


def settle_layout(driver: WebDriver) -> None:
    """Return once the page has laid out and painted what it has (two animation frames)."""
    driver.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "requestAnimationFrame(() => requestAnimationFrame(() => done()));"
    )
