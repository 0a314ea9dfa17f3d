"""The web console in a real headless Chromium, against the real gateway, containers and CLI.

The page is driven as a person would: sign in with a token, find a session made through the
API, type a prompt and watch the streamed reply, browse and download files, lose the
connection and get every event back exactly once, and use it in a phone-sized window.
``CCD_CONSOLE_SCREENSHOT=docs/console-session.png`` keeps the picture of a live session that
the README shows.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement

from tests.browser import (
    browser_errors,
    click_when,
    settle_layout,
    start_chromium,
    wait_for,
)
from tests.client import marker
from tests.fake_anthropic import slow_text, text, tool_use
from tests.tcp_proxy import TcpProxy

pytestmark = pytest.mark.docker

STATUSES = {"starting", "ready", "busy", "stopping", "stopped", "failed"}


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebDriver]:
    driver = start_chromium()
    downloads = tmp_path_factory.mktemp("downloads")
    driver.execute_cdp_cmd(
        "Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)}
    )
    driver.downloads = downloads  # type: ignore[attr-defined]
    yield driver
    driver.quit()


@pytest.fixture
def owner() -> str:
    """A user of this test alone, so its session list holds only its own sessions."""
    return marker("console")


def sign_in(driver: WebDriver, base_url: str, token: str) -> None:
    """Open the console (a fresh page, the console log emptied) and sign in with ``token``."""
    driver.get("about:blank")
    driver.get_log("browser")  # what earlier pages logged is theirs
    driver.get(f"{base_url}/console/#/sessions")
    driver.execute_script("window.sessionStorage.clear()")
    driver.refresh()
    field = wait_for(driver, lambda d: visible(d, "#token"), 15, "the sign-in form")
    field.send_keys(token)
    driver.find_element(By.CSS_SELECTOR, "form.signin button[type=submit]").click()
    wait_for(driver, lambda d: visible(d, "#sessions-title"), 15, "the session list")


def visible(driver: WebDriver, css: str) -> WebElement | None:
    for element in driver.find_elements(By.CSS_SELECTOR, css):
        if element.is_displayed():
            return element
    return None


def texts(driver: WebDriver, css: str) -> list[str]:
    return [element.text for element in driver.find_elements(By.CSS_SELECTOR, css)]


def open_session(driver: WebDriver, session_id: str, status: str = "ready") -> None:
    driver.execute_script("window.location.hash = arguments[0]", f"#/sessions/{session_id}")
    wait_for(
        driver,
        lambda d: visible(d, f'.status-slot [data-status="{status}"]'),
        90,
        f"session {session_id} to be {status}",
    )
    wait_for(driver, lambda d: visible(d, '.stream-state[data-state="live"]'), 30, "a live stream")


def send_prompt(driver: WebDriver, prompt: str) -> None:
    box = driver.find_element(By.ID, "prompt")
    box.clear()
    box.send_keys(prompt)
    box.send_keys(Keys.CONTROL, Keys.ENTER)


def wait_reply(driver: WebDriver, reply: str, timeout: float = 90) -> None:
    wait_for(
        driver,
        lambda d: reply in "\n".join(texts(d, ".conversation .msg.assistant .text")),
        timeout,
        f"the reply {reply!r}",
    )


def unlabelled_controls(driver: WebDriver) -> list[str]:
    """Form controls, buttons and images a screen reader could not name."""
    result: list[str] = driver.execute_script(
        """
        const bad = [];
        for (const el of document.querySelectorAll("input, textarea, select")) {
          if (!el.labels?.length && !el.getAttribute("aria-label")) bad.push(el.outerHTML);
        }
        for (const el of document.querySelectorAll("button")) {
          if (!el.textContent.trim() && !el.getAttribute("aria-label")) bad.push(el.outerHTML);
        }
        for (const el of document.querySelectorAll("img")) {
          if (!el.hasAttribute("alt")) bad.push(el.outerHTML);
        }
        return bad;
        """
    )
    return result


def test_the_console_loads_signs_in_and_logs_no_error(browser, gateway, api_for, owner) -> None:
    browser.get_log("browser")  # start from a clean console log
    browser.get(f"{gateway.url}/console")  # redirected to /console/
    assert browser.current_url.startswith(f"{gateway.url}/console/")
    wait_for(browser, lambda d: visible(d, "#token"), 15, "the sign-in form")
    assert unlabelled_controls(browser) == []

    sign_in(browser, gateway.url, api_for(owner).token)
    assert browser.find_element(By.ID, "who-name").text == owner
    wait_for(browser, lambda d: visible(d, ".empty"), 15, "the empty list notice")
    assert unlabelled_controls(browser) == []
    assert browser_errors(browser) == []
    # Everything the page loaded came from the gateway itself: no CDN, no other origin.
    loaded = browser.execute_script(
        "return performance.getEntriesByType('resource').map(e => e.name)"
    )
    assert loaded and all(url.startswith(gateway.url) for url in loaded), loaded
    # The token stays in this tab (sessionStorage), never in localStorage or a cookie.
    assert browser.execute_script("return window.localStorage.length") == 0
    assert browser.get_cookies() == []


async def test_a_session_created_through_the_api_appears(browser, gateway, api_for, owner) -> None:
    api = api_for(owner)
    sign_in(browser, gateway.url, api.token)
    session = await api.create()
    row_css = f'tr[data-session-id="{session["id"]}"]'
    browser.find_element(By.XPATH, "//button[normalize-space()='Refresh']").click()
    row = wait_for(browser, lambda d: visible(d, row_css), 15, "the new session's row")
    assert row.find_element(By.CSS_SELECTOR, ".badge").text in STATUSES
    assert row.find_element(By.CSS_SELECTOR, '[data-label="Cost"]').text == "$0"
    assert session["id"][:8] in row.find_element(By.CSS_SELECTOR, ".session-link").text
    assert browser_errors(browser) == []
    await api.stop(session["id"])


async def test_a_prompt_typed_in_the_page_streams_the_reply(
    browser, gateway, api_for, fake_api, owner
) -> None:
    api = api_for(owner)
    tag = marker()
    reply = (
        f"I left a note in notes.txt ({tag}). And the haiku:\n\n"
        "One shell per session,\nevery line streamed as it comes,\nnothing left behind."
    )
    fake_api.on(
        tag,
        tool_use(
            "Bash",
            {"command": f"echo 'built by {tag}' > notes.txt && ls -l /workspace"},
            text_before="Let me look at the workspace first.",
        ),
        text(reply),
    )
    session = await api.create(config={"model": "claude-sonnet-4-5"})
    sign_in(browser, gateway.url, api.token)
    open_session(browser, session["id"])

    prompt = f"Look around the workspace, leave a note, then write a haiku. {tag}"
    send_prompt(browser, prompt)
    wait_reply(browser, "nothing left behind.")

    user_messages = texts(browser, ".conversation .msg.user .text")
    assert user_messages == [prompt]
    assert "Let me look at the workspace first." in texts(browser, ".msg.assistant .text")
    # The tool call is folded, with its input and its real output from the container.
    tool = browser.find_element(By.CSS_SELECTOR, ".conversation .tool details")
    assert tool.get_attribute("open") is None
    assert "Bash" in tool.find_element(By.CSS_SELECTOR, ".tool-name").text
    wait_for(browser, lambda d: visible(d, ".tool-state.done"), 30, "the tool's result")
    tool.find_element(By.TAG_NAME, "summary").click()
    assert "notes.txt" in tool.find_element(By.CSS_SELECTOR, ".tool-output").text
    wait_for(browser, lambda d: visible(d, ".turn-end.ok"), 30, "the turn's end")
    # Its cost is metered by the gateway's model proxy and shown once the turn ends.
    wait_for(
        browser,
        lambda d: d.find_element(By.CSS_SELECTOR, '[data-fact="cost"]').text not in ("", "$0"),
        30,
        "the session's cost",
    )
    assert browser_errors(browser) == []

    picture = os.environ.get("CCD_CONSOLE_SCREENSHOT")
    if picture:
        take_picture(browser, Path(picture))
    await api.stop(session["id"])


def take_picture(driver: WebDriver, path: Path) -> None:
    """The README's picture: a window tall enough for the whole turn, scrolled to its end."""
    size = driver.get_window_size()
    driver.set_window_size(1280, 1180)
    try:
        settle_layout(driver)
        driver.execute_script(
            "const list = document.querySelector('.conversation');"
            "list.scrollTop = list.scrollHeight;"
        )
        settle_layout(driver)
        path.parent.mkdir(parents=True, exist_ok=True)
        assert driver.save_screenshot(str(path))
    finally:
        driver.set_window_size(size["width"], size["height"])


