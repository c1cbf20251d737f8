"""A lab STUN server that answers every Binding request, short ones too.

weftnet's own STUN server (weftnet.stun.server) answers only requests at least as long
as the answer, so it cannot amplify traffic. miniupnpd's STUN client (used by the lab's
port-mapping routers to learn their "public" address, see weftlab.miniupnpd) sends
28-byte requests with a CHANGE-REQUEST attribute (RFC 3489), which that rule drops.
This one answers each request from the socket it arrived on, with the source address
seen, ignoring CHANGE-REQUEST: miniupnpd only needs every answer to arrive.

Run in a lab host: ``python -m weftlab.stunecho PORT``.
"""

from __future__ import annotations

import socket
import sys

from weftnet import stun
from weftnet.wireguard.errors import ProtocolError


def serve(port: int) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("0.0.0.0", port))
    while True:
        data, src = sock.recvfrom(2048)
        try:
            txid = stun.parse_request(data)
        except ProtocolError:
            continue
        sock.sendto(stun.binding_response(txid, (src[0], src[1])), src)


if __name__ == "__main__":
    serve(int(sys.argv[1]))
