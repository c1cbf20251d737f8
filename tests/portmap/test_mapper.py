"""The port mapper against fake gateways on loopback (tests/portmap/fakegateway.py):
which protocol it picks, renewal at half-life, release, failures said in status. The
real thing, miniupnpd on a lab NAT router, is tests/lab/test_portmap.py."""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from tests.portmap.fakegateway import FakeIgd, start_igd, start_pcp_gateway
from weftnet.endpoint import Endpoint
from weftnet.portmap import client, upnp
from weftnet.portmap import mapper as mapper_module
from weftnet.portmap.mapper import PortMapper

LOOPBACK = ("127.0.0.1", "127.0.0.1")
MAPPED = Endpoint("198.18.0.2", 41641)


async def until(predicate: Callable[[], Any], timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


def mapper(port: int, changes: list[Endpoint | None], lease_s: int = 7200) -> PortMapper:
    return PortMapper(
        lambda: 41641,
        changes.append,
        lease_s=lease_s,
        find_gateway=lambda: LOOPBACK,
        probe=functools.partial(client.probe, timeout_s=0.5, port=port, ssdp=False),
    )


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(scenario())


@pytest.mark.parametrize("speaks", ["pcp", "nat-pmp"])
def test_maps_renews_at_half_life_and_releases(speaks: str) -> None:
    async def scenario() -> None:
        gw = await start_pcp_gateway(speaks)
        changes: list[Endpoint | None] = []
        pm = mapper(gw.port, changes, lease_s=2)
        task = asyncio.create_task(pm.run())
        await until(lambda: changes == [MAPPED])
        assert pm.status()["protocol"] == speaks and speaks in pm.status()["offered"]
        first = time.monotonic()
        await until(lambda: pm.renewals >= 1)
        assert time.monotonic() - first < 2  # before the lease ends
        maps = [r for r in gw.requests if r.protocol == speaks and r.opcode == 1]
        assert [r.lifetime_s for r in maps] == [2, 2] and maps[0].internal_port == 41641
        if speaks == "pcp":
            assert maps[0].nonce == maps[1].nonce  # a renewal names the same mapping
        assert changes == [MAPPED]  # the same address: nothing to publish again
        task.cancel()
        await pm.release()
        last = gw.requests[-1]
        assert last.protocol == speaks and last.opcode == 1 and last.lifetime_s == 0
        if speaks == "pcp":
            assert last.nonce == maps[0].nonce
        assert changes == [MAPPED, None] and pm.status()["mapped_address"] is None

    run(scenario)


@pytest.mark.parametrize(
    ("speaks", "error"),
    [("none", "offers no port mapping"), ("refuse", "not authorized")],
)
def test_no_mapping_is_said_in_status(speaks: str, error: str) -> None:
    async def scenario() -> None:
        gw = await start_pcp_gateway(speaks)
        changes: list[Endpoint | None] = []
        pm = mapper(gw.port, changes)
        task = asyncio.create_task(pm.run())
        await until(lambda: pm.last_error is not None)
        assert error in str(pm.status()["error"]) and changes == []
        task.cancel()
        await pm.release()  # nothing to release: no request
        assert all(r.lifetime_s != 0 or r.opcode == 0 for r in gw.requests)

    run(scenario)


def test_no_gateway() -> None:
    async def scenario() -> None:
        pm = PortMapper(lambda: 41641, lambda ep: None, find_gateway=lambda: None)
        task = asyncio.create_task(pm.run())
        await until(lambda: pm.last_error is not None)
        assert pm.status()["error"] == "no IPv4 default gateway"
        assert (await pm.netcheck())["gateway"] is None
        task.cancel()

    run(scenario)


def test_a_network_change_renews_or_maps_again() -> None:
    async def scenario() -> None:
        gw = await start_pcp_gateway("pcp")
        changes: list[Endpoint | None] = []
        pm = mapper(gw.port, changes)
        task = asyncio.create_task(pm.run())
        await until(lambda: changes == [MAPPED])
        pm.network_changed()  # the same gateway and address: the mapping renewed at once
        await until(lambda: pm.renewals == 1)
        assert changes == [MAPPED]
        assert len([r for r in gw.requests if r.opcode == 0]) == 2  # one probe, both ways
        pm.find_gateway = lambda: ("127.0.0.1", "127.0.0.2")  # a new address: start over
        pm.network_changed()
        await until(lambda: changes == [MAPPED, None, MAPPED])
        assert len([r for r in gw.requests if r.opcode == 0]) == 4
        report = await pm.netcheck()
        assert report == {"gateway": "127.0.0.1", "upnp": False, "nat_pmp": True, "pcp": True,
                          "mapped_address": "198.18.0.2:41641", "protocol": "pcp"}  # fmt: skip
        task.cancel()

    run(scenario)


def test_a_lease_the_gateway_shortens_is_renewed_at_its_half_life() -> None:
    async def scenario() -> None:
        gw = await start_pcp_gateway("pcp", max_lifetime_s=1)
        changes: list[Endpoint | None] = []
        pm = mapper(gw.port, changes, lease_s=7200)
        task = asyncio.create_task(pm.run())
        await until(lambda: pm.renewals >= 2, timeout_s=3)
        assert pm.status()["lease_s"] == 1
        task.cancel()

    run(scenario)


def upnp_offers(igd: FakeIgd, version: int = 1) -> client.Offers:
    service = upnp.Service(f"urn:schemas-upnp-org:service:WANIPConnection:{version}", igd.url)
    return client.Offers("127.0.0.1", "127.0.0.1", upnp=service)


def test_upnp_maps_at_another_port_when_ours_is_taken_and_deletes() -> None:
    async def scenario() -> None:
        igd = await start_igd(conflict_first=True)
        offers = upnp_offers(igd)
        m = await client.create(offers, 41641, 7200, now=0.0)
        assert [a for a, _ in igd.actions] == ["GetExternalIPAddress", "AddPortMapping",
                                               "AddPortMapping"]  # fmt: skip
        assert m.protocol == "upnp" and m.external.host == "198.18.0.2"
        assert m.external.port != 41641 and 1024 <= m.external.port <= 65535
        body = igd.actions[-1][1]
        assert f"<NewExternalPort>{m.external.port}</NewExternalPort>".encode() in body
        assert b"<NewLeaseDuration>7200</NewLeaseDuration>" in body
        assert b"<NewInternalClient>127.0.0.1</NewInternalClient>" in body
        renewed = await client.create(offers, 41641, 7200, now=1.0, previous=m)
        assert renewed.external == m.external  # a renewal keeps the port
        await client.delete(offers, m)
        assert igd.actions[-1][0] == "DeletePortMapping"
        assert f"<NewExternalPort>{m.external.port}<".encode() in igd.actions[-1][1]

    run(scenario)


def test_a_gateway_that_stops_answering_http_is_an_error() -> None:
    async def scenario() -> None:
        igd = await start_igd()
        offers = upnp_offers(igd)
        assert igd.server is not None
        igd.server.close()
        await igd.server.wait_closed()
        with pytest.raises(client.ProtocolError, match="UPnP"):
            await client.create(offers, 41641, 7200, now=0.0)

    run(scenario)


def test_a_gateway_without_port_mapping_is_asked_again_and_said_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Every RETRY_S the gateway is asked again (it may start to offer), quietly: one
    info line for its answer, no warning each minute."""
    probes: list[str] = []

    async def probe(gateway: str, local_ip: str) -> client.Offers:
        probes.append(gateway)
        return client.Offers(gateway, local_ip)

    async def scenario() -> None:
        pm = PortMapper(lambda: 41641, lambda ep: None, find_gateway=lambda: LOOPBACK, probe=probe)
        t = time.monotonic()
        for step in range(3):
            next_at = await pm._step(t + step * 60)
            assert next_at == t + step * 60 + mapper_module.RETRY_S
        assert len(probes) == 3 and "offers no port mapping" in str(pm.last_error)
        assert pm.status()["gateway"] == "127.0.0.1"

    with caplog.at_level(logging.INFO, logger="weftd.portmap"):
        run(scenario)
    said = [r for r in caplog.records if r.name == "weftd.portmap"]
    assert [r.levelno for r in said] == [logging.INFO], [r.getMessage() for r in said]
    assert "no port mapping" in said[0].getMessage()
