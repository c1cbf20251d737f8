"""The relay alone: how fast one RelayServer forwards from one RelayClient to another.

Three processes on 127.0.0.1: the relay (``RelayServer.serve_tcp``, TLS with ``--tls``
from a throwaway CA), a receiver counting what arrives, and a sender queueing batches of
45 datagrams of 1,440 bytes (what weftd's data plane hands over for a TCP stream) as fast
as its client's queue takes them. No weftd, no TUN, no WireGuard: this measures the relay
path's own cost (framing, queues, TLS, sockets), which the ``tailnet-relay`` row of
``bench.run`` mixes with the data plane's. ``--legacy`` runs a relay that does not offer
batches, as before they existed: every datagram is a frame of its own.

Prints one Markdown row: Gbit/s of datagrams received, and the relay process's CPU
seconds per gigabit over the same window. Numbers move with whatever else runs.

    python -m bench.relaypump [--seconds N] [--tls] [--legacy] [--asyncio]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence

import uvloop
from nacl.public import PrivateKey

from weftnet import tls
from weftnet.relay.client import RelayClient
from weftnet.relay.server import RelayServer

WARMUP_S = 1.0  # after the clients connect, before the window opens
SEG = 1440  # bytes per datagram: a 1,420-byte-MTU packet sealed by WireGuard (+ padding)
PER_BATCH = 45  # datagrams per batch: about 64 KiB, like one GSO send
SENDER_SEED = bytes([1]) * 32  # fixed node keys: the processes agree without talking
RECEIVER_SEED = bytes([2]) * 32
RELAY_SEED = bytes([3]) * 32
FULL_QUEUE_PAUSE_S = 0.0005  # the sender's pause when its client's queue is full


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _public(seed: bytes) -> bytes:
    return bytes(PrivateKey(seed).public_key)


async def _admit(_key: bytes) -> bool:
    return True


async def relay(port: int, seconds: float, tls_dir: str | None, legacy: bool) -> dict[str, float]:
    ctx = None
    if tls_dir is not None:
        ctx = tls.server_context(f"{tls_dir}/relay.pem", f"{tls_dir}/relay.key")
    server = RelayServer(
        RELAY_SEED,
        _admit,
        rate_bytes_per_s=10**12,
        burst_bytes=10**9,
        features=frozenset() if legacy else frozenset({"batch"}),
    )
    await server.serve_tcp("127.0.0.1", port, ctx)
    print(json.dumps({"listening": port}), flush=True)
    await _go()
    before = _cpu_s()
    await asyncio.sleep(seconds)
    cpu = _cpu_s() - before
    await server.close()
    return {"relay_cpu_s": cpu}


async def _go() -> None:
    """Wait for the parent's word that every process is connected and warmed up."""
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)


async def _connected_client(
    seed: bytes, port: int, tls_dir: str | None, on_packet: Callable[[bytes, bytes], None],
    on_batch: Callable[[bytes, bytes, int], None] | None = None,
) -> RelayClient:  # fmt: skip
    scheme, ctx = "http", None
    if tls_dir is not None:
        scheme, ctx = "https", tls.client_context(f"{tls_dir}/ca.pem")
    url = f"{scheme}://127.0.0.1:{port}"
    client = RelayClient(url, seed, on_packet, on_batch=on_batch, tls_context=ctx)
    client.start()
    if not await client.wait_connected(10.0):
        raise RuntimeError(f"bench.relaypump: no relay connection: {client.last_error}")
    print(json.dumps({"connected": True}), flush=True)
    return client


async def receive(port: int, seconds: float, tls_dir: str | None) -> dict[str, float]:
    got = [0]

    def on_packet(_src: bytes, data: bytes) -> None:
        got[0] += len(data)

    def on_batch(_src: bytes, data: bytes, _seg: int) -> None:
        got[0] += len(data)

    client = await _connected_client(RECEIVER_SEED, port, tls_dir, on_packet, on_batch)
    await _go()
    start, at = got[0], time.monotonic()
    await asyncio.sleep(seconds)
    elapsed = time.monotonic() - at
    await client.close()
    return {"bytes": got[0] - start, "elapsed_s": elapsed}


