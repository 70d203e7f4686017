"""
The dashboard in a real browser: Debian's Chromium driven headless by
Selenium against a running daemon (a shared one, with client tokens) after
generated traffic and weeks of history. It checks that the page asks for the
token and keeps it out of the URL, that charts and tables show the expected
numbers, that switching the range changes them, that nothing is refused by
the page's Content-Security-Policy, and saves full-page screenshots at laptop
and phone widths, light and dark, under the test's output folder
(``$SUBROUTER_TEST_OUTPUT`` or pytest's ``tmp_path``).

``.ci/run`` installs ``chromium`` and ``chromium-driver``; without them this
test fails, saying how to install them.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
import pytest_twisted
from twisted.internet.threads import deferToThread
from twisted.web.http_headers import Headers

from subrouter.accounting.extract import Origin, Usage
from subrouter.accounting.rows import Row
from subrouter.accounting.store import utc_day
from subrouter.accounts import client_tokens
from tests.support.daemon import Daemon, make_config, read_all, sleep, start_daemon
from tests.support.tlsca import TestCA
from tests.support.upstream import (
    FakeUpstream,
    sse,
    write_apikey_account,
    write_oauth_account,
)

FAR = time.time() + 30 * 86400
DAY = 86400.0
T = TypeVar("T")
INSTALL_HINT = (
    "the dashboard's browser test needs Debian's Chromium and its driver: "
    "apt-get update && apt-get install -y chromium chromium-driver (the tests install them "
    "when apt-get can)"
)


def _browser_paths() -> tuple[str, str]:
    from tests.support.debian import ensure

    ensure("chromium", ["chromium", "chromium-driver"], also=["chromedriver"])
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not browser or not driver:
        pytest.fail(INSTALL_HINT)
    try:
        import selenium  # noqa: F401
    except ImportError:
        pytest.fail("the dashboard's browser test needs selenium: pip install '.[test]'")
    return browser, driver


def _usage(inp: int, cached: int, out: int, reasoning: int = 0) -> dict[str, Any]:
    return {"input_tokens": inp, "input_tokens_details": {"cached_tokens": cached},
            "output_tokens": out, "output_tokens_details": {"reasoning_tokens": reasoning},
            "total_tokens": inp + out}


def _stream(model: str, usage: dict[str, Any]) -> list[str]:
    return [
        json.dumps({"type": "response.created", "response": {"usage": None}}),
        json.dumps({"type": "response.output_text.delta", "delta": "hello"}),
        json.dumps({"type": "response.completed", "response": {"model": model, "usage": usage}}),
    ]


def _windows(primary: int, secondary: int) -> dict[str, str]:
    return {
        "x-codex-primary-used-percent": str(primary), "x-codex-primary-window-minutes": "300",
        "x-codex-primary-reset-after-seconds": "8100",
        "x-codex-secondary-used-percent": str(secondary),
        "x-codex-secondary-window-minutes": "10080",
        "x-codex-secondary-reset-after-seconds": "302400",
    }


def _history(state: Path, now: float) -> None:
    """
    One 10,000-token call a day, 2 to 20 days ago, as an older daemon wrote
    them (the daemon rolls the older days up into hours when it starts).
    """
    folder = state / "usage"
    folder.mkdir(parents=True, mode=0o700)
    for days in range(2, 21):
        at = now - days * DAY - 3600
        row = Row.record(at, Origin("codex", f"old-{days}", "ana@example.com",
                                    "alice@example.com", "openai"),
                         Usage(input_tokens=9000, cached_input_tokens=6000 + 100 * days,
                               output_tokens=1000, reasoning_tokens=300, total_tokens=10000,
                               model="gpt-5-codex"))
        with (folder / f"raw-{utc_day(at)}.jsonl").open("a") as f:
            f.write(json.dumps(row.as_json()) + "\n")


async def _post(daemon: Daemon, token: str, session: str, path: str = "/v1/responses",
                **headers: str) -> None:
    response = await daemon.request(
        "POST", path, data=b'{"model":"x"}',
        headers=Headers({b"x-subrouter-token": [token.encode()],
                         b"session-id": [session.encode()],
                         **{k.replace("_", "-").encode(): [v.encode()]
                            for k, v in headers.items()}}))
    await read_all(response)
    assert response.code == 200


async def _traffic(daemon: Daemon, upstream: FakeUpstream, token: str) -> None:
    codex = b"/backend-api/codex/responses"
    upstream.script(codex, sse(_stream("gpt-5-codex", _usage(1000, 800, 50, 20)),
                               headers=_windows(42, 55)))
    for _ in range(3):
        await _post(daemon, token, "conv-ana", X_Subrouter_User_Email="ana@example.com",
                    X_Subrouter_Account_ID="alice@example.com")
    upstream.script(codex, sse(_stream("gpt-5-mini", _usage(2000, 500, 100)),
                               headers=_windows(91, 35)))
    for _ in range(2):
        await _post(daemon, token, "conv-ben", X_Subrouter_User_Email="ben@example.com",
                    X_Subrouter_Account_ID="bob@example.com")
    upstream.script(b"/v1/chat/completions", sse([
        json.dumps({"model": "gpt-4o", "choices": [], "usage": {
            "prompt_tokens": 40, "completion_tokens": 8, "total_tokens": 48}}), "[DONE]"]))
    # no user header: the client token's name ("cy") is the user
    await _post(daemon, token, "conv-cy", "/v1/chat/completions",
                X_Subrouter_Account_ID="team")


class Browser:
    """
    A headless Chromium; every call runs in a thread, so the reactor (and the
    daemon the page talks to) keeps running.
    """

    def __init__(self, profile: Path) -> None:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

        browser, driver = _browser_paths()
        options = webdriver.ChromeOptions()
        options.binary_location = browser
        for flag in ("--headless=new", "--no-sandbox", "--disable-gpu",
                     "--disable-background-networking", "--disable-component-update",
                     "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
                     "--lang=en-US", "--window-size=1366,900",
                     f"--user-data-dir={profile}"):
            options.add_argument(flag)
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        self.driver = webdriver.Chrome(service=Service(executable_path=driver), options=options)
        self.driver.set_page_load_timeout(30)

    async def run(self, work: Callable[[], T]) -> T:
        result: T = await deferToThread(work)
        return result

    async def wait(self, script: str, timeout: float = 15.0) -> Any:
        """
        Wait until a JavaScript expression is truthy; return its value.
        """
        deadline = time.monotonic() + timeout
        while True:
            value = await self.run(lambda: self.driver.execute_script("return " + script))
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"the page never satisfied: {script}")
            await sleep(0.1)

    async def text(self, css: str) -> str:
        from selenium.webdriver.common.by import By

        return str(await self.run(lambda: self.driver.find_element(By.CSS_SELECTOR, css).text))

    async def click(self, css: str) -> None:
        from selenium.webdriver.common.by import By

        await self.run(lambda: self.driver.find_element(By.CSS_SELECTOR, css).click())

    async def screenshot(self, path: Path, width: int, height: int, mobile: bool,
                         dark: bool) -> None:
        driver = self.driver

        def shoot() -> None:
            driver.execute_cdp_cmd("Emulation.setEmulatedMedia", {"features": [
                {"name": "prefers-color-scheme", "value": "dark" if dark else "light"}]})
            metrics = {"width": width, "height": height, "deviceScaleFactor": 1,
                       "mobile": mobile}
            driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", metrics)
            time.sleep(0.3)  # the charts redraw on resize (debounced 150 ms)
            full = driver.execute_script("return document.documentElement.scrollHeight")
            driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                                   {**metrics, "height": int(full)})
            time.sleep(0.2)
            shot = driver.execute_cdp_cmd("Page.captureScreenshot",
                                          {"format": "png", "captureBeyondViewport": True})
            path.write_bytes(base64.b64decode(shot["data"]))
            driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})

        await self.run(shoot)

    def quit(self) -> None:
        self.driver.quit()


@pytest_twisted.ensureDeferred
async def test_the_dashboard_in_a_real_browser(
    tmp_path: Path, upstream: FakeUpstream, ca: TestCA
) -> None:
    _browser_paths()  # fail at once, with the install hint, when they are missing
    output = Path(os.environ.get("SUBROUTER_TEST_OUTPUT") or tmp_path) / "dashboard"
    output.mkdir(parents=True, exist_ok=True)
    now = time.time()
    store = tmp_path / "accounts-store"
    write_oauth_account(store, "alice@example.com", exp=FAR, account_id="ws-a", plan="pro")
    write_oauth_account(store, "bob@example.com", exp=FAR, account_id="ws-b", plan="plus")
    write_apikey_account(store, "team", "sk-test-key-0000000000")
    _history(tmp_path / "state", now)
    tokens = str(tmp_path / "client-tokens")
    token = client_tokens.add(tokens, "cy")
    daemon = await start_daemon(make_config(tmp_path, upstream, ca, client_tokens=tokens))
    browser = None
    try:
        deadline = time.monotonic() + 5
        while True:
            response = await daemon.client.get(
                daemon.url + "/_subrouter/accounts",
                headers={"X-Subrouter-Token": [token]})
            listing = await response.json()
            if len(listing.get("accounts", [])) == 3:
                break
            assert time.monotonic() < deadline
            await sleep(0.05)
        await _traffic(daemon, upstream, token)

        browser = Browser(tmp_path / "profile")
        page = f"http://127.0.0.1:{daemon.port}/_subrouter/dashboard"
        await browser.run(lambda: browser.driver.get(page))
        # a shared server: the page asks for the token, then keeps it in this tab only
        await browser.wait("!document.getElementById('token-gate').hidden")
        await browser.run(lambda: browser.driver.find_element(
            "id", "token-input").send_keys(token))
        await browser.click("#token-gate button")
        await browser.wait("document.getElementById('t-requests').textContent.includes('calls')")
        assert await browser.run(lambda: browser.driver.current_url) == page
        stored = await browser.run(lambda: browser.driver.execute_script(
            "return sessionStorage.getItem('subrouter-client-token')"))
        assert stored == token
        assert await browser.wait("document.getElementById('token-gate').hidden")

        # the last 24 h: six calls, 7,398 tokens
        await browser.wait("document.getElementById('t-requests').textContent"
                           " === '6 model calls'")
        assert await browser.text("#t-total") == "7.4k"
        assert await browser.text("#t-ratio") == f"{100 * 3400 / 7040:.1f}%"
        bars = await browser.run(lambda: browser.driver.execute_script(
            "return [...document.querySelectorAll('#tokens-chart g.bucket')]"
            ".map(g => Number(g.dataset.total))"))
        assert 24 <= len(bars) <= 25 and sum(bars) == 7398
        points = await browser.run(lambda: browser.driver.execute_script(
            "return document.querySelectorAll('#cache-chart circle.point').length"))
        assert points >= 1

        def table(css: str) -> list[list[str]]:
            from selenium.webdriver.common.by import By

            rows = browser.driver.find_elements(By.CSS_SELECTOR, css + " tbody tr")
            return [[td.text for td in r.find_elements(By.TAG_NAME, "td")] for r in rows]

        users = await browser.run(lambda: table("#breakdown-table"))
        assert [(r[0], r[6]) for r in users] == [
            ("ben@example.com", "4,200"), ("ana@example.com", "3,150"), ("cy", "48")]
        # sortable: by name, ascending
        await browser.click("#breakdown-table th[data-key='key']")
        users = await browser.run(lambda: table("#breakdown-table"))
        assert [r[0] for r in users] == ["ana@example.com", "ben@example.com", "cy"]
        await browser.click(".tabs button[data-by='model']")
        models = await browser.run(lambda: table("#breakdown-table"))
        assert {r[0]: r[6] for r in models} == {
            "gpt-5-codex": "3,150", "gpt-5-mini": "4,200", "gpt-4o": "48"}
        await browser.click(".tabs button[data-by='account']")
        conversations = await browser.run(lambda: table("#conversations-table"))
        by_id = {r[1]: r for r in conversations}
        assert "conv-ana" in by_id, conversations
        assert by_id["conv-ana"][2] == "alice@example.com" and by_id["conv-ana"][6] == "3"
        assert by_id["conv-ana"][7] == "3,150" and by_id["conv-ana"][8] == "80.0%"
        assert by_id["conv-cy"][3] == "cy"
        cards = await browser.run(lambda: browser.driver.execute_script(
            "return [...document.querySelectorAll('.account')].map(c => c.innerText)"))
        assert len(cards) == 3
        alice = next(c for c in cards if "alice@example.com" in c)
        assert "42%" in alice and "55%" in alice and "resets in 2h 1" in alice
        assert "usable" in alice and "low headroom" in next(c for c in cards if "bob@" in c)
        assert "not enough data" in alice  # no forecast in /_subrouter/accounts yet
        assert "pay per token" in next(c for c in cards if "team" in c)

        # a panel's JSON link opens the endpoint's answer, fetched with the token
        def open_json() -> Any:
            from selenium.webdriver.common.by import By

            driver = browser.driver
            home = driver.current_window_handle
            driver.find_element(By.CSS_SELECTOR, "#p-accounts a.json").click()
            deadline = time.monotonic() + 10
            while len(driver.window_handles) < 2:
                assert time.monotonic() < deadline, "the JSON tab never opened"
                time.sleep(0.05)
            driver.switch_to.window(next(h for h in driver.window_handles if h != home))
            while True:
                text = driver.execute_script("return document.body && document.body.innerText")
                if text or time.monotonic() > deadline:
                    break
                time.sleep(0.05)
            url = driver.current_url
            driver.close()
            driver.switch_to.window(home)
            return json.loads(text), url

        shown, url = await browser.run(open_json)
        assert len(shown["accounts"]) == 3 and token not in url

        for width, height, mobile, name in ((1366, 900, False, "laptop"),
                                            (390, 844, True, "phone")):
            for dark in (False, True):
                shade = "dark" if dark else "light"
                await browser.screenshot(output / f"24h-{name}-{shade}.png", width, height,
                                         mobile, dark)

        # 7 days: the history's five days join in
        await browser.click(".ranges button[data-range='7d']")
        await browser.wait("document.getElementById('t-requests').textContent"
                           " === '11 model calls'")
        assert await browser.text("#t-total") == "57k"
        bars = await browser.run(lambda: browser.driver.execute_script(
            "return [...document.querySelectorAll('#tokens-chart g.bucket')]"
            ".map(g => Number(g.dataset.total))"))
        assert 28 <= len(bars) <= 29 and sum(bars) == 57398
        await browser.screenshot(output / "7d-laptop-light.png", 1366, 900, False, False)
        # 30 days: all of it, from hourly rollups
        await browser.click(".ranges button[data-range='30d']")
        await browser.wait("document.getElementById('t-requests').textContent"
                           " === '25 model calls'")
        bars = await browser.run(lambda: browser.driver.execute_script(
            "return [...document.querySelectorAll('#tokens-chart g.bucket')]"
            ".map(g => Number(g.dataset.total))"))
        assert 30 <= len(bars) <= 31 and sum(bars) == 197398
        await browser.screenshot(output / "30d-laptop-dark.png", 1366, 900, False, True)
        await browser.screenshot(output / "30d-phone-light.png", 390, 844, True, False)

        logs = await browser.run(lambda: browser.driver.get_log("browser"))
        # the 401s before the token was entered are the only expected complaints
        severe = [e for e in logs if e.get("level") == "SEVERE"
                  and "favicon" not in e.get("message", "")
                  and not (e.get("source") == "network" and "401" in e.get("message", ""))]
        assert severe == [], severe  # no CSP refusal, no script error
        assert (output / "24h-phone-dark.png").stat().st_size > 10_000
    finally:
        if browser is not None:
            await deferToThread(browser.quit)
        await daemon.stop()
