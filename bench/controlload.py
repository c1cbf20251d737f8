"""Benchmark: the coordination server under N simulated nodes (issue 18, control plane).

Theory of operation
-------------------
One real ``weft-control serve`` process (SQLite in its data directory, or with ``--db
postgresql`` a throwaway PostgreSQL cluster from Debian's binaries, weftlab.pgcluster),
on loopback, and ``--workers`` processes that drive N nodes through the real node
protocol (bench.controlnodes: the product's ControlClient and MapSession; no TUN, no
WireGuard). The tailnet: users of ``--devices`` nodes each, a policy where each user's
devices reach each other (``autogroup:self``) and every member reaches ``tag:probe``, so
each map holds the user's other devices and, once it exists, the probe node. Per size:

1. registration: every node registers with its user's auth key (sealed), then opens its
   map stream reporting one endpoint; the rate is nodes registered per second, from the
   first request to the last answer; every stream must get its full map;
2. policy change (3 times): the admin API puts a policy whose rule
   ``autogroup:member -> autogroup:self:PORT`` names a new PORT; each stream notes when
   its packet filter first holds PORT (CLOCK_MONOTONIC, comparable across processes):
   p50, p99 and max over all streams of the time from the PUT;
3. new node: the bench registers a node tagged ``tag:probe`` and opens its stream; the
   time until it is in every map;
4. endpoint update: the probe opens a new stream reporting a new endpoint (as weftd does
   when its endpoints change); the time until every map has it.

Also: mean bytes of a full map (a stream's first frame) and of a delta (the frames that
carried the policy change), the server's peak RSS (VmHWM, /proc) and its CPU seconds
(utime + stime) over the whole run. Every phase has a deadline (``--phase-timeout``);
a stream that misses it counts as "missing", the run goes on and ends by itself.

``--profile DIR`` runs the server under cProfile (its main thread: the event loop, where
maps are built and encoded) and leaves ``DIR/control-N-DB.prof``.

    python -m bench.controlload [--sizes 100,1000,5000] [--db sqlite,postgresql]
                                [--workers 3] [--devices 10] [--json PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import json
import multiprocessing
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import httpx

from bench.controlnodes import Mark, WorkerSpec, memory_client, raise_open_files, worker_main
from weftlab.control import Control, start_control
from weftlab.pgcluster import throwaway_cluster
from weftlab.proccpu import cpu_seconds
from weftnet import controlbox, tailcfg
from weftnet.node.mapsession import MapSession

DEFAULT_SIZES = (100, 1000, 5000)
DEFAULT_DBS = ("sqlite", "postgresql")
POLICY_CHANGES = 3  # policy changes per size; p99 is over every stream of all of them
FIRST_MARK_PORT = 40000  # the policy's marker ports count up from here
PROBE_ENDPOINT = "198.19.0.1:{port}"  # the probe's endpoints, in the lab underlay range
RSS_SAMPLE_S = 0.5
REGISTER_S_PER_NODE = 0.25  # the registration phase's deadline grows with the node count


@dataclass
class Result:
    size: int
    db: str
    registered: int = 0
    register_rate: float | None = None  # nodes per second
    streams: int = 0  # streams that got their full map
    policy_ms: tuple[float, float, float] | None = None  # p50, p99, max
    policy_missing: int = 0
    new_node_ms: tuple[float, float, float] | None = None
    new_node_missing: int = 0
    endpoint_ms: tuple[float, float, float] | None = None
    endpoint_missing: int = 0
    full_map_bytes: float | None = None
    delta_bytes: float | None = None
    rss_mb: float | None = None
    cpu_s: float | None = None
    wall_s: float = 0.0
    errors: list[str] = field(default_factory=list)


def policy_text(port: int) -> str:
    return json.dumps(
        {
            "tagOwners": {"tag:probe": ["autogroup:member"]},
            "acls": [
                {"action": "accept", "src": ["autogroup:member"], "dst": ["autogroup:self:*"]},
                {"action": "accept", "src": ["autogroup:member"], "dst": ["tag:probe:*"]},
                {
                    "action": "accept",
                    "src": ["autogroup:member"],
                    "dst": [f"autogroup:self:{port}"],
                },
            ],
        }
    )


def percentiles(values: Sequence[float]) -> tuple[float, float, float] | None:
    """(p50, p99, max) in milliseconds of ``values`` in seconds; None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return (statistics.median(ordered) * 1000, p99 * 1000, ordered[-1] * 1000)


