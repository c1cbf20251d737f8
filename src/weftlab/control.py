"""Helpers for tests that need a coordination server (unit, API, CLI and lab tests).

- ``start_control(host, data_dir)``: ``weft-control serve`` as a subprocess, in the root
  namespace (``host=None``, on 127.0.0.1, a free port, plain http unless ``tls=True``)
  or in a lab host (anything with the ``popen``/``run`` methods of ``netlab.Host``;
  port 8080 on all its addresses, reached at ``https://<host.ip>:8080`` with a
  certificate from the run's test CA, ``weftlab.testca.lab_ca()``, unless ``tls=False``). Returns a ``Control`` with ``.url``, ``.api_key``,
  ``.admin(...)``, ``.stop()``, ``.kill()``, ``.start()`` (again, after a kill) and,
  with ``policy_clock=True``, ``.set_policy_clock(now)``.
- ``admin(*args, data_dir=..., host=...)``: run the ``weft-control`` admin CLI.
- ``serve_in_thread(options)``: the server in this process, on a thread (fast; used
  by the API tests).
- ``FakeNode``: a node that speaks the sealed protocol (register, map streams), for
  driving the server without weftd.

Every wait polls with a deadline (``netlab.poll_until``); nothing sleeps a fixed time to
synchronize.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from nacl.public import PrivateKey

from weftlab import control_clock, secrets
from weftlab.netlab import poll_until
from weftlab.testca import lab_ca
from weftnet import controlbox, tailcfg, tls
from weftnet.asyncwait import wait_within

START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 15.0
LAB_CONTROL_PORT = 8080  # a lab host's control server listens here, on every address


class AdminCommandError(subprocess.CalledProcessError):
    def __str__(self) -> str:
        return f"{super().__str__()}\nstdout: {self.stdout}\nstderr: {self.stderr}"


def admin(
    *args: str,
    data_dir: Path | str | None = None,
    server: str | None = None,
    api_key: str | None = None,
    host: Any | None = None,
    check: bool = True,
    timeout_s: float = 30.0,
) -> subprocess.CompletedProcess[str]:
    """Run ``weft-control ARGS... [--data-dir D | --server URL --api-key K]``."""
    argv = [sys.executable, "-m", "weftnet.control.cli.main", *args]
    if data_dir is not None:
        argv += ["--data-dir", str(data_dir)]
    if server is not None:
        argv += ["--server", server]
    if api_key is not None:
        argv += ["--api-key", api_key]
    if host is not None:
        proc: subprocess.CompletedProcess[str] = host.run(argv, check=False, timeout=timeout_s)
    else:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s, check=False)
    secrets.remember_in(" ".join([*args, proc.stdout or ""]))  # no log may hold these keys
    if check and proc.returncode != 0:
        raise AdminCommandError(proc.returncode, argv, proc.stdout, proc.stderr)
    return proc


@dataclass
class Control:
    """One ``weft-control serve`` process (and its restarts on the same data dir)."""

    argv: list[str]
    data_dir: Path
    host: Any | None = None  # a lab host, or None for the root namespace
    public_url: str | None = None  # the URL nodes use; else the one admin.json names
    clock_file: Path | None = None  # with a policy clock: the file that moves it
    ca_file: Path | None = None  # with TLS: the CA its certificate chains to
    process: subprocess.Popen[Any] | None = None
    url: str = ""
    api_key: str = ""
    log_path: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log_path = self.data_dir.with_name(self.data_dir.name + ".log")

    def start(self, timeout_s: float = START_TIMEOUT_S) -> None:
        """Start the server (again) and wait until it answers ``/health``."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            kwargs: dict[str, Any] = {"stdout": log, "stderr": subprocess.STDOUT}
            if self.host is not None:
                process = self.host.popen(self.argv, **kwargs)
            else:
                process = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, **kwargs)
        self.process = process
        try:
            info = poll_until(
                self._ready, timeout_s=timeout_s, what=f"weft-control serve in {self.data_dir}"
            )
        except BaseException:
            if process.poll() is None:
                process.kill()
                process.wait()
            raise
        assert info is not None
        self.url = self.public_url or info["url"]
        self.api_key = info["api_key"]
        secrets.remember(self.api_key)

    def _ready(self) -> dict[str, Any] | None:
        assert self.process is not None
        if self.process.poll() is not None:
            raise RuntimeError(
                f"weft-control serve exited with {self.process.returncode}:\n{self.log()[-4000:]}"
            )
        try:
            info: dict[str, Any] = json.loads((self.data_dir / "admin.json").read_text())
        except (OSError, ValueError):
            return None
        if info.get("pid") != self.process.pid:
            return None  # the file of an earlier run
        return info if self._healthy(self.public_url or info["url"]) else None

    def _healthy(self, url: str) -> bool:
        ca = str(self.ca_file) if self.ca_file is not None else None
        if self.host is None:
            try:
                verify = tls.client_context(ca)
                httpx.get(url + "/health", timeout=2, verify=verify).raise_for_status()
            except httpx.HTTPError:
                return False
            return True
        probe = (
            "import ssl, urllib.request as u;"
            f" u.urlopen('{url}/health', timeout=2, context=ssl.create_default_context(cafile={ca!r}))"
        )
        return bool(self.host.run(["python3", "-c", probe], check=False).returncode == 0)

    def admin(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return admin(*args, data_dir=self.data_dir, host=self.host, check=check)

    def admin_json(self, *args: str) -> Any:
        return json.loads(self.admin(*args, "--json").stdout)

    def node_id(self, given_name: str) -> int:
        """The id of the node named ``given_name`` in `weft-control nodes list`."""
        rows = self.admin_json("nodes", "list")
        return int(next(n["id"] for n in rows if n["given_name"] == given_name))

    def set_policy_clock(self, now: float) -> None:
        """Judge policy schedules as if it were ``now`` (time runs on from there)."""
        if self.clock_file is None:
            raise RuntimeError("start_control(..., policy_clock=True) to move the clock")
        control_clock.set_clock(self.clock_file, now)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> int:
        """SIGTERM, then wait; the exit status."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout_s)

    def kill(self) -> None:
        """kill -9, as a crash would."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(STOP_TIMEOUT_S)


def start_control(
    host: Any | None,
    data_dir: Path | str,
    listen: str | None = None,
    *,
    database_url: str | None = None,
    extra_args: Sequence[str] = (),
    policy_clock: bool = False,
    timeout_s: float = START_TIMEOUT_S,
    reach_url: str | None = None,
    tls: bool | None = None,
    program: Sequence[str] | None = None,
) -> Control:
    """Start ``weft-control serve`` and wait until it accepts requests.

    In the root namespace (``host=None``) it listens on ``listen`` (default
    127.0.0.1, a free port) and the STUN server is off unless ``extra_args`` has
    ``--stun-port``: tests must not take the fixed UDP port 3478 of the machine they run
    on. In a lab host it listens on ``listen`` (default every address, port 8080) and
    tells nodes ``http://<host.ip>:8080`` (``--server-url``). ``extra_args`` go to
    ``serve`` (e.g. ``["--keepalive-interval", "1"]``). With ``policy_clock`` the server
    runs under ``weftlab.control_clock``: ``Control.set_policy_clock`` moves the clock
    its policy schedules are judged by. ``reach_url`` is the URL the tests and nodes use
    when ``--server-url`` in ``extra_args`` names another. ``tls`` (default: in a lab
    host) serves https with a certificate of the run's test CA for the host's address,
    127.0.0.1 and localhost; ``Control.ca_file`` is that CA. ``program`` is the
    weft-control to run (default: this checkout's, under this Python; an installed one
    in tests/lab/test_clean_install.py). Output goes to ``<data_dir>.log``.
    """
    data_dir = Path(data_dir)
    extra = list(extra_args)
    public_url = reach_url
    use_tls = tls if tls is not None else host is not None
    scheme = "https" if use_tls else "http"
    ca_file = None
    if use_tls:
        ca = lab_ca()
        names = ([host.ip] if host is not None else []) + ["127.0.0.1", "localhost"]
        cert, key = ca.issue("tls", names, data_dir.with_name(data_dir.name + "-tls"))
        extra += ["--tls-cert", str(cert), "--tls-key", str(key)]
        ca_file = ca.ca_file
    if host is None:
        listen = listen or "127.0.0.1:0"
        if "--stun-port" not in extra:
            extra += ["--stun-port", "0"]
    else:
        listen = listen or f"0.0.0.0:{LAB_CONTROL_PORT}"
        if "--server-url" not in extra:
            public_url = f"{scheme}://{host.ip}:{listen.rpartition(':')[2]}"
            extra += ["--server-url", public_url]
    clock_file = data_dir.with_name(data_dir.name + ".policy-clock") if policy_clock else None
    launcher = ["weftlab.control_clock", "--clock-file", str(clock_file)] if clock_file else []
    if program is None:
        program = [sys.executable, "-m", *(launcher or ["weftnet.control.cli.main"])]
    elif launcher:
        raise ValueError("policy_clock runs this checkout's weft-control: no program")
    argv = [
        *program,
        "serve",
        "--listen",
        listen,
        "--data-dir",
        str(data_dir),
        *(["--database-url", database_url] if database_url else []),
        *extra,
    ]
    control = Control(argv, data_dir, host, public_url, clock_file, ca_file)
    control.start(timeout_s)
    return control


@contextlib.contextmanager
def serve_in_thread(options: Any) -> Iterator[Any]:
    """A ``server.ControlServer`` for ``options`` (``server.ServeOptions``), serving on a
    thread of this process until the block ends."""
    from weftnet.control.server.app import ControlServer

    server = ControlServer(options)
    server.open()
    thread = threading.Thread(target=server.run, name="weft-control", daemon=True)
    thread.start()
    try:
        poll_until(
            lambda: server.started or not thread.is_alive(),
            timeout_s=START_TIMEOUT_S,
            what="server",
        )
        if not thread.is_alive():
            raise RuntimeError("the in-process server stopped during startup")
        yield server
    finally:
        server.request_stop()
        thread.join(STOP_TIMEOUT_S)
        if thread.is_alive():
            raise RuntimeError("the in-process server did not stop")


class StreamEnded(Exception):
    """The server ended the map stream (or the connection broke)."""


@dataclass
class MapStream:
    """Frames of one map stream, read in the background."""

    frames: asyncio.Queue[tailcfg.MapResponse | None] = field(default_factory=asyncio.Queue)
    received: list[tailcfg.MapResponse] = field(default_factory=list)

    async def next(self, timeout_s: float = 5.0) -> tailcfg.MapResponse:
        frame = await wait_within(self.frames.get(), timeout_s)
        if frame is None:
            self.frames.put_nowait(None)  # stays ended
            raise StreamEnded
        return frame

    async def until(
        self, predicate: Callable[[tailcfg.MapResponse], bool], timeout_s: float = 5.0
    ) -> tailcfg.MapResponse:
        """The first frame (skipping others) for which ``predicate`` holds."""
        deadline_at = time.monotonic() + timeout_s
        while True:
            remaining_s = deadline_at - time.monotonic()
            if remaining_s <= 0:
                raise TimeoutError("no matching map frame in time")
            frame = await self.next(remaining_s)
            if predicate(frame):
                return frame


class FakeNode:
    """A device speaking the node protocol: machine key, node key, sealed requests."""

    def __init__(self, url: str, http: httpx.AsyncClient, hostname: str = "node") -> None:
        self.url = url.rstrip("/")
        self.http = http
        self.hostname = hostname
        self.machine = PrivateKey.generate()
        self.node = PrivateKey.generate()
        self.server_public: bytes | None = None

    @property
    def machine_key(self) -> str:
        return controlbox.key_to_text(tailcfg.MACHINE_KEY_PREFIX, bytes(self.machine.public_key))

    @property
    def node_key(self) -> str:
        return controlbox.key_to_text(tailcfg.NODE_KEY_PREFIX, bytes(self.node.public_key))

    def rotate_node_key(self) -> str:
        """A new node key; returns the old one's text."""
        old = self.node_key
        self.node = PrivateKey.generate()
        return old

    async def fetch_server_key(self) -> bytes:
        if self.server_public is None:
            r = await self.http.get(f"{self.url}/key")
            r.raise_for_status()
            key = tailcfg.ServerKey.model_validate_json(r.content).public_key
            self.server_public = controlbox.key_from_text(tailcfg.MACHINE_KEY_PREFIX, key)
        return self.server_public

    def seal(self, model: tailcfg.Wire) -> bytes:
        return self.seal_bytes(model.model_dump_json().encode())

    def seal_bytes(self, body: bytes) -> bytes:
        """Any body, sealed as this machine would: for tests of malformed requests."""
        assert self.server_public is not None
        nonce = os.urandom(controlbox.NONCE_LEN)
        return controlbox.seal(bytes(self.machine), self.server_public, body, nonce)

    def open(self, sealed: bytes) -> bytes:
        assert self.server_public is not None
        return controlbox.open_sealed(bytes(self.machine), self.server_public, sealed)

    def machine_url(self, what: str) -> str:
        return f"{self.url}/machine/{bytes(self.machine.public_key).hex()}/{what}"

    async def post(self, what: str, body: bytes) -> httpx.Response:
        await self.fetch_server_key()
        return await self.http.post(self.machine_url(what), content=body)

    def register_request(self, **fields: Any) -> tailcfg.RegisterRequest:
        fields.setdefault("ts", time.time())
        fields.setdefault("node_key", self.node_key)
        fields.setdefault("hostinfo", tailcfg.Hostinfo(hostname=self.hostname))
        return tailcfg.RegisterRequest(**fields)

    async def register(
        self, auth_key: str | None = None, **fields: Any
    ) -> tailcfg.RegisterResponse:
        await self.fetch_server_key()
        req = self.register_request(auth_key=auth_key, **fields)
        r = await self.post("register", self.seal(req))
        if r.status_code != 200:
            raise RuntimeError(f"register: HTTP {r.status_code}: {r.text}")
        return tailcfg.RegisterResponse.model_validate_json(self.open(r.content))

    def map_request(self, **fields: Any) -> tailcfg.MapRequest:
        fields.setdefault("ts", time.time())
        fields.setdefault("node_key", self.node_key)
        fields.setdefault("hostinfo", tailcfg.Hostinfo(hostname=self.hostname))
        return tailcfg.MapRequest(**fields)

    async def map_once(self, **fields: Any) -> list[tailcfg.MapResponse]:
        """A map request that does not stream (``stream=False`` unless given)."""
        await self.fetch_server_key()
        fields.setdefault("stream", False)
        r = await self.post("map", self.seal(self.map_request(**fields)))
        reader = controlbox.FrameReader()
        return [
            tailcfg.MapResponse.model_validate_json(self.open(f)) for f in reader.feed(r.content)
        ]

    @contextlib.asynccontextmanager
    async def map_stream(self, **fields: Any) -> AsyncIterator[MapStream]:
        """A live map stream; frames arrive in ``MapStream`` until the block ends."""
        await self.fetch_server_key()
        body = self.seal(self.map_request(**fields))
        stream = MapStream()

        async def read() -> None:
            reader = controlbox.FrameReader()
            try:
                async with self.http.stream("POST", self.machine_url("map"), content=body) as r:
                    async for chunk in r.aiter_raw():
                        for sealed in reader.feed(chunk):
                            frame = tailcfg.MapResponse.model_validate_json(self.open(sealed))
                            stream.received.append(frame)
                            stream.frames.put_nowait(frame)
            except httpx.HTTPError:
                pass
            finally:
                stream.frames.put_nowait(None)

        task = asyncio.get_running_loop().create_task(read())
        try:
            yield stream
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