async def send(port: int, seconds: float, tls_dir: str | None) -> dict[str, float]:
    client = await _connected_client(SENDER_SEED, port, tls_dir, lambda _s, _d: None)
    blob, dst = os.urandom(SEG * PER_BATCH), _public(RECEIVER_SEED)
    deadline = time.monotonic() + WARMUP_S + seconds + 2.0
    while time.monotonic() < deadline:
        if client.send_batch(dst, blob, SEG) < PER_BATCH:
            await asyncio.sleep(FULL_QUEUE_PAUSE_S)
        else:
            await asyncio.sleep(0)
    await client.close()
    return {}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _child(
    role: str, port: int, args: argparse.Namespace, tls_dir: str | None
) -> subprocess.Popen[str]:
    cmd = [sys.executable, "-m", "bench.relaypump", "--role", role, "--port", str(port)]
    cmd += ["--seconds", str(args.seconds)] + (["--tls-dir", tls_dir] if tls_dir else [])
    cmd += ["--legacy"] if args.legacy else []
    cmd += ["--asyncio"] if args.asyncio else []
    return subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)


def _line(proc: subprocess.Popen[str]) -> dict[str, float]:
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        raise RuntimeError(f"bench.relaypump: a child exited ({proc.wait()})")
    return dict(json.loads(line))


def run(args: argparse.Namespace) -> str:
    with tempfile.TemporaryDirectory(prefix="relaypump-") as tmp:
        tls_dir = None
        if args.tls:
            from weftlab.testca import TestCA

            TestCA(tmp).issue("relay", ["127.0.0.1"])
            tls_dir = tmp
        port = _free_port()
        relay_proc = _child("relay", port, args, tls_dir)
        procs = [relay_proc]
        try:
            _line(relay_proc)
            receiver = _child("receive", port, args, tls_dir)
            procs.append(receiver)
            _line(receiver)
            sender = _child("send", port, args, tls_dir)
            procs.append(sender)
            _line(sender)
            time.sleep(WARMUP_S)
            for proc in (relay_proc, receiver):
                assert proc.stdin is not None
                proc.stdin.write("go\n")
                proc.stdin.flush()
            got, cpu = _line(receiver), _line(relay_proc)
        finally:
            for proc in procs:
                try:
                    proc.wait(timeout=args.seconds + 10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
    gbit = got["bytes"] * 8 / got["elapsed_s"] / 1e9
    per_gbit = cpu["relay_cpu_s"] / (got["bytes"] * 8 / 1e9) if got["bytes"] else float("inf")
    name = f"relay alone, {'TLS' if args.tls else 'plain TCP'}"
    name += ", no batches (legacy)" if args.legacy else ", batches"
    name += ", asyncio loop" if args.asyncio else ""
    return f"| {name} | {gbit:.2f} | {per_gbit:.2f} |"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.relaypump", description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--tls", action="store_true", help="the relay speaks TLS")
    parser.add_argument("--legacy", action="store_true", help="a relay without batches")
    parser.add_argument("--asyncio", action="store_true", help="asyncio's loop, not uvloop")
    parser.add_argument("--role", choices=("relay", "receive", "send"), help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--tls-dir", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.role is None:
        print("| configuration | Gbit/s | relay CPU s/Gbit |\n|---|---:|---:|")
        print(run(args))
        return 0
    # uvloop, as weftd and weft-control run (``--asyncio``: the stock loop).
    with asyncio.Runner(loop_factory=None if args.asyncio else uvloop.new_event_loop) as runner:
        if args.role == "relay":
            out = runner.run(relay(args.port, args.seconds, args.tls_dir, args.legacy))
        elif args.role == "receive":
            out = runner.run(receive(args.port, args.seconds, args.tls_dir))
        else:
            out = runner.run(send(args.port, args.seconds, args.tls_dir))
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
