"""The web console in a real browser (Debian's chromium through Playwright), signed in
through the real OpenID provider: the login page's provider button, the provider's own
login form, back in the console as the bootstrapped owner, where a device waiting for
approval is approved. Any JavaScript error fails the test; screenshots are artifacts."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from weftlab.browser import browser_page, save_screenshot
from weftlab.control import FakeNode
from weftlab.oidcop import OpenIdProvider

from .rpkit import Rp, register, serve

pytestmark = pytest.mark.browser


def test_console_login_through_the_provider(rp: Rp, op: OpenIdProvider, tmp_path: Path) -> None:
    from playwright.sync_api import expect

    with serve(rp, op, tmp_path, owner="alice@example.com") as server:
        server.api("PATCH", "/settings", json={"device_approval": True})
        server.api("POST", "/users", json={"name": "bob@example.com"})
        key = server.api("POST", "/keys", json={"user": "bob@example.com"})["key"]
        waiting = FakeNode(server.url, httpx.AsyncClient(), "bobs-laptop")
        assert not register(waiting, auth_key=key).machine_authorized
        (node,) = server.api("GET", "/nodes")
        assert node["authorized"] is False

        with browser_page() as page:
            page.goto(f"{server.url}/admin")
            page.get_by_role("link", name="Log in with your identity provider").click()
            # The provider's own login form (oidc-provider's devInteractions page).
            page.locator('input[name="login"]').fill("alice")
            page.locator('input[name="password"]').fill("any")
            save_screenshot(page, "console-oidc-provider-form", tmp_path)
            page.locator('button[type="submit"]').click()

            expect(page).to_have_url(f"{server.url}/admin/machines")
            expect(page.locator("header")).to_contain_text("Alice")
            expect(page.locator("header")).to_contain_text("Owner")
            row = page.locator(f'#machines tr[data-node-id="{node["id"]}"]')
            expect(row.locator('[data-field="approval"]')).to_be_visible()
            save_screenshot(page, "console-oidc-machines", tmp_path)

            page.goto(f"{server.url}/admin/machines/{node['id']}")
            page.get_by_role("button", name="Approve").click()
            expect(page.locator(".notice")).to_have_text("Approved.")
        (node,) = server.api("GET", "/nodes")
        assert node["authorized"] is True
        (entry, *_) = server.api("GET", "/audit")
        assert entry["action"] == "node.authorize", entry
        assert entry["actor"]["name"] == "alice@example.com", entry
        assert entry["origin"] == "console", entry
