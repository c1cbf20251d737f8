"""The relay map's standalone regions: relays that registered with the server (pure).

Theory of operation: a standalone relay (``weft-control relay``) POSTs its region name,
URL, public key and STUN port to ``/api/v1/relays`` when it starts and every
``REGISTER_INTERVAL_S`` after; the registry keeps each region until ``REGION_TTL_S``
passes without a refresh, so a relay that died leaves the map within about 30 s. One
region name is one relay: a later registration under the same name replaces the
earlier one (a relay that restarted with a new key or on a new port takes its place).
Several relays may serve one region as a mesh: each registers under a name of its own
with the same ``mesh`` (the region nodes see, docs/relay-protocol.md "Mesh"); a mesh name
may not be another relay's own name, so a region is either one relay or one mesh.
The coordination server's own relay is not in here: its URL depends on how each node
reached the server, so the map stream adds it (``netmap.NetMap.view_for``).

``register`` and ``expire`` say whether the map changed, so the hub pushes a delta only
then, not on every refresh. Time is an argument (unix seconds). No I/O.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from weftnet import controlbox, tailcfg
from weftnet.relay.upgrade import parse_relay_url

REGISTER_INTERVAL_S = 10.0  # a standalone relay registers again this often
REGION_TTL_S = 30.0  # a region not refreshed for this long leaves the relay map
MAX_REGIONS = 64  # registered regions at most; a relay map is sent in every full frame
MAX_URL_LEN = 200  # characters of a relay URL

_REGION_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")  # 1..63 characters


def check_region_name(name: str) -> str:
    """``name`` if it is a valid region name, else ValueError saying what is allowed."""
    if not _REGION_NAME.fullmatch(name):
        raise ValueError(
            f"invalid region name {name[:80]!r}: 1-63 letters, digits, '.', '_' or '-',"
            " starting with a letter or digit"
        )
    return name


def relay_key_text(public_key: bytes) -> str:
    return controlbox.key_to_text(tailcfg.RELAY_KEY_PREFIX, public_key)


def region(
    name: str, url: str, public_key: str, stun_port: int | None = None, mesh: str | None = None
) -> tailcfg.RelayRegion:
    """A checked RelayRegion; ValueError (one line) for anything malformed."""
    check_region_name(name)
    if mesh is not None:
        check_region_name(mesh)
    if len(url) > MAX_URL_LEN:
        raise ValueError(f"relay URL longer than {MAX_URL_LEN} characters")
    parse_relay_url(url)  # raises ValueError with a message
    public_key = relay_key_text(controlbox.key_from_text(tailcfg.RELAY_KEY_PREFIX, public_key))
    if stun_port is not None and not 0 < stun_port < 65536:
        raise ValueError(f"invalid stun_port {stun_port}: 1-65535, or null for none")
    return tailcfg.RelayRegion(
        name=name, url=url, public_key=public_key, stun_port=stun_port, mesh=mesh
    )


@dataclass(frozen=True, slots=True)
class Registration:
    region: tailcfg.RelayRegion
    registered_at: float  # first registration of this exact region (unix seconds)
    last_seen: float  # latest refresh
    expires_at: float  # leaves the map then, unless refreshed


class RelayRegistry:
    """Standalone relays by region name, each until its registration expires."""

    def __init__(self, ttl_s: float = REGION_TTL_S, max_regions: int = MAX_REGIONS) -> None:
        self.ttl_s = ttl_s
        self.max_regions = max_regions
        self._entries: dict[str, Registration] = {}

    def register(self, entry: tailcfg.RelayRegion, now: float) -> bool:
        """Add or refresh ``entry``; True if the relay map changed.

        Raises OverflowError when a new region would exceed ``max_regions``, ValueError
        when it would mix a relay of its own and a mesh under one region name."""
        for other in self._entries.values():
            o = other.region
            if o.name != entry.name and entry.region == o.region and not (entry.mesh and o.mesh):
                raise ValueError(
                    f"region {entry.region} is already served by relay {o.name}"
                    + (f" in mesh {o.mesh}" if o.mesh else " alone")
                    + ": relays of one region all name it with --mesh"
                )
        old = self._entries.get(entry.name)
        if old is None and len(self._entries) >= self.max_regions:
            raise OverflowError(f"already {self.max_regions} relay regions registered")
        same = old is not None and old.region == entry
        registered_at = old.registered_at if same and old is not None else now
        self._entries[entry.name] = Registration(entry, registered_at, now, now + self.ttl_s)
        return not same

    def remove(self, name: str) -> bool:
        return self._entries.pop(name, None) is not None

    def expire(self, now: float) -> bool:
        """Drop every registration not refreshed in time; True if any went."""
        gone = [name for name, r in self._entries.items() if r.expires_at <= now]
        for name in gone:
            del self._entries[name]
        return bool(gone)

    def regions(self) -> tuple[tailcfg.RelayRegion, ...]:
        """The registered regions, by name."""
        return tuple(self._entries[name].region for name in sorted(self._entries))

    def registrations(self) -> list[Registration]:
        return [self._entries[name] for name in sorted(self._entries)]

    def get(self, name: str) -> Registration | None:
        return self._entries.get(name)

    def mesh(self, mesh: str) -> list[tailcfg.RelayRegion]:
        """The relays that registered with ``mesh``, by name."""
        return [r for r in self.regions() if r.mesh == mesh]
