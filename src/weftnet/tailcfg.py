"""Every type that crosses between a node and the coordination server, versioned.

Named after Tailscale's tailcfg package. Keys travel as typed hex strings
("nodekey:<64 hex>", "mkey:...", "discokey:..."), addresses as CIDR strings. A change
that an older peer could misread bumps CAPABILITY_VERSION; the server answers every
version it still supports and refuses others with a clear error.

The protocol (see docs/control-protocol.md):

    GET  /key                          -> ServerKey (the node pins it at first contact)
    POST /machine/<mkey hex>/register  sealed RegisterRequest  -> sealed RegisterResponse
    POST /machine/<mkey hex>/map       sealed MapRequest       -> a stream of sealed frames,
                                                                  each a MapResponse
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, FiniteFloat

CAPABILITY_VERSION = 3  # bumped on any change an older peer would misread
# 2: every sealed answer is bound to its request (controlbox.answer_nonce)
ANSWER_BINDING_VERSION = 2
# 3: subnet routes and exit routes: a peer's allowed_ips may hold more than its addresses
# (its primary subnet routes, 0.0.0.0/0 and ::/0 for an exit node); older viewers get
# allowed_ips == addresses.
ROUTES_VERSION = 3
MIN_CAPABILITY_VERSION = 1  # the oldest the server still talks to

NODE_KEY_PREFIX = "nodekey:"
MACHINE_KEY_PREFIX = "mkey:"
DISCO_KEY_PREFIX = "discokey:"
RELAY_KEY_PREFIX = "relaykey:"

MAX_ENDPOINTS = 32  # endpoints the server keeps from one map request (it drops the rest)
MAX_HOSTNAME = 255  # characters of Hostinfo.hostname the server keeps

# Machine-readable reasons for a refusal (``MapResponse.error_kind``,
# ``RegisterResponse.error_kind``); ``error`` carries the text for people. The field is a
# plain string on the wire so that a kind added later does not break older nodes: treat
# an unknown kind like ``server_error`` (retry with backoff).
ERROR_LOGGED_OUT = "logged_out"  # no node for this machine and key (deleted, re-keyed): log in
ERROR_EXPIRED = "expired"  # the node key expired: log in again
ERROR_CLOCK_SKEW = "clock_skew"  # the request's ts is too far from the server clock: fix, retry
ERROR_BAD_REQUEST = "bad_request"  # the request is malformed or not allowed; retrying won't help
ERROR_SERVER = "server_error"  # the server could not answer now (database busy): retry later
ERROR_KINDS = frozenset(
    {ERROR_LOGGED_OUT, ERROR_EXPIRED, ERROR_CLOCK_SKEW, ERROR_BAD_REQUEST, ERROR_SERVER}
)


class Wire(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class ServerKey(Wire):
    public_key: str  # "mkey:<hex>" form of the server's X25519 key
    capability_version: int = CAPABILITY_VERSION


class Hostinfo(Wire):
    hostname: str = ""
    os: str = "linux"
    client_version: str = ""
    # Prefixes this node offers to route (`weft up --advertise-routes`), canonical CIDRs;
    # an exit node offers "0.0.0.0/0" and "::/0" (`--advertise-exit-node`).
    routable_ips: list[str] = Field(default_factory=list)


class RelayRegion(Wire):
    """One relay a node may use (see docs/relay-protocol.md)."""

    name: str  # region name, e.g. "default", "eu"
    url: str  # "http://host:port": the relay is entered by an upgrade on <url>/relay
    public_key: str  # "relaykey:<hex>": nodes pin it (RelayClient server_key)
    stun_port: int | None = None  # UDP STUN on the relay's host, if any
    # The region this relay serves with others (a mesh: they share their clients); a node
    # connects to one relay of it and names it as its home. None: a region of its own.
    mesh: str | None = None

    @property
    def region(self) -> str:
        """The region a node sees: the mesh, or this relay alone."""
        return self.mesh or self.name


class RegisterRequest(Wire):
    version: int = CAPABILITY_VERSION
    ts: FiniteFloat  # unix seconds; the server refuses requests far from its own clock
    node_key: str
    old_node_key: str | None = None
    auth_key: str | None = None
    hostinfo: Hostinfo = Field(default_factory=Hostinfo)
    followup: str | None = None  # the auth URL of an interactive login, to wait on
    logout: bool = False  # expire this node's key now


class UserInfo(Wire):
    id: int
    name: str  # login name; with an @ it is an email address


class Node(Wire):
    id: int
    name: str  # the hostname the device reported
    given_name: str  # unique within the tailnet, used for DNS
    user: UserInfo | None = None  # None for tagged nodes, owned by their tags
    tags: list[str] = Field(default_factory=list)
    node_key: str
    disco_key: str | None = None
    addresses: list[str]  # ["100.64.0.1/32", "fd7a:115c:a1e0::1/128"]
    # addresses + the subnet routes it is primary for + 0.0.0.0/0 and ::/0 when it is an
    # approved exit node: each only as far as the viewer's policy lets it use them.
    allowed_ips: list[str]
    primary_routes: list[str] = Field(default_factory=list)  # its subnet routes (no /0)
    endpoints: list[str] = Field(default_factory=list)  # "ip:port" candidates
    online: bool = False
    last_seen: float | None = None
    key_expiry: float | None = None  # unix seconds
    expired: bool = False
    ephemeral: bool = False
    home_relay: str | None = None  # region name where this node can be reached
    os: str = ""  # as the node reported it (Hostinfo.os)
    client_version: str = ""
    # False only on a node's own view of itself while it waits for an admin's approval
    # (device approval): it has no peers until then. Older servers never send it.
    machine_authorized: bool = True


class RegisterResponse(Wire):
    # False: an interactive login (``auth_url``), a logout, an error - or, with ``node``
    # set, a device registered but waiting for an admin's approval (device approval).
    machine_authorized: bool = True
    auth_url: str | None = None  # interactive login: open this, or ask the admin
    node: Node | None = None
    user: UserInfo | None = None
    node_key_expired: bool = False
    error: str | None = None
    error_kind: str | None = None  # one of ERROR_KINDS when ``error`` is set (else None)


class MapRequest(Wire):
    version: int = CAPABILITY_VERSION
    ts: FiniteFloat  # unix seconds, as in RegisterRequest
    node_key: str
    disco_key: str | None = None
    endpoints: list[str] = Field(default_factory=list)
    hostinfo: Hostinfo = Field(default_factory=Hostinfo)
    stream: bool = True
    omit_peers: bool = False  # just report endpoints/hostinfo and return
    home_relay: str | None = None  # the region this node picked (lowest latency)


class PortRange(Wire):
    first: int  # 0-65535, inclusive
    last: int


class NetPortRange(Wire):
    ip: str  # a CIDR ("100.64.0.5/32", "::/0") of the receiving node's addresses
    ports: PortRange  # ignored for protocols without ports (ICMP)


class FilterRule(Wire):
    """Packets from any of ``src_ips`` to any of ``dst_ports`` over any of ``ip_proto``
    pass a node's inbound filter (docs/policy.md). As Tailscale's tailcfg.FilterRule."""

    src_ips: list[str]  # CIDRs
    dst_ports: list[NetPortRange]
    ip_proto: list[int]  # IANA protocol numbers (6 TCP, 17 UDP, 1 ICMP, 58 ICMPv6, ...)


class DNSResolver(Wire):
    """A nameserver: ``198.18.7.53``, ``198.18.7.53:5353`` or ``[fd00::1]:53``."""

    addr: str


class DNSRecord(Wire):
    """An extra record the node's resolver answers itself."""

    name: str  # FQDN without the trailing dot
    type: str = ""  # "A" | "AAAA" ("" : from the value's family)
    value: str


