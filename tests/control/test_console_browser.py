"""The web console in a real browser (Debian's chromium through Playwright): log in,
watch the machine list's live status, approve and rename a device, create an auth key
(shown once), edit the policy (a failing one is shown and refused), read the audit log.
Any JavaScript error on a page fails the test; screenshots are kept as artifacts."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from unittest import mock

import pytest
import uvicorn

from weftlab.browser import browser_page, save_screenshot
from weftlab.netlab import poll_until
from weftnet.control.domain import roles

from .consolekit import PASSWORD, Console, make_console, user_of

pytestmark = pytest.mark.browser

GOOD_POLICY = """{
  "acls": [{"action": "accept", "src": ["*"], "dst": ["*:*"]}],
}"""
POLL_S = 5  # console.js polls the machines' status this often
FAILING_POLICY = """{
  "acls": [],
  "tests": [{"src": "owner", "accept": ["member:22"]}],
}"""


@pytest.fixture
def served() -> Iterator[tuple[str, Console]]:
    """The console's app on 127.0.0.1 (an ephemeral port), served by uvicorn on a thread."""
    console = make_console()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(console.app, lifespan="on", log_level="warning", access_log=False)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        poll_until(lambda: server.started, timeout_s=15, what="uvicorn")
        yield f"http://127.0.0.1:{sock.getsockname()[1]}", console
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


def test_console_in_a_browser(served: tuple[str, Console], tmp_path: Path) -> None:
    from playwright.sync_api import expect

    url, console = served
    member_node = console.nodes["member"]
    with browser_page() as page:
        # Log in with the local account; land on the machine list.
        page.goto(f"{url}/admin")
        expect(page).to_have_url(f"{url}/admin/login?next=%2Fadmin")
        page.get_by_label("User name").fill(user_of(roles.OWNER))
        page.get_by_label("Password").fill(PASSWORD)
        page.get_by_role("button", name="Log in").click()
        expect(page).to_have_url(f"{url}/admin/machines")
        table = page.locator("#machines")
        expect(table.locator("tbody tr")).to_have_count(2)
        row = table.locator(f'tr[data-node-id="{member_node.id}"]')
        expect(row.locator('[data-field="status"]')).to_have_text("offline")
        expect(row.locator('[data-field="approval"]')).to_be_visible()
        save_screenshot(page, "console-machines", tmp_path)

        # Live status: the node comes online; the page's poll shows it without a reload.
        hub = console.app.state.control.hub
        with mock.patch.object(hub, "online", lambda: frozenset({member_node.id})):
            status = row.locator('[data-field="status"]')
            expect(status).to_have_text("online", timeout=POLL_S * 2500)
            expect(row.locator('[data-field="last_seen"]')).to_have_text("connected")

        # Filters live in the query string.
        page.get_by_label("Search").fill("admin-server")
        page.get_by_role("button", name="Filter").click()
        expect(page).to_have_url(f"{url}/admin/machines?q=admin-server")
        expect(table.locator("tbody tr")).to_have_count(1)

        # Approve the member's device, then rename it.
        page.goto(f"{url}/admin/machines/{member_node.id}")
        page.get_by_role("button", name="Approve").click()
        expect(page.locator(".notice")).to_have_text("Approved.")
        expect(page.locator("h1 .badge")).to_have_count(0)
        page.get_by_label("Name").fill("laptop-one")
        page.get_by_role("button", name="Rename").click()
        expect(page.locator(".notice")).to_have_text("Renamed.")
        expect(page.locator("h1")).to_contain_text("laptop-one")
        save_screenshot(page, "console-machine", tmp_path)

        # An auth key, shown once.
        page.goto(f"{url}/admin/keys")
        form = page.locator("#new-auth-key")
        form.get_by_label("User").select_option(user_of(roles.MEMBER))
        form.get_by_label("Reusable").check()
        form.get_by_label("Pre-approved").check()
        form.get_by_role("button", name="Create auth key").click()
        new_key = page.locator("#new-key")
        expect(new_key).to_contain_text("weftkey-")
        key = new_key.inner_text()
        save_screenshot(page, "console-new-key", tmp_path)
        page.goto(f"{url}/admin/keys")
        expect(page.locator("#new-key")).to_have_count(0)
        assert key not in page.content()

        # The policy editor: a good policy is saved; a failing one is shown, not saved.
        page.goto(f"{url}/admin/policy")
        editor = page.get_by_label("Policy")
        editor.fill(GOOD_POLICY)
        page.get_by_role("button", name="Save").click()
        expect(page.locator(".notice")).to_have_text("Policy saved.")
        editor.fill(FAILING_POLICY)
        page.get_by_role("button", name="Save").click()
        expect(page.locator(".error")).to_contain_text("policy refused")
        expect(editor).to_have_value(FAILING_POLICY)
        save_screenshot(page, "console-policy-error", tmp_path)
        assert console.service.get_policy() == GOOD_POLICY

        # The audit log shows those changes, newest first, by this console user.
        page.goto(f"{url}/admin/audit")
        audit = page.locator("#audit tbody")
        for action in ("policy.set", "auth_key.create", "node.authorize", "console.login"):
            expect(audit).to_contain_text(action)
        first = audit.locator("tr").first
        expect(first).to_contain_text("policy.set")
        expect(first).to_contain_text(user_of(roles.OWNER))
        save_screenshot(page, "console-audit", tmp_path)