async def test_interrupt_and_stop_from_the_page(browser, gateway, api_for, fake_api, owner) -> None:
    api = api_for(owner)
    tag = marker()
    fake_api.on(tag, slow_text([f"word{i} " for i in range(150)], delay=0.2))
    session = await api.create()
    sign_in(browser, gateway.url, api.token)
    open_session(browser, session["id"])
    send_prompt(browser, f"talk slowly {tag}")
    wait_for(browser, lambda _: fake_api.requests_for(tag), 60, "the slow turn to start")
    interrupt = browser.find_element(By.XPATH, "//button[.='Interrupt']")
    wait_for(browser, lambda _: interrupt.is_enabled(), 15, "Interrupt to be enabled (busy)")
    interrupt.click()
    ended = wait_for(browser, lambda d: visible(d, ".turn-end.error"), 30, "the interrupted turn")
    assert "error_during_execution" in ended.text
    wait_for(browser, lambda d: visible(d, '.status-slot [data-status="ready"]'), 30, "ready")

    browser.find_element(By.XPATH, "//button[.='Stop']").click()
    browser.switch_to.alert.accept()  # "Stop this session (and its children)?"
    wait_for(browser, lambda d: visible(d, '.status-slot [data-status="stopped"]'), 60, "stopped")
    assert not browser.find_element(By.ID, "prompt").is_enabled()
    assert browser.find_element(By.XPATH, "//button[.='Resume']").is_displayed()
    assert (await api.get(session["id"]))["status"] == "stopped"
    assert browser_errors(browser) == []


