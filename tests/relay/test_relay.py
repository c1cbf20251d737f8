"""Relay server and clients over 127.0.0.1: forwarding, admission, isolation, limits,
revocation and reconnection. Every wait polls against a deadline."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from tests.relay.helpers import Inbox, RawConn, allow_all, keypair, run, until
from weftlab.fakes import FakeClock
from weftnet.relay import protocol as p
from weftnet.relay.client import BACKOFF_RESET_S, RelayClient
from weftnet.relay.server import FORGED_INFO, REPLACED, UNKNOWN_KEY, ClientStats, RelayServer


@asynccontextmanager
async def relay(
    admit: Callable[[bytes], Awaitable[bool]] | None = None, port: int = 0, **kw: Any
) -> AsyncIterator[tuple[RelayServer, int]]:
    server_private, _ = kw.pop("keypair", None) or keypair()
    server = RelayServer(server_private, admit or allow_all(), **kw)
    listener = await server.serve_tcp("127.0.0.1", port)
    try:
        yield server, listener.sockets[0].getsockname()[1]
    finally:
        await server.close()


@asynccontextmanager
async def node(port: int, private: bytes | None = None, **kw: Any) -> AsyncIterator[Any]:
    """A started RelayClient with an Inbox; yields (client, inbox, public key)."""
    private = private or keypair()[0]
    inbox = Inbox()
    client = RelayClient(f"http://127.0.0.1:{port}", private, inbox, **kw)
    client.start()
    try:
        yield client, inbox, client.node_key
    finally:
        await client.close()


def _stats(server: RelayServer, key: bytes) -> ClientStats:
    stats = server.client(key)
    assert stats is not None, "not connected to the relay"
    return stats


async def _connected(*clients: RelayClient) -> None:
    for c in clients:
        assert await c.wait_connected(5.0), c.last_error


def test_two_clients_exchange_opaque_packets_both_ways() -> None:
    async def scenario() -> None:
        async with (
            relay() as (server, port),
            node(port) as (a, a_in, a_key),
            node(port) as (
                b,
                b_in,
                b_key,
            ),
        ):
            await _connected(a, b)
            # Not WireGuard: the relay must carry any bytes, of any size up to 64 KiB.
            to_b = [os.urandom(n) for n in (0, 1, 100, 1400, p.MAX_PACKET)]
            to_a = [b"\x00" * 7, b"\xff" * 1500, os.urandom(60_000)]
            for pkt in to_b:
                assert a.send(b_key, pkt)
            for pkt in to_a:
                assert b.send(a_key, pkt)
            await until(lambda: len(b_in.packets) == len(to_b) and len(a_in.packets) == len(to_a))
            assert b_in.packets == [(a_key, pkt) for pkt in to_b]
            assert a_in.packets == [(b_key, pkt) for pkt in to_a]
            stats = {s.node_key: s for s in server.clients()}
            assert stats[a_key].packets_in == len(to_b)
            assert stats[a_key].bytes_in == sum(map(len, to_b))
            assert stats[b_key].packets_out == len(to_b)
            assert stats[b_key].drops_queue == stats[b_key].drops_rate == 0

    run(scenario())


def test_ping_measures_round_trip_and_preferred_is_noted() -> None:
    async def scenario() -> None:
        async with relay() as (server, port), node(port, preferred=True) as (a, _, a_key):
            await _connected(a)
            rtt = await a.ping()
            assert 0 < rtt < 1.0
            assert _stats(server, a_key).preferred
            a.note_preferred(False)
            await until(lambda: not _stats(server, a_key).preferred)

    run(scenario())


def test_unknown_key_is_refused_with_error_frame() -> None:
    async def scenario() -> None:
        async def admit(key: bytes) -> bool:
            return False

        async with relay(admit) as (server, port):
            raw = await RawConn.open(port)
            answer = await raw.handshake(keypair()[0])
            assert answer == p.Error(UNKNOWN_KEY)
            assert await raw.frames_until_eof() == []
            assert server.clients() == []
            async with node(port) as (c, _, _):
                await until(lambda: c.last_error is not None and UNKNOWN_KEY in c.last_error)
                assert not c.connected

    run(scenario())


def test_forged_client_info_is_refused_before_admission() -> None:
    async def scenario() -> None:
        asked: list[bytes] = []

        async def admit(key: bytes) -> bool:
            asked.append(key)
            return True

        async with relay(admit) as (server, port):
            _, victim_key = keypair()
            raw = await RawConn.open(port)
            answer = await raw.handshake(keypair()[0], claim=victim_key)
            assert answer == p.Error(FORGED_INFO)
            assert await raw.frames_until_eof() == []
            assert asked == [] and server.clients() == []

    run(scenario())


def test_captured_client_info_replayed_on_a_new_connection_is_refused() -> None:
    async def scenario() -> None:
        asked: list[bytes] = []

        async def admit(key: bytes) -> bool:
            asked.append(key)
            return True

        async with relay(admit) as (server, port), node(port) as (peer, _, _):
            await _connected(peer)
            victim_private, victim_key = keypair()
            victim = await RawConn.open(port)
            assert isinstance(await victim.handshake(victim_private), p.ServerInfo)
            await until(lambda: server.client(victim_key) is not None)
            before = _stats(server, victim_key)
            for _ in range(2):  # at once, and again later: refused both times
                replayer = await RawConn.open(port)
                assert await replayer.replay(victim.sent_info) == p.Error(p.CHALLENGE_MISMATCH)
                assert replayer.challenge != victim.challenge
                assert await replayer.frames_until_eof() == []
                replayer.close()
            assert asked.count(victim_key) == 1  # the replay never reached admission
            # The victim keeps its slot and its packets.
            assert _stats(server, victim_key).connected_at == before.connected_at
            assert peer.send(victim_key, b"for the victim")
            got = await victim.next_frame()
            assert isinstance(got, p.RecvPacket) and got.packet == b"for the victim"
            victim.close()

    run(scenario())


def test_malformed_frame_closes_only_that_connection() -> None:
    async def scenario() -> None:
        async with (
            relay() as (server, port),
            node(port) as (a, a_in, a_key),
            node(port) as (
                b,
                b_in,
                b_key,
            ),
        ):
            await _connected(a, b)
            bad_private, bad_key = keypair()
            raw = await RawConn.open(port)
            assert isinstance(await raw.handshake(bad_private), p.ServerInfo)
            await until(lambda: server.client(bad_key) is not None)
            raw.writer.write(p.HEADER.pack(0x7F, 3) + b"bad")
            frames = await raw.frames_until_eof()
            assert isinstance(frames[-1], p.Error) and "malformed" in frames[-1].reason
            await until(lambda: server.client(bad_key) is None)
            for i in range(20):
                a.send(b_key, b"a%d" % i)
                b.send(a_key, b"b%d" % i)
            await until(lambda: len(a_in.packets) == len(b_in.packets) == 20)
            assert a.connected and b.connected and a.connections == b.connections == 1

    run(scenario())


def test_disconnect_cuts_a_revoked_client_within_two_seconds() -> None:
    async def scenario() -> None:
        allowed: set[bytes] = set()

        async def admit(key: bytes) -> bool:
            return key in allowed

        private, key = keypair()
        allowed.add(key)
        async with relay(admit) as (server, port), node(port, private) as (c, _, _):
            await _connected(c)
            raw_private, raw_key = keypair()
            allowed.add(raw_key)
            raw = await RawConn.open(port)
            assert isinstance(await raw.handshake(raw_private), p.ServerInfo)
            await until(lambda: server.client(raw_key) is not None)

            allowed.clear()  # the control server revokes both, then tells the relay
            t0 = time.monotonic()
            assert server.disconnect(key, "node key revoked")
            assert server.disconnect(raw_key, "node key revoked")
            assert p.Error("node key revoked") in await raw.frames_until_eof(timeout=2.0)
            await until(lambda: not c.connected, timeout=2.0, what="client cut off")
            assert time.monotonic() - t0 < 2.0
            assert server.client(key) is None and server.client(raw_key) is None
            # It tries again and is refused: the key is no longer admitted.
            await until(lambda: UNKNOWN_KEY in (c.last_error or ""), timeout=5.0)
            assert not server.disconnect(key)

    run(scenario())


def test_disconnect_during_admission_wins_over_a_stale_yes() -> None:
    async def scenario() -> None:
        asked, answer = asyncio.Event(), asyncio.Event()

        async def slow_admit(key: bytes) -> bool:
            asked.set()
            await answer.wait()
            return True  # looked up before the revocation

        private, key = keypair()
        async with relay(slow_admit) as (server, port):
            raw = await RawConn.open(port)
            handshake = asyncio.create_task(raw.handshake(private))
            await asyncio.wait_for(asked.wait(), 5)
            assert server.disconnect(key, "node key revoked")
            answer.set()
            assert await handshake == p.Error("node key revoked")
            assert await raw.frames_until_eof() == []
            assert server.client(key) is None

    run(scenario())


def test_relay_restart_traffic_resumes_by_itself_within_five_seconds() -> None:
    async def restart() -> None:
        server_keys = keypair()
        async with (
            relay(keypair=server_keys) as (server, port),
            node(port) as (
                a,
                _,
                _,
            ),
            node(port) as (b, b_in, b_key),
        ):
            await _connected(a, b)
            a.send(b_key, b"before")
            await until(lambda: b_in.payloads() == [b"before"])
            await server.close()
            await until(lambda: not a.connected and not b.connected, what="both cut off")
            t0 = time.monotonic()
            async with relay(keypair=server_keys, port=port):
                n = 0
                while b"after" not in [x[:5] for x in b_in.payloads()]:
                    assert time.monotonic() - t0 < 5.0, "traffic did not resume within 5 s"
                    a.send(b_key, b"after%d" % n)
                    n += 1
                    await asyncio.sleep(0.05)
                assert a.connections == b.connections == 2

    run(restart())


def test_backoff_grows_while_refused_and_restarts_after_a_lasting_connection() -> None:
    async def scenario() -> None:
        allowed: set[bytes] = set()

        async def admit(key: bytes) -> bool:
            return key in allowed

        clock = FakeClock()
        private, key = keypair()
        allowed.add(key)
        initial, cap = 0.02, 0.16
        backoff = {"backoff_initial_s": initial, "backoff_max_s": cap, "clock": clock}
        async with relay(admit) as (server, port), node(port, private, **backoff) as (c, _, _):
            await _connected(c)
            allowed.clear()
            server.disconnect(key)
            await until(lambda: c.retry_delay_s >= cap / 2, what="backoff at its cap")
            allowed.add(key)
            await until(lambda: c.connections == 2)
            clock.advance(BACKOFF_RESET_S)  # this connection has lasted
            server.disconnect(key)
            await until(lambda: c.connections == 3)
            assert c.retry_delay_s <= initial

    run(scenario())


def test_flooding_client_is_rate_limited_and_others_still_get_through() -> None:
    async def scenario() -> None:
        rate, burst, size = 200_000, 50_000, 1000
        async with (
            relay(rate_bytes_per_s=rate, burst_bytes=burst) as (server, port),
            node(port) as (flooder, _, flooder_key),
            node(port) as (sink, sink_in, _),
            node(port) as (c, c_in, c_key),
            node(port) as (d, d_in, d_key),
        ):
            await _connected(flooder, sink, c, d)
            sink_key = sink.node_key
            t0 = time.monotonic()
            for i in range(100):  # ~1 s, offering about 10 MB/s, 50x the limit
                for _ in range(100):
                    flooder.send(sink_key, bytes(size))
                c.send(d_key, b"c%d" % i)
                d.send(c_key, b"d%d" % i)
                await asyncio.sleep(0.01)
            await until(lambda: len(c_in.packets) == len(d_in.packets) == 100)
            assert d_in.payloads() == [b"c%d" % i for i in range(100)]
            assert c_in.payloads() == [b"d%d" % i for i in range(100)]
            stats, received = _stats(server, flooder_key), len(sink_in.packets)
            # The bucket was full (burst) at t0 and has refilled at `rate` since.
            allowed = (burst + rate * (time.monotonic() - t0)) / size
            assert stats.drops_rate > 0
            assert received <= stats.packets_in <= allowed + 1

    run(scenario())


def test_a_reader_that_stalls_costs_at_most_its_byte_cap_and_is_dropped() -> None:
    async def scenario() -> None:
        queue = 128 * 1024
        async with (
            relay(queue_bytes=queue, write_timeout_s=1.0) as (server, port),
            node(port) as (sender, _, _),
            node(port) as (_, c_in, c_key),
        ):
            await _connected(sender)
            await until(lambda: server.client(c_key) is not None)
            slow_private, slow_key = keypair()
            slow = await RawConn.open(port, rcvbuf=4096)
            assert isinstance(await slow.handshake(slow_private), p.ServerInfo)
            await until(lambda: server.client(slow_key) is not None)

            def stalled() -> bool:
                s = server.client(slow_key)
                assert s is not None and s.queued_bytes <= queue
                return s.drops_queue > 0 and s.queued_bytes > queue // 2

            for i in range(400):  # at most 400 x 50 x 8 kB = 160 MB, far beyond socket buffers
                if stalled():
                    break
                for _ in range(50):
                    sender.send(slow_key, bytes(8000))
                sender.send(c_key, b"c%d" % i)
                await asyncio.sleep(0.005)
            assert stalled()
            peak = _stats(server, slow_key).queued_bytes_peak
            assert queue // 2 < peak <= queue and server.budget.peak <= queue + 64 * 1024
            # It never reads again: dropped after the write timeout, its bytes released.
            t = await until(lambda: server.client(slow_key) is None, timeout=5.0)
            assert t < 3.0
            await until(lambda: server.budget.used < 1000)
            # Meanwhile the others were unaffected.
            await until(lambda: len(c_in.packets) == i, what="c's packets")
            assert i > 0 and c_in.payloads() == [b"c%d" % k for k in range(i)]
            assert sender.connected and sender.connections == 1
            slow.close()

    run(scenario(), timeout=30)


def test_the_byte_budget_is_shared_by_all_queues() -> None:
    async def scenario() -> None:
        queue = 128 * 1024
        async with (
            relay(queue_bytes=queue, total_queue_bytes=queue, write_timeout_s=5.0) as (
                server,
                port,
            ),
            node(port) as (sender, _, _),
        ):
            await _connected(sender)
            stalled = []
            for _ in range(2):
                private, key = keypair()
                raw = await RawConn.open(port, rcvbuf=4096)
                assert isinstance(await raw.handshake(private), p.ServerInfo)
                stalled.append((raw, key))
            await until(lambda: len(server.clients()) == 3)
            for _ in range(200):
                if all(s.drops_queue for s in server.clients() if s.node_key != sender.node_key):
                    break
                for _, key in stalled:
                    for _ in range(20):
                        sender.send(key, bytes(8000))
                await asyncio.sleep(0.005)
            assert server.budget.peak <= queue
            queued = [_stats(server, key) for _, key in stalled]
            assert sum(s.queued_bytes for s in queued) <= queue
            assert all(s.drops_queue for s in queued)
            for raw, _ in stalled:
                raw.close()

    run(scenario(), timeout=30)


def test_packets_to_oneself_are_dropped_and_counted() -> None:
    async def scenario() -> None:
        async with relay() as (server, port), node(port) as (a, a_in, a_key):
            await _connected(a)
            for _ in range(10):
                assert a.send(a_key, bytes(1000))
            a.send(bytes(32), b"flush")  # to an absent key: PEER_GONE comes back after them
            await until(lambda: _stats(server, a_key).drops_no_peer == 1)
            stats = _stats(server, a_key)
            assert stats.drops_self == 10 and stats.packets_in == 1 and stats.packets_out == 0
            assert a_in.packets == []

    run(scenario())


def test_peer_gone_not_here_is_throttled_and_disconnected_is_announced() -> None:
    async def scenario() -> None:
        gone: list[tuple[bytes, int]] = []
        async with (
            relay() as (_, port),
            node(port, on_peer_gone=lambda k, r: gone.append((k, r))) as (
                a,
                _,
                _,
            ),
        ):
            await _connected(a)
            _, nowhere = keypair()
            for _ in range(50):
                a.send(nowhere, b"x")
            await until(lambda: len(gone) == 1)
            assert gone == [(nowhere, p.PEER_GONE_NOT_HERE)]
            await a.ping()  # everything sent before the ping has been handled
            assert len(gone) == 1

            async with node(port) as (b, b_in, b_key):
                await _connected(b)
                a.send(b_key, b"hi")
                await until(lambda: b_in.payloads() == [b"hi"])
            await until(lambda: (b_key, p.PEER_GONE_DISCONNECTED) in gone)

    run(scenario())


def test_newer_connection_with_the_same_key_replaces_the_older() -> None:
    async def scenario() -> None:
        private, key = keypair()
        async with relay() as (server, port), node(port) as (a, _, a_key):
            await _connected(a)
            first = await RawConn.open(port)
            assert isinstance(await first.handshake(private), p.ServerInfo)
            second = await RawConn.open(port)
            assert isinstance(await second.handshake(private), p.ServerInfo)
            assert p.Error(REPLACED) in await first.frames_until_eof()
            a.send(key, b"to the newer one")
            frame = await second.next_frame()
            while isinstance(frame, p.KeepAlive):
                frame = await second.next_frame()
            assert frame == p.RecvPacket(a_key, b"to the newer one")
            assert len([s for s in server.clients() if s.node_key == key]) == 1
            second.close()

    run(scenario())


def test_handshake_timeout_idle_timeout_and_keepalives() -> None:
    async def scenario() -> None:
        async with relay(
            client_info_timeout_s=0.3, keepalive_interval_s=0.1, idle_timeout_s=0.6
        ) as (server, port):
            mute = await RawConn.open(port)
            assert isinstance(await mute.next_frame(), p.ServerKey)
            frames = await mute.frames_until_eof(timeout=3.0)
            assert frames and isinstance(frames[-1], p.Error) and "CLIENT_INFO" in frames[-1].reason

            silent_private, silent_key = keypair()
            silent = await RawConn.open(port)
            assert isinstance(await silent.handshake(silent_private), p.ServerInfo)
            frames = await silent.frames_until_eof(timeout=3.0)
            assert p.KeepAlive() in frames
            assert isinstance(frames[-1], p.Error) and "no frame" in frames[-1].reason
            assert server.client(silent_key) is None

            # A real client keeps the link alive with its own keepalives.
            async with node(port, keepalive_interval_s=0.1) as (c, _, c_key):
                await _connected(c)
                await asyncio.sleep(1.5)  # the passage of time under test, 2.5 idle timeouts
                assert c.connected and c.connections == 1
                assert server.client(c_key) is not None

    run(scenario())


def test_client_refuses_a_relay_whose_key_is_not_the_pinned_one() -> None:
    async def scenario() -> None:
        async with relay() as (server, port), node(port, server_key=keypair()[1]) as (c, _, _):
            await until(lambda: c.last_error is not None and "relay map" in c.last_error)
            assert not c.connected and server.clients() == []

    run(scenario())


def test_http_requests_that_are_not_relay_upgrades_get_http_errors() -> None:
    async def scenario() -> None:
        async with relay() as (_, port):
            for request, status in [
                (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", b"404"),
                (b"GET /relay HTTP/1.1\r\nHost: x\r\n\r\n", b"426"),
                (b"\x16\x03\x01 not http\r\n\r\n", b"400"),
            ]:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(request)
                async with asyncio.timeout(5):
                    answer = await reader.read()
                assert answer.split(b" ")[1] == status
                writer.close()

    run(scenario())


def test_handle_runs_behind_any_transport_that_did_the_upgrade() -> None:
    """The coordination server calls handle() itself after answering 101."""

    async def scenario() -> None:
        server = RelayServer(keypair()[0], allow_all())
        listener = await asyncio.start_server(server.handle, "127.0.0.1", 0)
        port = listener.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        raw = RawConn(reader, writer)
        private, key = keypair()
        assert isinstance(await raw.handshake(private), p.ServerInfo)
        assert raw.server_key == server.public_key
        await until(lambda: server.client(key) is not None)
        raw.close()
        await until(lambda: server.clients() == [])
        listener.close()
        await server.close()

    run(scenario())


class BatchInbox:
    """An ``on_batch`` callback that records (src, datagrams, seg)."""

    def __init__(self) -> None:
        self.batches: list[tuple[bytes, bytes, int]] = []

    def __call__(self, src: bytes, data: bytes, seg: int) -> None:
        self.batches.append((src, data, seg))


def _gso(datagrams: list[bytes]) -> bytes:
    return b"".join(datagrams)


def test_a_batch_arrives_whole_in_one_frame_and_is_counted_per_datagram() -> None:
    async def scenario() -> None:
        batches = BatchInbox()
        async with (
            relay() as (server, port),
            node(port) as (a, _, a_key),
            node(port, on_batch=batches) as (b, b_in, b_key),
            node(port) as (c, c_in, c_key),
        ):
            await _connected(a, b, c)
            data = os.urandom(45 * 1400 + 77)  # 45 full datagrams and a short one
            assert a.send_batch(b_key, data, 1400) == 46
            await until(lambda: len(batches.batches) == 1)
            assert batches.batches == [(a_key, data, 1400)]
            assert not b_in.packets
            # A client without on_batch gets the same datagrams one by one.
            assert a.send_batch(c_key, data, 1400) == 46
            await until(lambda: len(c_in.packets) == 46)
            assert c_in.packets == [(a_key, d) for d in p.split_batch(data, 1400)]
            assert _stats(server, a_key).packets_in == 92
            assert _stats(server, a_key).bytes_in == 2 * len(data)
            assert _stats(server, b_key).packets_out == 46
            assert b.packets_received == 46 and a.packets_sent == 92

    run(scenario())


def test_an_older_client_gets_a_batch_as_single_packets() -> None:
    async def scenario() -> None:
        async with relay() as (_, port), node(port) as (a, _, a_key):
            await _connected(a)
            old_private, old_key = keypair()
            raw = await RawConn.open(port)  # its CLIENT_INFO lists no features
            assert isinstance(await raw.handshake(old_private), p.ServerInfo)
            datagrams = [os.urandom(300) for _ in range(5)] + [b"end"]
            assert a.send_batch(old_key, _gso(datagrams), 300) == 6
            got = [await raw.next_frame() for _ in datagrams]
            assert got == [p.RecvPacket(a_key, d) for d in datagrams]
            raw.close()

    run(scenario())


def test_a_client_sends_no_batch_to_a_relay_that_did_not_offer_it() -> None:
    async def scenario() -> None:
        batches = BatchInbox()
        async with (
            relay(features=frozenset()) as (server, port),
            node(port) as (a, _, a_key),
            node(port, on_batch=batches) as (b, b_in, b_key),
        ):
            await _connected(a, b)
            data = os.urandom(10 * 1000)
            assert a.send_batch(b_key, data, 1000) == 10
            await until(lambda: len(b_in.packets) == 10)
            assert b_in.packets == [(a_key, d) for d in p.split_batch(data, 1000)]
            assert not batches.batches and a.connections == 1

            # A client that sends a batch anyway is refused like any unknown frame.
            bad_private, _ = keypair()
            raw = await RawConn.open(port)
            assert isinstance(await raw.handshake(bad_private), p.ServerInfo)
            raw.writer.write(p.SendPacketBatch(b_key, 10, bytes(100)).pack())
            frames = await raw.frames_until_eof()
            assert isinstance(frames[-1], p.Error) and "malformed" in frames[-1].reason
            assert server.client(b_key) is not None and a.connected

    run(scenario())


def test_a_hostile_batch_closes_only_its_connection() -> None:
    async def scenario() -> None:
        async with (
            relay() as (server, port),
            node(port) as (a, a_in, a_key),
            node(port) as (b, _, b_key),
        ):
            await _connected(a, b)
            for bad in (
                p.HEADER.pack(p.SEND_PACKET_BATCH, 35) + b_key + b"\x00\x00x",  # seg 0
                p.HEADER.pack(p.SEND_PACKET_BATCH, 34 + 200) + b_key + b"\x00\x01" + bytes(200),
                p.HEADER.pack(p.RECV_PACKET_BATCH, 35) + a_key + b"\x00\x01x",  # not a client's
            ):
                bad_private, bad_key = keypair()
                raw = await RawConn.open(port)
                assert isinstance(await raw.handshake(bad_private), p.ServerInfo)
                raw.writer.write(bad)
                frames = await raw.frames_until_eof()
                assert isinstance(frames[-1], p.Error) and "malformed" in frames[-1].reason
                await until(lambda: server.client(bad_key) is None)  # noqa: B023
            assert b.send_batch(a_key, bytes(3000), 1000) == 3
            await until(lambda: len(a_in.packets) == 3)
            assert a.connections == b.connections == 1

    run(scenario())


def test_a_full_client_queue_takes_what_fits_of_a_batch() -> None:
    async def scenario() -> None:
        async with relay() as (_, port), node(port, queue_packets=8) as (a, _, a_key):
            # Not connected yet: the queue fills and keeps what fits.
            assert a.send_batch(a_key, bytes(1000), 100) == 8
            assert a.send_batch(a_key, bytes(1000), 100) == 0
            assert a.drops == 12

    run(scenario())


def test_a_batch_over_the_frame_limits_goes_as_several_frames() -> None:
    async def scenario() -> None:
        batches = BatchInbox()
        async with (
            relay() as (_, port),
            node(port, queue_packets=1000) as (a, _, a_key),
            node(port, on_batch=batches) as (b, _, b_key),
        ):
            await _connected(a, b)
            small = os.urandom(200 * 100 + 1)  # 201 datagrams: over 128 a frame
            assert a.send_batch(b_key, small, 100) == 201
            await until(lambda: sum(len(d) for _, d, _ in batches.batches) == len(small))
            assert b"".join(d for _, d, _ in batches.batches) == small
            assert {(src, seg) for src, _, seg in batches.batches} == {(a_key, 100)}
            assert all(len(d) <= p.MAX_BATCH_SEGMENTS * 100 for _, d, _ in batches.batches)

    run(scenario())


def test_batches_queued_for_a_relay_that_comes_back_older_go_as_single_packets() -> None:
    async def scenario() -> None:
        server_keys = keypair()
        b_private, b_key = keypair()
        b_up = asyncio.Event()
        async with relay(keypair=server_keys) as (server, port), node(port) as (a, _, a_key):
            await _connected(a)
            await server.close()
            await until(lambda: not a.connected, what="cut off")
            data = os.urandom(30 * 1000)
            assert a.send_batch(b_key, data, 1000) == 30  # queued as a batch frame

            async def b_first(key: bytes) -> bool:  # b is there when a's queue goes out
                if key == a_key:
                    await b_up.wait()
                return True

            older = {"keypair": server_keys, "port": port, "features": frozenset()}
            async with relay(b_first, **older), node(port, b_private) as (b, b_in, _):
                await _connected(b)
                b_up.set()
                await until(lambda: len(b_in.packets) == 30, timeout=10.0)
                assert b_in.payloads() == p.split_batch(data, 1000)
                assert a.connections == 2

    run(scenario())


def test_batches_fit_the_burst_the_relay_announced() -> None:
    async def scenario() -> None:
        batches = BatchInbox()
        async with (
            relay(burst_bytes=10_000) as (_, port),
            node(port) as (a, _, _),
            node(port, on_batch=batches) as (b, _, b_key),
        ):
            await _connected(a, b)
            # 45,000 bytes at once: one frame would be over the burst, always dropped.
            assert a.send_batch(b_key, os.urandom(45 * 1000), 1000) == 45
            await until(lambda: bool(batches.batches))
            assert all(len(d) <= 10_000 for _, d, _ in batches.batches)

    run(scenario())