class DNSConfig(Wire):
    """How a node resolves names (docs/dns.md): MagicDNS for the tailnet's names under
    ``domain``, split routes, default and fallback resolvers, extra records."""

    magic_dns: bool = False
    domain: str = ""  # the MagicDNS suffix, e.g. "weft.internal"
    resolvers: list[DNSResolver] = Field(default_factory=list)  # override local DNS (".")
    fallback_resolvers: list[DNSResolver] = Field(default_factory=list)  # when the OS has none
    routes: dict[str, list[DNSResolver]] = Field(default_factory=dict)  # [] = answered locally
    search_domains: list[str] = Field(default_factory=list)  # ``domain`` first with MagicDNS
    extra_records: list[DNSRecord] = Field(default_factory=list)


class MapResponse(Wire):
    """One frame of the map stream. The first is full (``peers`` set); later ones are
    deltas (``peers_changed`` / ``peers_removed``) or keepalives."""

    keepalive: bool = False
    node: Node | None = None  # ourselves, when it changed
    peers: list[Node] | None = None  # full list: replaces everything known
    peers_changed: list[Node] = Field(default_factory=list)  # upserts by id
    peers_removed: list[int] = Field(default_factory=list)  # node ids
    dns_domain: str | None = None
    relay_map: list[RelayRegion] | None = None  # in full frames, and whenever it changes
    # What may reach this node, in full frames and whenever it changes (None: unchanged).
    # A packet passes if any rule accepts it; [] accepts nothing but replies to the
    # node's own flows. With no policy set the server sends one rule accepting all.
    packet_filter: list[FilterRule] | None = None
    # How this node resolves names, in full frames and whenever it changes (None: unchanged).
    dns_config: DNSConfig | None = None
    error: str | None = None  # e.g. "node deleted": the stream ends after it
    error_kind: str | None = None  # one of ERROR_KINDS when ``error`` is set (else None)
