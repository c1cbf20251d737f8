"""A hostile tailnet member, for lab tests:
``python -m weftlab.hostile URL AUTH_KEY [CA_FILE]`` (CA_FILE: for an https URL).

It speaks the real sealed node protocol (weftlab.control.FakeNode) and tries what an
honest weftd never sends: an all-zero node key, a low-order disco key, a hostname full of
terminal escapes, 200 endpoints (loopback, multicast and unspecified among them), and
garbage map requests. It prints one JSON object: what the server answered to each try,
so the test can assert on the refusals, and the node key it stayed registered with.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any

import httpx

from weftlab.control import FakeNode
from weftnet import controlbox, tailcfg, tls

ZERO_KEY = bytes(32)
# An order-8 point of Curve25519 (libsodium's blocklist): DH with it is all-zero.
LOW_ORDER_POINT = bytes.fromhex("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800")
ESCAPES_HOSTNAME = "\x1b]0;owned\x07\x1b[2J\x1b[31mevil\x1b[0m\r\nhost"


def hostile_endpoints() -> list[str]:
    eps = ["127.0.0.1:41641", "[::1]:41641", "224.0.0.1:41641", "0.0.0.0:41641",
           "[ff02::1]:41641", "169.254.0.1:41641", "198.18.9.9:0", "not-an-endpoint"]  # fmt: skip
    eps += [f"198.18.{200 + i // 250}.{1 + i % 250}:{1000 + i}" for i in range(200 - len(eps))]
    return eps


async def refused(coro: Any) -> str:
    """The server's refusal text for a register/map call, or "" if it was accepted."""
    try:
        result = await coro
    except RuntimeError as e:
        return str(e)
    if isinstance(result, tailcfg.RegisterResponse):
        return result.error or ""
    return next((f.error for f in result if f.error), "")


async def run(url: str, auth_key: str, ca_file: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    async with httpx.AsyncClient(timeout=10, verify=tls.client_context(ca_file)) as http:
        zero = FakeNode(url, http, hostname="zero")
        zero_text = controlbox.key_to_text(tailcfg.NODE_KEY_PREFIX, ZERO_KEY)
        out["zero_node_key"] = await refused(zero.register(auth_key, node_key=zero_text))

        node = FakeNode(url, http, hostname=ESCAPES_HOSTNAME)
        reg = await node.register(auth_key)
        out["registered"] = reg.machine_authorized and not reg.error
        out["node_key"] = node.node_key
        low = controlbox.key_to_text(tailcfg.DISCO_KEY_PREFIX, LOW_ORDER_POINT)
        out["low_order_disco_key"] = await refused(node.map_once(disco_key=low, omit_peers=True))
        out["escapes_and_endpoints"] = await refused(
            node.map_once(endpoints=hostile_endpoints(), omit_peers=True)
        )
        garbage = {
            "not sealed": b"\x00garbage" * 10,
            "sealed non-JSON": node.seal_bytes(b"{not json"),
            "sealed wrong types": node.seal_bytes(
                json.dumps({"ts": "yesterday", "node_key": 7, "endpoints": "x"}).encode()
            ),
            "sealed stale": node.seal(node.map_request(ts=time.time() - 3600)),
        }
        answers = {}
        for what, body in garbage.items():
            r = await node.post("map", body)
            answers[what] = f"HTTP {r.status_code}"
            if r.status_code == 200:  # a request that opens is refused sealed, with a kind
                frames = controlbox.FrameReader().feed(r.content) or [r.content]
                refusal = tailcfg.MapResponse.model_validate_json(node.open(frames[0]))
                answers[what] = f"{refusal.error_kind}: {refusal.error}"
        out["garbage_map"] = answers
    return out


def main() -> None:
    url, auth_key = sys.argv[1], sys.argv[2]
    ca_file = sys.argv[3] if len(sys.argv) > 3 else None
    print(json.dumps(asyncio.run(run(url, auth_key, ca_file))))


if __name__ == "__main__":
    main()
