"""The one error a gateway's definite "no" becomes, whatever the protocol."""

from __future__ import annotations

from weftnet.wireguard.errors import ProtocolError


class Refused(ProtocolError):
    """The gateway answered with a failure code: it speaks the protocol and says no."""

    protocol = "gateway"  # each protocol's subclass names itself

    def __init__(self, code: int, meaning: str) -> None:
        self.code = code
        super().__init__(f"{self.protocol}: {meaning} (result {code})")