async def test_spawn_tree_and_workspace_files_download(
    browser, gateway, api_for, fake_api, owner
) -> None:
    api = api_for(owner)
    tag = marker()
    content = f"report of {tag}"
    fake_api.on(
        tag,
        tool_use("Bash", {"command": f"mkdir -p out && echo '{content}' > out/report.txt"}),
        text("written"),
    )
    session = await api.create(prompt=f"write the report {tag}")
    waited = await api.http.post(f"/api/v1/sessions/{session['id']}/wait", json={"timeout": 120})
    assert waited.json()["turn"]["status"] == "completed", waited.text
    child_tag = marker()
    fake_api.on(child_tag, text("child here"))
    child = (
        await api.http.post(
            f"/api/v1/sessions/{session['id']}/spawn", json={"prompt": f"hello {child_tag}"}
        )
    ).json()

    sign_in(browser, gateway.url, api.token)
    open_session(browser, session["id"])
    browser.find_element(By.ID, "tab-tree").click()
    node = wait_for(
        browser, lambda d: visible(d, f'.tree li[data-session-id="{child["id"]}"]'), 15, "the child"
    )
    assert node.find_element(By.CSS_SELECTOR, "a").get_attribute("href").endswith(child["id"])
    assert visible(browser, f'.tree li[data-session-id="{session["id"]}"] .tree-node.current')

    browser.find_element(By.ID, "tab-files").click()
    save = wait_for(
        browser, lambda d: d.find_element(By.XPATH, "//button[.='Save now']"), 15, "Save now"
    )
    save.click()
    # The listing shown before the save may already hold the file; the one after replaces it.
    wait_for(browser, lambda d: "Workspace saved" in texts(d, "#toasts .toast"), 30, "the save")
    click_when(
        browser,
        lambda d: visible(d, 'tr[data-path="out/report.txt"] button.link'),
        30,
        "the saved file",
    )
    downloaded = Path(browser.downloads) / "report.txt"  # type: ignore[attr-defined]
    wait_for(browser, lambda d: downloaded.exists() and downloaded.read_text(), 15, "the download")
    assert downloaded.read_text() == content + "\n"
    assert browser_errors(browser) == []
    await api.stop(session["id"])