def rss_peak_mb(pid: int) -> float | None:
    """VmHWM (peak resident set) of ``pid`` in MB."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return None


class Admin:
    """The admin API with the server's local admin key."""

    def __init__(self, control: Control) -> None:
        self.http = httpx.Client(
            base_url=f"{control.url}/api/v1",
            headers={"Authorization": f"Bearer {control.api_key}"},
            timeout=120.0,
        )

    def call(self, method: str, path: str, body: Any = None) -> Any:
        r = self.http.request(method, path, json=body)
        if r.status_code >= 300:
            raise RuntimeError(f"{method} {path}: HTTP {r.status_code}: {r.text[:300]}")
        return r.json()

    def close(self) -> None:
        self.http.close()


class Workers:
    """The worker processes and their pipes: a command to all, then every answer."""

    def __init__(self, specs: Sequence[WorkerSpec]) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.conns: list[Connection] = []
        self.procs: list[Any] = []
        for spec in specs:
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=worker_main, args=(child, spec), daemon=True)
            proc.start()
            child.close()
            self.conns.append(parent)
            self.procs.append(proc)

    def ask(self, command: str, arg: Any, timeout_s: float) -> list[Any]:
        for conn in self.conns:
            conn.send((command, arg))
        answers = []
        for conn in self.conns:
            if not conn.poll(timeout_s):
                raise TimeoutError(f"a worker did not answer {command!r} in {timeout_s:.0f} s")
            answers.append(conn.recv())
        return answers

    def close(self) -> None:
        for conn in self.conns:
            conn.close()
        for proc in self.procs:
            proc.join(10)
            if proc.is_alive():
                proc.kill()
                proc.join()


