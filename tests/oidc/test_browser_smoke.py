"""Playwright drives Debian's chromium (weftlab.browser): open a page, click, screenshot."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from weftlab.browser import browser_page, save_screenshot

pytestmark = pytest.mark.browser

PAGE = b"""<!doctype html><title>smoke</title>
<p id="out">before</p>
<button id="go" onclick="document.getElementById('out').textContent = 'clicked'">Go</button>
"""


class _Page(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("content-type", "text/html; charset=utf-8")
        self.send_header("content-length", str(len(PAGE)))
        self.end_headers()
        self.wfile.write(PAGE)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def site() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Page)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_click_changes_text(site: str, tmp_path: Path) -> None:
    from playwright.sync_api import expect

    with browser_page() as page:
        page.goto(site)
        expect(page.locator("#out")).to_have_text("before")
        page.click("#go")
        expect(page.locator("#out")).to_have_text("clicked")
        shot = save_screenshot(page, "browser-smoke", tmp_path)
    assert shot.stat().st_size > 0
