"""Helpers for the web console's tests: a server app on an in-memory store with one
user per role (each with a console password) and a few machines, and logged-in clients."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass

import httpx
from fastapi import FastAPI
from fastapi.testclient import TestClient
from nacl.public import PrivateKey

from weftnet import controlbox, tailcfg
from weftnet.control.domain import roles
from weftnet.control.domain.records import Node
from weftnet.control.server.hub import Hub
from weftnet.control.server.node_api import ControlContext, create_app
from weftnet.control.service import ControlService, Registered

from .memstore import MemoryStore

PASSWORD = "correct horse battery staple"
# The user of each role: owner -> "owner", network_admin -> "network-admin", ...
ROLE_USERS = {role: role.replace("_", "-") for role in roles.ROLES}
_CSRF = re.compile(r'name="csrf" value="([^"]+)"')


def user_of(role: str) -> str:
    return ROLE_USERS[role]


def add_node(service: ControlService, user: str, hostname: str) -> Node:
    """A node registered with a fresh auth key of ``user``, as ``weft up`` would."""
    now = time.time()
    key, _ = service.create_auth_key(now, user)
    machine = controlbox.key_to_text(
        tailcfg.MACHINE_KEY_PREFIX, bytes(PrivateKey.generate().public_key)
    )
    node_key = controlbox.key_to_text(
        tailcfg.NODE_KEY_PREFIX, bytes(PrivateKey.generate().public_key)
    )
    request = tailcfg.RegisterRequest(
        ts=now,
        node_key=node_key,
        auth_key=key,
        hostinfo=tailcfg.Hostinfo(hostname=hostname, os="linux"),
    )
    out = service.register(machine, request, now, "http://control")
    assert isinstance(out, Registered)
    return out.node


def seed(service: ControlService) -> dict[str, Node]:
    """One user per role, each with PASSWORD; machines of the member (waiting for
    approval) and of the admin."""
    for role, name in ROLE_USERS.items():
        service.create_user(name, time.time())
        service.set_user_role(name, role)
        service.set_user_password(name, PASSWORD)
    service.set_tailnet_settings(device_approval=True)
    member = add_node(service, user_of(roles.MEMBER), "member-laptop")
    service.set_tailnet_settings(device_approval=False)
    admin = add_node(service, user_of(roles.ADMIN), "admin-server")
    return {"member": member, "admin": admin}


@dataclass
class Console:
    app: FastAPI
    service: ControlService
    nodes: dict[str, Node]

    def client(self) -> TestClient:
        return TestClient(self.app, base_url="http://testserver")

    def login(self, role: str) -> LoggedIn:
        return login(self.client(), user_of(role))


def make_console() -> Console:
    service = ControlService(MemoryStore())
    nodes = seed(service)
    ctx = ControlContext(
        service=service, hub=Hub(service), server_private=b"\0" * 32, server_public=b"\1" * 32
    )
    return Console(create_app(ctx), service, nodes)


@dataclass
class LoggedIn:
    http: TestClient
    csrf: str

    def post(
        self, path: str, data: dict[str, str] | None = None, csrf: bool = True
    ) -> httpx.Response:
        form = dict(data or {})
        if csrf:
            form["csrf"] = self.csrf
        return self.http.post(path, data=form, follow_redirects=False)


def csrf_of(html: str) -> str:
    found = _CSRF.search(html)
    assert found, "no CSRF field in the page"
    return found.group(1)


def login(http: TestClient, name: str, password: str = PASSWORD) -> LoggedIn:
    page = http.get("/admin/login")
    r = http.post(
        "/admin/login",
        data={"csrf": csrf_of(page.text), "username": name, "password": password},
        follow_redirects=False,
    )
    assert r.status_code == 303, r.text
    return LoggedIn(http, csrf_of(http.get("/admin/machines").text))
