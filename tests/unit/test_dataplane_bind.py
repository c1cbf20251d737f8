"""The data plane's Bind seam: who is told what, and where relay-bound datagrams go."""

from __future__ import annotations

import select
import socket
from collections.abc import Iterator

import pytest

from weftlab.fakes import SeededEntropy
from weftnet.endpoint import Endpoint
from weftnet.node.datapath import DataPlane, UdpBind, make_socket
from weftnet.wireguard import crypto
from weftnet.wireguard.device import Device, Peer
from weftnet.wireguard.messages import MESSAGE_COOKIE_REPLY, MESSAGE_RESPONSE, message_type

A_EP = Endpoint("198.18.0.1", 51820)
RELAY_EP = Endpoint("relay:default", 0)


class RecordingBind:
    def __init__(self) -> None:
        self.pseudo: list[tuple[bytes, Endpoint, bytes]] = []
        self.other: list[tuple[bytes, Endpoint]] = []
        self.authenticated_from: list[tuple[Peer, Endpoint]] = []

    def send_to_pseudo(self, peer_key: bytes, ep: Endpoint, data: bytes) -> None:
        self.pseudo.append((peer_key, ep, data))

    def send_to_pseudo_batch(self, peer_key: bytes, ep: Endpoint, data: bytes, seg: int) -> None:
        for off in range(0, len(data), seg):
            self.pseudo.append((peer_key, ep, data[off : off + seg]))

    def receive_other(self, data: bytes, src: Endpoint) -> bool:
        self.other.append((data, src))
        return True

    def authenticated(self, peer: Peer, src: Endpoint) -> None:
        self.authenticated_from.append((peer, src))


@pytest.fixture
def sockets() -> Iterator[tuple[int, socket.socket]]:
    mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    udp = make_socket(0)
    yield theirs.fileno(), udp
    for s in (mine, theirs, udp):
        s.close()


def devices(b_under_load: bool = False) -> tuple[Device, Device, Peer, Peer]:
    ea, eb = SeededEntropy("a"), SeededEntropy("b")
    a = Device(crypto.generate_private_key(ea), ea)
    b = Device(crypto.generate_private_key(eb), eb, under_load=lambda now: b_under_load)
    pa = a.add_peer(b.identity.public_key, ["100.64.0.2/32"], endpoint=RELAY_EP)
    pb = b.add_peer(a.identity.public_key, ["100.64.0.1/32"], endpoint=RELAY_EP)
    return a, b, pa, pb


def test_a_cookie_reply_to_a_peer_on_the_relay_goes_back_through_the_relay(
    sockets: tuple[int, socket.socket],
) -> None:
    # Regression (D8): the reply has no peer of its own, and the relay receive path threw
    # the source key away, so it was dropped and relay-only peers never got a session
    # while this node was under load.
    a, b, pa, _ = devices(b_under_load=True)
    bind = RecordingBind()
    dp = DataPlane(b, *sockets, bind=bind)
    init = a.send_packets(pa, [b"\x45" + bytes(27)], 0.0)[0].data
    dp.receive_from_relay(init, a.identity.public_key, "default")
    assert [(k, ep, message_type(d)) for k, ep, d in bind.pseudo] == [
        (a.identity.public_key, RELAY_EP, MESSAGE_COOKIE_REPLY)
    ]


def test_a_handshake_is_reported_to_the_bind_which_owns_the_endpoint(
    sockets: tuple[int, socket.socket],
) -> None:
    a, b, pa, pb = devices()
    bind = RecordingBind()
    dp = DataPlane(b, *sockets, bind=bind)
    init = a.send_packets(pa, [b"\x45" + bytes(27)], 0.0)[0].data
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
        sender.bind(("127.0.0.1", 0))
        sender.sendto(init, ("127.0.0.1", sockets[1].getsockname()[1]))
        src = Endpoint("127.0.0.1", sender.getsockname()[1])
        select.select([sockets[1]], [], [], 2.0)
        dp.on_udp_readable()
    assert bind.authenticated_from == [(pb, src)]
    assert pb.endpoint == RELAY_EP  # the data plane did not move it


def test_udp_bind_roams_but_not_to_a_relay() -> None:
    _, _, _, pb = devices()
    UdpBind().authenticated(pb, RELAY_EP)
    assert pb.endpoint == RELAY_EP
    UdpBind().authenticated(pb, A_EP)
    assert pb.endpoint == A_EP


def test_a_response_through_the_relay_carries_the_peer_key(
    sockets: tuple[int, socket.socket],
) -> None:
    a, b, pa, _ = devices()
    bind = RecordingBind()
    dp = DataPlane(b, *sockets, bind=bind)
    init = a.send_packets(pa, [b"\x45" + bytes(27)], 0.0)[0].data
    dp.receive_from_relay(init, a.identity.public_key, "default")
    assert [(k, message_type(d)) for k, _, d in bind.pseudo] == [
        (a.identity.public_key, MESSAGE_RESPONSE)
    ]
