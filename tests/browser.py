"""Test helper: a headless Chromium driven by selenium, with no network chatter and no driver downloads.

Uses Debian's ``chromium`` and ``chromium-driver`` packages (``.ci/install-browser.sh`` installs them).
Without them the caller's test is skipped, unless env ``CI`` is set: then a missing browser is a failure.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest

CHROMIUM_CANDIDATES = ("chromium", "chromium-browser", "/usr/bin/chromium", "/usr/lib/chromium/chromium")
DRIVER_CANDIDATES = ("chromedriver", "/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver")

# Headless, and quiet on a machine without network: no background fetches, updates, sync or QUIC probing.
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--disable-extensions",
    "--disable-dev-shm-usage",
    "--hide-scrollbars",
    "--force-device-scale-factor=1",
)


def _find(candidates: tuple[str, ...]) -> str | None:
    for name in candidates:
        found = shutil.which(name) if "/" not in name else (name if os.access(name, os.X_OK) else None)
        if found:
            return found
    return None


def require_browser() -> tuple[str, str]:
    """(chromium path, chromedriver path); skips the test when missing, fails instead when env CI is set."""
    chromium, driver = _find(CHROMIUM_CANDIDATES), _find(DRIVER_CANDIDATES)
    try:
        import selenium  # noqa: F401
        has_selenium = True
    except ImportError:
        has_selenium = False
    missing = [name for name, ok in (("chromium", chromium), ("chromedriver", driver), ("selenium", has_selenium)) if not ok]
    if missing:
        reason = (
            f"headless browser test needs {', '.join(missing)}: run `bash .ci/install-browser.sh` (apt chromium "
            "chromium-driver) and `pip install selenium`"
        )
        if os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no"):
            pytest.fail(f"CI is set but {reason}", pytrace=False)
        pytest.skip(reason)
    return chromium, driver  # type: ignore[return-value]


@contextmanager
def headless_chromium(width: int = 1280, height: int = 800) -> Iterator["object"]:
    """Yield a selenium ``webdriver.Chrome`` on a fresh profile; the browser and profile are removed afterwards."""
    chromium, driver_path = require_browser()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="nnfeat-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    options.add_argument(f"--window-size={width},{height}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = Service(executable_path=driver_path, log_output=os.devnull)
    driver = webdriver.Chrome(service=service, options=options)
    try:
        # make the page's viewport exactly width x height (a headless window's size includes its invisible chrome)
        driver.execute_cdp_cmd(
            "Emulation.setDeviceMetricsOverride",
            {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
        )
        driver.set_page_load_timeout(30)
        driver.set_script_timeout(15)
        yield driver
    finally:
        try:
            driver.quit()
        finally:
            shutil.rmtree(profile, ignore_errors=True)


def file_url(path: str | os.PathLike) -> str:
    return Path(path).resolve().as_uri()


def broken_images(browser, timeout: float = 20.0) -> list[str]:
    """The ``src`` of every image of the open page that did not load. Lazy images (``loading="lazy"``) below
    the fold are made eager first and every image is waited for (up to ``timeout`` s), so an image that is
    merely not yet fetched is never mistaken for a broken one."""
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    browser.execute_script("for (const i of document.images) i.loading = 'eager';")
    try:
        WebDriverWait(browser, timeout).until(
            lambda d: d.execute_script("return Array.from(document.images).every(i => i.complete);"))
    except TimeoutException:  # the images still pending are reported as broken below
        pass
    return browser.execute_script(
        "return Array.from(document.images).filter(i => !(i.complete && i.naturalWidth > 0))"
        ".map(i => i.getAttribute('src'));")
