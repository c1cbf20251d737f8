"""A WireGuard handshake flooder for lab tests::

    python -m weftlab.handshake_flood --target 198.18.0.1:51820 --public-key B64 \\
        --source 198.18.0.200 --source 198.18.0.201 --rate 5000 --duration 6 --out flood.json

Theory of operation
-------------------
It precomputes a pool of well-formed handshake initiations for the target's public key,
each from a fresh static key of its own (so the target knows none of them) with a
valid mac1, and the same messages with mac1 broken. Then it sends them round-robin from
one UDP socket per ``--source`` address at ``--rate`` messages a second, for at most
``--duration`` seconds and ``--max-messages`` messages, one message in ``--bad-mac1-every``
with a bad mac1.

Every answer is read and checked: a cookie reply must open (XChaCha20-Poly1305 under
``HASH("cookie--" || target public key)``, the mac1 of the initiation it answers as
associated data, whitepaper 5.4.7) and name the sender index of one of our messages.
The first ``--cookie-holders`` sources play an attacker that owns its addresses: once one
has a valid cookie, its messages carry mac2 as well, which buys Curve25519 work from the
target, up to the target's per-source rate limit.

At the end it writes one JSON summary to ``--out``: what was sent, the rate reached,
the cookie replies (valid, invalid), any other answers, per source.
Pure standard library plus weftnet's WireGuard primitives; bounded in time and count.
"""

from __future__ import annotations

import argparse
import base64
import errno
import json
import os
import selectors
import socket
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from weftnet.wireguard import crypto, tai64n
from weftnet.wireguard.cookie import CookieGenerator, cookie_key
from weftnet.wireguard.errors import ProtocolError
from weftnet.wireguard.handshake import Handshake, Identity
from weftnet.wireguard.messages import (
    COOKIE_REPLY_SIZE,
    INITIATION_MAC1_OFFSET,
    INITIATION_MAC2_OFFSET,
    MESSAGE_COOKIE_REPLY,
    CookieReply,
    message_type,
)

MAX_DURATION_S = 30.0  # a flood never runs longer than this, whatever it is asked
MAX_MESSAGES = 500_000  # nor sends more than this
TICK_S = 0.002  # how often the pacer wakes to send what is due and read answers
MAX_BATCH = 200  # messages sent in one tick at most (a late tick does not burst)
DRAIN_S = 0.3  # how long answers are still read after the last message


@dataclass
class Source:
    """One sending address and what it learned."""

    address: str
    sock: socket.socket
    holds_cookies: bool  # plays an attacker that answers cookie challenges
    cookie: bytes = b""
    sent: int = 0
    sent_with_mac2: int = 0
    cookie_replies_valid: int = 0
    cookie_replies_invalid: int = 0
    other_answers: int = 0


@dataclass
class Pool:
    """Initiations with valid mac1 for one target, and the mac1 of each sender index."""

    valid: list[bytes]
    bad_mac1: list[bytes]
    mac1_by_sender: dict[int, bytes] = field(default_factory=dict)


def make_pool(target_public: bytes, size: int) -> Pool:
    valid: list[bytes] = []
    bad: list[bytes] = []
    mac1_by_sender: dict[int, bytes] = {}
    timestamp = tai64n.encode(time.time_ns())
    for i in range(size):
        identity = Identity.from_private(crypto.generate_private_key(os.urandom))
        sender = 0x464C0000 + i  # "FL" and a counter: unique in the pool
        msg = Handshake(identity, target_public).create_initiation(
            sender, crypto.generate_private_key(os.urandom), timestamp
        )
        raw = bytearray(msg.pack())
        CookieGenerator(target_public).add_macs(
            raw, INITIATION_MAC1_OFFSET, INITIATION_MAC2_OFFSET, 0.0
        )
        valid.append(bytes(raw))
        mac1_by_sender[sender] = bytes(raw[INITIATION_MAC1_OFFSET:INITIATION_MAC2_OFFSET])
        raw[INITIATION_MAC1_OFFSET] ^= 0xFF
        bad.append(bytes(raw))
    return Pool(valid, bad, mac1_by_sender)


def with_mac2(msg: bytes, cookie: bytes) -> bytes:
    """``msg`` with mac2 = MAC(cookie, msg[:mac2 offset])."""
    head = msg[:INITIATION_MAC2_OFFSET]
    return head + crypto.mac(cookie, head)


def open_cookie_reply(data: bytes, pool: Pool, key: bytes) -> bytes | None:
    """The cookie in a cookie reply to one of ``pool``'s messages, None if it is not a
    valid one (``key``: the target's cookie key)."""
    try:
        reply = CookieReply.unpack(data)
        mac1 = pool.mac1_by_sender.get(reply.receiver)
        if mac1 is None:
            raise ProtocolError("cookie reply to no message of ours")
        return crypto.xaead_decrypt(key, reply.nonce, reply.encrypted_cookie, mac1)
    except ProtocolError:
        return None


