"""Pages opened in a real headless browser: Debian's Chromium (``/usr/bin/chromium``),
driven by playwright (no browser download).

``with open_page(url) as (page, console_errors): ...`` gives the loaded page and the
list of the errors it logged (console errors and uncaught exceptions), which grows
while the page lives.  Tests that need the browser are marked ``requires_chromium``:
skipped, saying why, only where Chromium is missing.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from playwright.sync_api import Page, sync_playwright

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

requires_chromium = pytest.mark.skipif(
    not os.path.exists(CHROMIUM), reason=f"no Chromium at {CHROMIUM} to open pages in"
)


@contextmanager
def open_page(url: str, timeout: float = 15.0) -> Iterator[tuple[Page, list[str]]]:
    """The page at ``url`` loaded in a new headless Chromium, and its errors so far."""
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.set_default_timeout(timeout * 1000)
            errors: list[str] = []
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(url, wait_until="load")
            yield page, errors
        finally:
            browser.close()
