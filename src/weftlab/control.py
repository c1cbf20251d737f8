"""Helpers for tests that need a coordination server (unit, API, CLI and lab tests).

- ``start_control(host, data_dir, listen)``: ``python -m weftnet.control.cli.main serve`` as
  a subprocess, in the root namespace (``host=None``) or in a lab host (anything with
  the ``popen``/``run`` methods of ``netlab.Host``). Returns a ``ControlProcess`` with
  ``.url``, ``.api_key``, ``.stop()``, ``.kill()``, ``.admin(...)``.
- ``admin(*args, data_dir=..., host=...)``: run the ``weft-control`` admin CLI.
- ``serve_in_thread(options)``: the server in this process, on a thread (fast; used
  by the API tests).
- ``FakeNode``: a node that speaks the sealed protocol (register, map streams), for
  driving the server without weftd.

Every wait polls with a deadline; nothing sleeps a fixed time to synchronize.
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
from typing import Any, TypeVar

import httpx
from nacl.public import PrivateKey

from weftnet import controlbox, tailcfg

T = TypeVar("T")

START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 15.0
POLL_S = 0.02


def poll(predicate: Callable[[], T], *, timeout_s: float, what: str) -> T:
    """``predicate()`` once it is truthy; TimeoutError naming ``what`` after ``timeout_s``."""
    deadline_at = time.monotonic() + timeout_s
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() >= deadline_at:
            raise TimeoutError(f"timed out after {timeout_s:g} s waiting for {what}")
        time.sleep(POLL_S)


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
    if check and proc.returncode != 0:
        raise AdminCommandError(proc.returncode, argv, proc.stdout, proc.stderr)
    return proc


@dataclass
class ControlProcess:
    process: subprocess.Popen[Any]
    data_dir: Path
    url: str
    api_key: str
    log_path: Path
    host: Any | None = None

    def admin(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return admin(*args, data_dir=self.data_dir, host=self.host, check=check)

    def admin_json(self, *args: str) -> Any:
        return json.loads(self.admin(*args, "--json").stdout)

    def log(self) -> str:
        try:
            return self.log_path.read_text()
        except OSError:
            return ""

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> int:
        """SIGTERM, then wait; the exit status."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout_s)

    def kill(self) -> None:
        """kill -9, as a crash would."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(STOP_TIMEOUT_S)


def start_control(
    host: Any | None,
    data_dir: Path | str,
    listen: str = "127.0.0.1:0",
    *,
    database_url: str | None = None,
    extra_args: Sequence[str] = (),
    timeout_s: float = START_TIMEOUT_S,
) -> ControlProcess:
    """Start ``weft-control serve`` and wait until it accepts requests.

    ``extra_args`` go to ``serve`` (e.g. ``["--keepalive-interval", "1"]``). The server's
    output goes to ``<data_dir>.log``. In the root namespace (``host=None``) the STUN
    server is off unless ``extra_args`` has ``--stun-port``: tests must not take the
    fixed UDP port 3478 of the host they run on.
    """
    data_dir = Path(data_dir)
    if host is None and "--stun-port" not in extra_args:
        extra_args = [*extra_args, "--stun-port", "0"]
    argv = [
        sys.executable,
        "-m",
        "weftnet.control.cli.main",
        "serve",
        "--listen",
        listen,
        "--data-dir",
        str(data_dir),
        *(["--database-url", database_url] if database_url else []),
        *extra_args,
    ]
    log_path = data_dir.with_name(data_dir.name + ".log")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        kwargs: dict[str, Any] = {"stdout": log, "stderr": subprocess.STDOUT}
        if host is not None:
            process = host.popen(argv, **kwargs)
        else:
            process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, **kwargs)
    admin_file = data_dir / "admin.json"

    def ready() -> dict[str, Any] | None:
        if process.poll() is not None:
            raise RuntimeError(
                f"weft-control serve exited with {process.returncode}:\n{log_path.read_text()}"
            )
        try:
            info: dict[str, Any] = json.loads(admin_file.read_text())
        except (OSError, ValueError):
            return None
        if info.get("pid") != process.pid:
            return None  # the file of an earlier run
        if host is None:
            try:
                httpx.get(info["url"] + "/health", timeout=2).raise_for_status()
            except httpx.HTTPError:
                return None
        return info

    try:
        info = poll(ready, timeout_s=timeout_s, what=f"weft-control serve in {data_dir}")
    except BaseException:
        if process.poll() is None:
            process.kill()
            process.wait()
        raise
    assert info is not None
    return ControlProcess(process, data_dir, info["url"], info["api_key"], log_path, host)


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
        poll(
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
        frame = await asyncio.wait_for(self.frames.get(), timeout_s)
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
