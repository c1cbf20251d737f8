"""Playwright on Debian's chromium, for browser tests (never Playwright's own download).

    with browser_page() as page:
        page.goto(url)
        ...
        save_screenshot(page, "console-login", tmp_path)

``browser_page`` fails the test (at the end of the block) if any JavaScript error
happened on the page.

`make install` installs the Debian package; a missing binary is an error, not a skip.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page, Playwright

# /usr/bin/chromium is a shell wrapper (noisy where findmnt lists /dev/shm twice).
CHROMIUM_PATHS = ("/usr/lib/chromium/chromium", "/usr/bin/chromium")

# As root in a sandbox without network; the last four keep chromium from calling home.
CHROMIUM_ARGS = (
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
)


class BrowserMissing(RuntimeError):
    pass


def chromium_path() -> str:
    for path in CHROMIUM_PATHS:
        if os.access(path, os.X_OK):
            return path
    raise BrowserMissing(
        f"Debian's chromium is not installed (looked for {', '.join(CHROMIUM_PATHS)}): "
        "run `make install` (never `playwright install`)"
    )


def launch_chromium(playwright: Playwright, *, headless: bool = True) -> Browser:
    return playwright.chromium.launch(
        executable_path=chromium_path(), args=list(CHROMIUM_ARGS), headless=headless
    )


@contextmanager
def browser_page(*, timeout_ms: float = 10_000) -> Iterator[Page]:
    """A page of a fresh chromium; AssertionError after the block if a script failed."""
    from playwright.sync_api import sync_playwright

    errors: list[str] = []
    with sync_playwright() as p:
        browser = launch_chromium(p)
        try:
            page = browser.new_page()
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.set_default_timeout(timeout_ms)
            yield page
        finally:
            browser.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


def artifacts_dir(default: Path) -> Path:
    """$WEFT_ARTIFACTS if set (CI keeps it), else `default` (e.g. pytest's tmp_path)."""
    env = os.environ.get("WEFT_ARTIFACTS")
    path = Path(env) if env else default
    path.mkdir(parents=True, exist_ok=True)
    return path


def save_screenshot(page: Page, name: str, default_dir: Path) -> Path:
    """Save a full-page PNG as a test artifact and print where it went."""
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", name)
    path = artifacts_dir(default_dir) / f"{safe}.png"
    page.screenshot(path=str(path), full_page=True)
    print(f"screenshot: {path}")
    return path