async def test_the_stream_resumes_after_a_dropped_connection(
    browser, gateway, api_for, fake_api, owner
) -> None:
    """The page reaches the gateway through a proxy that the test cuts: the events of a turn
    that ran while it was cut arrive after the reconnection, each exactly once."""
    api = api_for(owner)
    first, second = marker(), marker()
    fake_api.on(first, text(f"first answer {first}"))
    fake_api.on(second, text(f"second answer {second}"))
    session = await api.create()
    host, port = gateway.url.removeprefix("http://").split(":")
    proxy = TcpProxy(host, int(port))
    proxy.up()
    try:
        base = f"http://127.0.0.1:{proxy.port}"
        sign_in(browser, base, api.token)
        open_session(browser, session["id"])
        send_prompt(browser, f"one {first}")
        wait_reply(browser, f"first answer {first}")

        proxy.cut()
        proxy.down()
        wait_for(
            browser,
            lambda d: visible(d, '.stream-state[data-state="reconnecting"]'),
            15,
            "the page to notice the cut",
        )
        answer = await api.chat(session["id"], f"two {second}")  # while the page is cut off
        assert answer["turn"]["status"] == "completed"
        proxy.up()
        wait_reply(browser, f"second answer {second}", timeout=60)
        wait_for(browser, lambda d: visible(d, '.stream-state[data-state="live"]'), 30, "live")
        replies = texts(browser, ".conversation .msg.assistant .text")
        users = texts(browser, ".conversation .msg.user .text")
        turn_ends = len(browser.find_elements(By.CSS_SELECTOR, ".conversation .turn-end.ok"))
    finally:
        browser.get("about:blank")  # no page keeps trying a proxy that is going away
        proxy.down()

    assert replies == [f"first answer {first}", f"second answer {second}"]
    assert users == [f"one {first}", f"two {second}"]
    assert turn_ends == 2
    await api.stop(session["id"])


async def test_the_console_fits_a_phone_sized_window(browser, gateway, api_for, owner) -> None:
    api = api_for(owner)
    session = await api.create()
    size: dict[str, Any] = browser.get_window_size()
    browser.set_window_size(390, 844)
    try:
        sign_in(browser, gateway.url, api.token)
        wait_for(
            browser,
            lambda d: visible(d, f'tr[data-session-id="{session["id"]}"]'),
            15,
            "the session's row",
        )
        settle_layout(browser)
        assert not overflows(browser), "the session list scrolls sideways"
        # The table has become one card per session, each value labelled.
        label = browser.execute_script(
            "const cell = document.querySelector('table.sessions td');"
            "return getComputedStyle(cell, '::before').content"
        )
        assert label == '"Session"'
        assert not browser.find_element(By.CSS_SELECTOR, "table.sessions th").is_displayed()
        open_session(browser, session["id"])
        settle_layout(browser)
        assert not overflows(browser), "the session view scrolls sideways"
        assert browser.find_element(By.ID, "prompt").is_displayed()
        assert browser_errors(browser) == []
    finally:
        browser.set_window_size(size["width"], size["height"])
        await api.stop(session["id"])


def overflows(driver: WebDriver) -> bool:
    return bool(
        driver.execute_script(
            "return document.documentElement.scrollWidth > document.documentElement.clientWidth"
        )
    )