def read_answers(src: Source, pool: Pool, key: bytes) -> None:
    """Read and check every answer waiting on ``src``'s socket."""
    while True:
        try:
            data = src.sock.recv(2048)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            src.other_answers += 1  # an ICMP error reported on the socket
            continue
        if message_type(data) != MESSAGE_COOKIE_REPLY or len(data) != COOKIE_REPLY_SIZE:
            src.other_answers += 1
            continue
        cookie = open_cookie_reply(data, pool, key)
        if cookie is None:
            src.cookie_replies_invalid += 1
            continue
        src.cookie_replies_valid += 1
        if src.holds_cookies:
            src.cookie = cookie


def flood(
    target: tuple[str, int],
    target_public: bytes,
    addresses: list[str],
    *,
    rate_per_s: float,
    duration_s: float,
    max_messages: int,
    pool_size: int,
    bad_mac1_every: int,
    cookie_holders: int,
) -> dict[str, Any]:
    duration_s = min(duration_s, MAX_DURATION_S)
    max_messages = min(max_messages, MAX_MESSAGES)
    pool = make_pool(target_public, pool_size)
    key = cookie_key(target_public)
    sel = selectors.DefaultSelector()
    sources: list[Source] = []
    for i, address in enumerate(addresses):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind((address, 0))
        sock.setblocking(False)
        src = Source(address, sock, holds_cookies=i < cookie_holders)
        sources.append(src)
        sel.register(sock, selectors.EVENT_READ, src)
    sent = bad_sent = send_errors = 0
    started_wall = time.time()
    start = time.monotonic()
    end = start + duration_s
    now = start
    while now < end and sent < max_messages:
        due = min(int((now - start) * rate_per_s) + 1, max_messages)
        for _ in range(min(due - sent, MAX_BATCH)):
            src = sources[sent % len(sources)]
            n = sent // len(sources)
            if bad_mac1_every and sent % bad_mac1_every == bad_mac1_every - 1:
                msg = pool.bad_mac1[n % pool_size]
                bad_sent += 1
            else:
                msg = pool.valid[n % pool_size]
                if src.cookie:
                    msg = with_mac2(msg, src.cookie)
                    src.sent_with_mac2 += 1
            try:
                src.sock.sendto(msg, target)
            except OSError as e:
                if e.errno not in (errno.EAGAIN, errno.ENOBUFS, errno.ECONNREFUSED):
                    raise
                send_errors += 1
            src.sent += 1
            sent += 1
        for key_, _ in sel.select(timeout=TICK_S):
            read_answers(key_.data, pool, key)
        now = time.monotonic()
    elapsed = now - start
    ended_wall = time.time()
    drain_until = time.monotonic() + DRAIN_S
    while (left := drain_until - time.monotonic()) > 0:
        for key_, _ in sel.select(timeout=left):
            read_answers(key_.data, pool, key)
    for src in sources:
        src.sock.close()
    return {
        "target": f"{target[0]}:{target[1]}",
        "started_at": started_wall,
        "ended_at": ended_wall,
        "duration_s": round(elapsed, 3),
        "sent": sent,
        "sent_bad_mac1": bad_sent,
        "sent_with_mac2": sum(s.sent_with_mac2 for s in sources),
        "send_errors": send_errors,
        "rate_per_s": round(sent / elapsed, 1) if elapsed > 0 else 0.0,
        "cookie_replies_valid": sum(s.cookie_replies_valid for s in sources),
        "cookie_replies_invalid": sum(s.cookie_replies_invalid for s in sources),
        "other_answers": sum(s.other_answers for s in sources),
        "sources": {
            s.address: {
                "sent": s.sent,
                "sent_with_mac2": s.sent_with_mac2,
                "holds_cookies": s.holds_cookies,
                "cookie_replies_valid": s.cookie_replies_valid,
                "cookie_replies_invalid": s.cookie_replies_invalid,
                "other_answers": s.other_answers,
            }
            for s in sources
        },
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="weftlab.handshake_flood", description=__doc__.split("\n")[0])
    p.add_argument("--target", required=True, help="IPv4:port of the WireGuard device")
    p.add_argument("--public-key", required=True, help="the target's public key (base64)")
    p.add_argument("--source", action="append", required=True, help="a local address to send from")
    p.add_argument("--rate", type=float, default=5000.0, help="messages a second")
    p.add_argument("--duration", type=float, default=6.0, help="seconds (at most 30)")
    p.add_argument("--max-messages", type=int, default=50_000)
    p.add_argument("--pool", type=int, default=256, help="distinct initiations to cycle")
    p.add_argument("--bad-mac1-every", type=int, default=10, help="0: none with a bad mac1")
    p.add_argument("--cookie-holders", type=int, default=0, help="sources that answer cookies")
    p.add_argument("--out", required=True, help="where to write the JSON summary")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    host, _, port = args.target.rpartition(":")
    public = base64.b64decode(args.public_key)
    if len(public) != 32:
        sys.exit("--public-key must be a base64 32-byte WireGuard key")
    summary = flood(
        (host, int(port)),
        public,
        args.source,
        rate_per_s=args.rate,
        duration_s=args.duration,
        max_messages=args.max_messages,
        pool_size=args.pool,
        bad_mac1_every=args.bad_mac1_every,
        cookie_holders=args.cookie_holders,
    )
    tmp = args.out + ".tmp"
    with open(tmp, "w") as f:
        json.dump(summary, f, indent=2)
    os.replace(tmp, args.out)  # the test sees a whole file or none


if __name__ == "__main__":
    main()
