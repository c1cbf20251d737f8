"""A scripted browser for the web console, for lab tests: logs in with a local account
and submits one of the console's forms, as a person would (session cookie, the form's
CSRF token). Run it where the console is reachable, e.g. in the control server's
namespace:

    python -m weftlab.console_browser URL CA_FILE USER PASSWORD approve NODE_ID
    python -m weftlab.console_browser URL CA_FILE USER PASSWORD get /admin/machines

It prints one JSON line: the HTTP status of the answer, the wall-clock time (unix
seconds) at which the server answered, and for ``get`` the page's text.
"""

from __future__ import annotations

import json
import re
import sys
import time

import httpx

from weftnet import tls

CSRF = re.compile(r'name="csrf" value="([^"]+)"')
# The forms this script can submit: (page path, form action), by NODE_ID.
FORMS = {"approve": ("/admin/machines/{id}", "/admin/machines/{id}/approve")}


def csrf_of(page: httpx.Response) -> str:
    found = CSRF.search(page.text)
    if page.status_code != 200 or found is None:
        raise SystemExit(f"no form at {page.url}: HTTP {page.status_code}")
    return found.group(1)


def log_in(b: httpx.Client, user: str, password: str) -> None:
    login = b.get("/admin/login")
    r = b.post(
        "/admin/login",
        data={"csrf": csrf_of(login), "next": "/admin", "username": user, "password": password},
    )
    if r.status_code != 303 or "weft_session" not in b.cookies:
        raise SystemExit(f"login refused: HTTP {r.status_code}")


def run(server: str, ca: str, user: str, password: str, what: str, arg: str) -> dict[str, object]:
    with httpx.Client(base_url=server, timeout=10, verify=tls.client_context(ca)) as b:
        log_in(b, user, password)
        if what == "get":
            page = b.get(arg)
            return {"status": page.status_code, "answered_at": time.time(), "text": page.text}
        page_path, action = (p.format(id=arg) for p in FORMS[what])
        done = b.post(action, data={"csrf": csrf_of(b.get(page_path))})
        return {"status": done.status_code, "answered_at": time.time()}


def main() -> None:
    server, ca, user, password, what, arg = sys.argv[1:7]
    print(json.dumps(run(server, ca, user, password, what, arg)))


if __name__ == "__main__":
    main()