class Probe:
    """The new node (tag:probe), driven from the bench's own loop in a thread."""

    def __init__(self, url: str, server_key: bytes, auth_key: str) -> None:
        self.url, self.server_key, self.auth_key = url, server_key, auth_key
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.http = httpx.AsyncClient(timeout=httpx.Timeout(120.0, connect=60.0))
        self.client = memory_client(url, server_key, self.http)
        self.stream: concurrent.futures.Future[None] | None = None

    def run(self, coro: Any, timeout_s: float) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout_s)

    @property
    def node_key(self) -> str:
        return controlbox.key_to_text(tailcfg.NODE_KEY_PREFIX, self.client.state.node_public)

    def register(self, timeout_s: float) -> None:
        resp = self.run(self.client.register(auth_key=self.auth_key, hostname="probe"), timeout_s)
        if not resp.machine_authorized:
            raise RuntimeError(f"the probe node was not registered: {resp.error}")

    def follow(self, endpoint: str, timeout_s: float) -> None:
        """(Re)open the probe's map stream, reporting ``endpoint``; wait for its full map."""
        if self.stream is not None:
            self.stream.cancel()
        got_full: asyncio.Future[None] = self.loop.create_future()

        async def follow() -> None:
            session = MapSession()
            async for resp in self.client.map_stream([endpoint], "probe"):
                session.apply(resp)
                if not got_full.done():
                    got_full.set_result(None)

        self.stream = asyncio.run_coroutine_threadsafe(follow(), self.loop)

        async def wait() -> None:
            await got_full

        self.run(wait(), timeout_s)

    def close(self) -> None:
        if self.stream is not None:
            self.stream.cancel()
        with contextlib.suppress(Exception):
            self.run(self.http.aclose(), 10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@contextlib.contextmanager
def database(db: str) -> Iterator[str | None]:
    """The server's --database-url (None: SQLite in its data directory)."""
    if db == "sqlite":
        yield None
        return
    with throwaway_cluster() as cluster:
        cluster.admin("CREATE DATABASE weft_bench")
        yield cluster.url("weft_bench")


def _sampler(pid: int, stop: threading.Event, peak: list[float]) -> None:
    while not stop.wait(RSS_SAMPLE_S):
        rss = rss_peak_mb(pid)
        if rss is not None:
            peak[0] = max(peak[0], rss)


def run_size(size: int, db: str, args: argparse.Namespace) -> Result:
    result = Result(size, db)
    started = time.monotonic()
    deadline_s = args.phase_timeout
    with tempfile.TemporaryDirectory(prefix="weft-controlload-") as tmp, database(db) as url:
        program = None
        if args.profile is not None:
            args.profile.mkdir(parents=True, exist_ok=True)
            out = args.profile / f"control-{size}-{db}.prof"
            program = [sys.executable, "-m", "cProfile", "-o", str(out), "-m",
                       "weftnet.control.cli.main"]  # fmt: skip
        limit = size + 1024  # every stream, the bench's requests and some spare
        control = start_control(
            None,
            Path(tmp) / "control",
            database_url=url,
            extra_args=[
                "--no-access-log",
                "--no-relay",
                "--max-connections",
                str(limit),
                "--max-connections-per-address",
                str(limit),
            ],
            program=program,
            timeout_s=120.0,
        )
        assert control.process is not None
        pid = control.process.pid
        stop_sampling, peak = threading.Event(), [0.0]
        sampler = threading.Thread(target=_sampler, args=(pid, stop_sampling, peak), daemon=True)
        sampler.start()
        admin = Admin(control)
        workers: Workers | None = None
        probe: Probe | None = None
        try:
            key_text = httpx.get(f"{control.url}/key", timeout=30).json()["public_key"]
            server_key = controlbox.key_from_text(tailcfg.MACHINE_KEY_PREFIX, key_text)
            admin.call("PUT", "/policy", {"policy": policy_text(FIRST_MARK_PORT)})
            keys = []
            for u in range((size + args.devices - 1) // args.devices):
                admin.call("POST", "/users", {"name": f"user{u}"})
                body = {"user": f"user{u}", "reusable": True, "preauthorized": True}
                keys.append(admin.call("POST", "/keys", body)["key"])
            probe_key = admin.call("POST", "/keys", {"tags": ["tag:probe"], "preauthorized": True})[
                "key"
            ]
            nodes = [(i, keys[i // args.devices]) for i in range(size)]
            specs = [
                WorkerSpec(control.url, key_text, nodes[w :: args.workers], args.concurrency)
                for w in range(args.workers)
            ]
            workers = Workers([s for s in specs if s.nodes])

            # 1. registration and the first full maps
            register_s = deadline_s + size * REGISTER_S_PER_NODE
            answers = workers.ask("register", register_s, register_s + 30)
            result.registered = sum(a["registered"] for a in answers)
            result.streams = sum(a["streams"] for a in answers)
            result.errors += [e for a in answers for e in a["errors"]]
            firsts = [a["first_at"] for a in answers if a["first_at"] is not None]
            lasts = [a["last_at"] for a in answers if a["last_at"] is not None]
            if firsts and result.registered > 1:
                result.register_rate = result.registered / max(1e-6, max(lasts) - min(firsts))

            _progress(f"registered {result.registered}, {result.streams} streams")

            # 2. policy changes
            latencies: list[float] = []
            delta_sizes: list[int] = []
            for change in range(1, POLICY_CHANGES + 1):
                mark = Mark(port=FIRST_MARK_PORT + change)
                workers.ask("watch", mark, 30)
                t0 = time.monotonic()
                admin.call("PUT", "/policy", {"policy": policy_text(mark.port or 0)})
                put_s = time.monotonic() - t0
                seen: list[float] = []
                for a in workers.ask("collect", (mark, deadline_s), deadline_s + 30):
                    seen += [t - t0 for t in a["times"]]
                    delta_sizes += a["bytes"]
                    result.policy_missing += a["missing"]
                _progress(
                    f"policy change {change}: PUT answered in {put_s * 1000:.0f} ms,"
                    f" streams {_ms(percentiles(seen))} ms, first {min(seen, default=0) * 1000:.0f} ms"
                )
                latencies += seen
            result.policy_ms = percentiles(latencies)
            if delta_sizes:
                result.delta_bytes = statistics.mean(delta_sizes)

            _progress(f"policy change p50/p99/max {_ms(result.policy_ms)} ms")

            # 3. a new node; 4. its endpoint update
            probe = Probe(control.url, server_key, probe_key)
            mark = Mark(node_key=probe.node_key)
            workers.ask("watch", mark, 30)
            t0 = time.monotonic()
            probe.register(deadline_s)
            answers = workers.ask("collect", (mark, deadline_s), deadline_s + 30)
            result.new_node_ms = percentiles([t - t0 for a in answers for t in a["times"]])
            result.new_node_missing = sum(a["missing"] for a in answers)
            probe.follow(PROBE_ENDPOINT.format(port=1), deadline_s)

            endpoint = PROBE_ENDPOINT.format(port=2)
            mark = Mark(node_key=probe.node_key, endpoint=endpoint)
            workers.ask("watch", mark, 30)
            t0 = time.monotonic()
            probe.follow(endpoint, deadline_s)
            answers = workers.ask("collect", (mark, deadline_s), deadline_s + 30)
            result.endpoint_ms = percentiles([t - t0 for a in answers for t in a["times"]])
            result.endpoint_missing = sum(a["missing"] for a in answers)

            stats = workers.ask("stop", None, 60)
            full = [b for s in stats for b in s["full_bytes"]]
            if full:
                result.full_map_bytes = statistics.mean(full)
            result.cpu_s = cpu_seconds(pid)
            result.rss_mb = max(peak[0], rss_peak_mb(pid) or 0.0)
        except (RuntimeError, TimeoutError, httpx.HTTPError) as e:
            result.errors.append(f"{type(e).__name__}: {e}")
        finally:
            stop_sampling.set()
            if probe is not None:
                probe.close()
            if workers is not None:
                workers.close()
            admin.close()
            try:
                control.stop(timeout_s=60.0)
            except subprocess.TimeoutExpired:  # never leave a server behind
                assert control.process is not None
                control.process.send_signal(signal.SIGUSR1)  # every thread's stack, to its log
                time.sleep(1.0)
                kept = Path(tempfile.gettempdir()) / f"weft-controlload-{size}-{db}-stuck.log"
                shutil.copyfile(control.log_path, kept)  # the data directory goes
                result.errors.append(
                    "the server did not stop within 60 s of SIGTERM"
                    f" (its log, ending with its threads' stacks: {kept})"
                )
                control.kill()
    result.wall_s = time.monotonic() - started
    return result


def _progress(text: str) -> None:
    print(f"#   {text}", file=sys.stderr, flush=True)


def _ms(v: tuple[float, float, float] | None) -> str:
    return "-" if v is None else " / ".join(f"{x:.0f}" for x in v)


def _num(v: float | None, fmt: str = "{:.0f}") -> str:
    return "-" if v is None else fmt.format(v)


def markdown_table(results: Sequence[Result]) -> str:
    head = (
        "| nodes | db | registration (nodes/s) | policy change p50 / p99 / max (ms) "
        "| new node in every map p50 / p99 / max (ms) | endpoint update p50 / p99 / max (ms) "
        "| full map (bytes) | delta (bytes) | server RSS peak (MB) | server CPU (s) |"
    )
    lines = [head, "|" + "---|" * 10]
    for r in results:
        missing = r.policy_missing + r.new_node_missing + r.endpoint_missing
        note = f" ({missing} missed)" if missing else ""
        lines.append(
            f"| {r.size}{note} | {r.db} | {_num(r.register_rate)} | {_ms(r.policy_ms)} "
            f"| {_ms(r.new_node_ms)} | {_ms(r.endpoint_ms)} | {_num(r.full_map_bytes)} "
            f"| {_num(r.delta_bytes)} | {_num(r.rss_mb)} | {_num(r.cpu_s, '{:.1f}')} |"
        )
    return "\n".join(lines)


def growth(results: Sequence[Result], small: int = 1000, large: int = 5000) -> list[str]:
    """How the figures grow from ``small`` to ``large`` nodes, per database."""
    out = []
    by = {(r.size, r.db): r for r in results}
    for db in dict.fromkeys(r.db for r in results):
        a, b = by.get((small, db)), by.get((large, db))
        if a is None or b is None:
            continue
        parts = []
        for label, x, y in (
            ("policy p99", a.policy_ms and a.policy_ms[1], b.policy_ms and b.policy_ms[1]),
            (
                "new node p99",
                a.new_node_ms and a.new_node_ms[1],
                b.new_node_ms and b.new_node_ms[1],
            ),
            ("RSS", a.rss_mb, b.rss_mb),
            ("CPU", a.cpu_s, b.cpu_s),
            ("registration rate", a.register_rate, b.register_rate),
        ):
            if x and y:
                parts.append(f"{label} x{y / x:.1f}")
        out.append(f"{db}, {small} -> {large} nodes (x{large / small:.0f}): " + ", ".join(parts))
    return out


def _csv(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench.controlload", description=__doc__.split("\n")[0]
    )
    p.add_argument("--sizes", type=lambda s: [int(x) for x in _csv(s)], default=list(DEFAULT_SIZES))
    p.add_argument("--db", type=_csv, default=list(DEFAULT_DBS), help="sqlite,postgresql")
    p.add_argument("--workers", type=int, default=3, help="load generator processes")
    p.add_argument("--concurrency", type=int, default=16, help="registrations in flight per worker")
    p.add_argument("--devices", type=int, default=10, help="nodes per user")
    p.add_argument("--phase-timeout", type=float, default=120.0, metavar="SECONDS")
    p.add_argument("--profile", type=Path, metavar="DIR", help="run the server under cProfile")
    p.add_argument("--json", type=Path, metavar="PATH")
    args = p.parse_args(argv)
    for db in args.db:
        if db not in DEFAULT_DBS:
            p.error(f"--db {db}: expected sqlite or postgresql")
    if args.workers < 1 or args.devices < 1 or args.concurrency < 1 or min(args.sizes) < 1:
        p.error("--workers, --devices, --concurrency and every size must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    raise_open_files()
    results = []
    for db in args.db:
        for size in args.sizes:
            print(f"# {size} nodes on {db} ...", file=sys.stderr, flush=True)
            r = run_size(size, db, args)
            print(f"#   done in {r.wall_s:.0f} s {r.errors[:3] or ''}", file=sys.stderr, flush=True)
            results.append(r)
    print(markdown_table(results))
    for line in growth(results):
        print(f"\n{line}")
    if args.json is not None:
        args.json.write_text(json.dumps([asdict(r) for r in results], indent=2))
    failed = any(r.errors or r.streams < r.size for r in results)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
