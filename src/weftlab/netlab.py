"""A lab of hosts, switched segments and NAT routers in Linux network namespaces.

Theory of operation
-------------------
Like WireGuard's ``netns.sh``, every box in the lab is a network namespace made with
``ip netns add``, and every wire is a veth pair. There are three kinds of box:

* a **segment** is a namespace holding one Linux bridge (``br0``); it stands for a
  switch. Its veth ports are named ``p1``, ``p2``, ... and are enslaved to the bridge.
* a **host** has ``lo`` up and one underlay interface, ``eth0``, with the next free
  address of the segment it is plugged into. On a segment behind a NAT router, its
  default route points at the router's LAN address; on a public segment it has no
  default route (all public hosts share that subnet, so none is needed).
* a **NAT router** has ``wan0`` on an upstream segment and ``lan0`` on a LAN segment
  of its own (``r.lan``), IP forwarding on, and an nftables ruleset: masquerade on
  ``wan0``, forward LAN->WAN, forward WAN->LAN only for conntrack
  ``established,related``, and drop anything else arriving on ``wan0``. ``kind="easy"``
  is plain ``masquerade``: Linux keeps the source port when it can, so one socket
  shows one mapped port to every destination (endpoint-independent mapping).
  ``kind="hard"`` is ``masquerade random``: the port is hashed from the destination, so
  each destination sees a different port (endpoint-dependent mapping). Filtering is
  conntrack's, address-and-port dependent, in both kinds. ``kind="bare"`` is a bare
  Linux router: only ``masquerade`` in postrouting, no filter table at all, so an
  unsolicited packet to the router's own address is delivered to the router itself and
  leaves a conntrack entry behind (see weftnet.magicsock.quietopen).

The underlay is IPv4 only and lives in 198.18.0.0/15 (RFC 2544 benchmarking space):
segments are /24s handed out from it. IPv6 is switched off on every underlay link, but
stays on in hosts (with duplicate address detection off) so that overlay IPv6
addresses on a TUN device come up at once.

Names. Every namespace is called ``wl<pid>x<lab>-<name>``: the creating process id
and a per-process lab counter, so parallel runs never clash and
:meth:`Lab.cleanup_stale` can tell a leftover (its pid is dead) from a live lab.
Interface names need no prefix: each is created directly inside its namespace
(``ip link add ... netns``), never in the root namespace, and names are per namespace.

Sockets under /run. ``wireguard-go`` puts its UAPI socket at the fixed path
``/var/run/wireguard/<ifname>.sock`` and weftd its local API at
``/run/weft/weftd.sock``, paths that namespaces share. Commands run through
:meth:`Node.run` and :meth:`Node.popen` therefore see a private ``/run/wireguard``
and ``/run/weft`` per box (bind mounts inside the mount namespace that
``ip netns exec`` makes anyway), so every host may call its interface ``wg0``.

Lifetime. ``with Lab() as lab:`` owns everything it made. On exit, also on an
exception, it kills the process group of every process started with ``popen``, then
any other process still inside its namespaces, then deletes the namespaces and their
/etc/netns/<netns>/ directories (every host has its own resolv.conf there, which
``ip netns exec`` mounts over /etc/resolv.conf).

API::

    with Lab() as lab:
        inet = lab.segment("inet", "198.18.0.0/24")       # Segment
        a = lab.host("a", inet)                             # Host; a.ip == "198.18.0.1"
        nat = lab.nat_router("nat1", upstream=inet, kind="easy")  # NatRouter; nat.lan
        b = lab.host("b", nat.lan)                          # behind the NAT
        b.run(["ping", "-c1", a.ip])                        # CompletedProcess[str]
        proc = a.popen(["iperf3", "-s"])                    # killed when the lab closes
        a.wait_listening(5201, proto="tcp")                 # poll `ss` with a deadline
        nat.dropped_inbound()                               # unsolicited packets dropped
        lab.block_udp(a, b); lab.unblock_udp(a, b)          # drop UDP between them
        b.move_to(inet)                                     # roam: new address, new route
        a.resolv_conf("nameserver 198.18.0.53\n")           # a's own /etc/resolv.conf
    Lab.cleanup_stale()                                     # remove dead runs' namespaces
"""

from __future__ import annotations

import contextlib
import functools
import ipaddress
import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, TypeVar

UNDERLAY = ipaddress.IPv4Network("198.18.0.0/15")
SEGMENT_PREFIXLEN = 24  # each auto-assigned segment is a /24 of the underlay
UNDERLAY_MTU = 1500
NETNS_DIR = Path("/run/netns")
# `ip netns exec NS` bind-mounts /etc/netns/NS/resolv.conf over /etc/resolv.conf: every
# host gets its own, so nothing in the lab writes or reads the machine's resolver file.
ETC_NETNS_DIR = Path("/etc/netns")
LAB_RESOLV_CONF = "# weftlab: this host has no nameserver outside the lab\n"
# Directories under /run that each box gets a private copy of: wireguard-go's UAPI
# sockets and weftd's local API socket live at fixed paths there.
PRIVATE_RUN_DIRS = ("wireguard", "weft")
BRIDGE = "br0"
HOST_IF = "eth0"
WAN_IF = "wan0"
LAN_IF = "lan0"
DEFAULT_TIMEOUT_S = 30.0
KILL_GRACE_S = 3.0  # how long a process gets after SIGTERM before SIGKILL

NatKind = Literal["easy", "hard", "bare"]
_T = TypeVar("_T")

_LAB_NAME_RE = re.compile(r"^wl(?P<pid>\d+)x(?P<lab>\d+)-")
_NODE_NAME_RE = re.compile(r"^[a-z][a-z0-9-]{0,31}$")
_lab_numbers = itertools.count()

# Bind-mounts the box's own directories ("$1", "$2", ...) over PRIVATE_RUN_DIRS in
# the mount namespace `ip netns exec` made, then runs the rest of the arguments.
_PRIVATE_RUN = " && ".join(
    [f'mount --bind -- "${i}" /run/{name}' for i, name in enumerate(PRIVATE_RUN_DIRS, 1)]
    + [f"shift {len(PRIVATE_RUN_DIRS)}", 'exec "$@"']
)


class LabError(RuntimeError):
    """The lab could not be built or torn down."""


class LabCommandError(subprocess.CalledProcessError):
    """A command in the lab failed; unlike its base class, str() shows its stderr."""

    def __str__(self) -> str:
        stderr = (self.stderr or "").strip()
        return f"{super().__str__()}\n{stderr}" if stderr else super().__str__()


def poll_until(
    predicate: Callable[[], _T], *, timeout_s: float, what: str, interval_s: float = 0.02
) -> _T:
    """Call ``predicate`` until it returns something truthy, and return that.

    Raises TimeoutError naming ``what`` once ``timeout_s`` has passed.
    """
    deadline_at = time.monotonic() + timeout_s
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() >= deadline_at:
            raise TimeoutError(f"timed out after {timeout_s:g} s waiting for {what}")
        time.sleep(interval_s)


def run_cmd(
    argv: Sequence[str],
    *,
    check: bool = True,
    timeout: float = DEFAULT_TIMEOUT_S,
    input: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a command in the root namespace, capturing text output."""
    proc = subprocess.run(
        list(argv), capture_output=True, text=True, timeout=timeout, input=input, check=False
    )
    if check and proc.returncode != 0:
        raise LabCommandError(proc.returncode, proc.args, proc.stdout, proc.stderr)
    return proc


def list_netns() -> list[str]:
    """Names of all named network namespaces on the machine."""
    try:
        return sorted(os.listdir(NETNS_DIR))
    except FileNotFoundError:
        return []


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _netns_pids(netns: str) -> list[int]:
    proc = run_cmd(["ip", "netns", "pids", netns], check=False)
    return [int(p) for p in proc.stdout.split()]


def _kill_netns_processes(netns: str, timeout_s: float = KILL_GRACE_S) -> None:
    for pid in _netns_pids(netns):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    poll_until(
        lambda: not _netns_pids(netns), timeout_s=timeout_s, what=f"processes in {netns} to die"
    )


class Node:
    """One namespace of the lab. Commands run inside it with ``run`` and ``popen``."""

    def __init__(self, lab: Lab, name: str) -> None:
        self.lab = lab
        self.name = name
        self.netns = lab.prefix + name
        self.workdir = lab.workdir / name  # scratch space for this box's files and logs
        self.run_dirs = [self.workdir / f"run-{sub}" for sub in PRIVATE_RUN_DIRS]
        for run_dir in self.run_dirs:
            run_dir.mkdir(parents=True, mode=0o700)
        self.run_dir = self.run_dirs[0]  # seen inside as /run/wireguard

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}>"

    def exec_argv(self, cmd: Sequence[str]) -> list[str]:
        """The argv that runs ``cmd`` inside this namespace (used by run and popen)."""
        private_run = ["sh", "-c", _PRIVATE_RUN, "sh", *map(str, self.run_dirs)]
        return ["ip", "netns", "exec", self.netns, *private_run, *cmd]

    def run(
        self,
        cmd: Sequence[str],
        *,
        check: bool = True,
        timeout: float = DEFAULT_TIMEOUT_S,
        input: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``cmd`` to completion inside the namespace; raise LabCommandError on failure."""
        return run_cmd(self.exec_argv(cmd), check=check, timeout=timeout, input=input)

    def popen(self, cmd: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
        """Start ``cmd`` inside the namespace in its own process group.

        The lab kills the group when it closes. Keyword arguments go to Popen.
        """
        kwargs.setdefault("start_new_session", True)
        kwargs.setdefault("stdin", subprocess.DEVNULL)
        proc: subprocess.Popen[Any] = subprocess.Popen(self.exec_argv(cmd), **kwargs)
        self.lab._track(proc)
        return proc

    def wait_listening(
        self, port: int, *, proto: Literal["tcp", "udp"] = "udp", timeout_s: float = 10.0
    ) -> None:
        """Wait until some socket in the namespace listens on (is bound to) ``port``."""
        flag = "-ltn" if proto == "tcp" else "-lun"

        def listening() -> bool:
            out = self.run(["ss", "-H", flag, "sport", "=", f":{port}"]).stdout
            return bool(out.strip())

        poll_until(listening, timeout_s=timeout_s, what=f"{proto} port {port} on {self.name}")

    def _ip(self, *args: str) -> None:
        run_cmd(["ip", "-n", self.netns, *args])

    def _sysctl(self, settings: dict[str, str | int]) -> None:
        argv = ["ip", "netns", "exec", self.netns, "sysctl", "-q", "-w"]
        run_cmd(argv + [f"{key}={value}" for key, value in settings.items()])


class Segment(Node):
    """A switched L2 segment: a bridge in its own namespace, with a /24 of the underlay."""

    def __init__(self, lab: Lab, name: str, network: ipaddress.IPv4Network) -> None:
        super().__init__(lab, name)
        self.network = network
        self.gateway: str | None = None  # the NAT router's LAN address, if any
        self.router: NatRouter | None = None
        self._addresses: Iterator[ipaddress.IPv4Address] = network.hosts()
        self._port_numbers = itertools.count(1)

    def _allocate_address(self) -> ipaddress.IPv4Address:
        try:
            return next(self._addresses)
        except StopIteration:
            raise LabError(f"segment {self.name} ({self.network}) has no free address") from None

    def _new_port_name(self) -> str:
        return f"p{next(self._port_numbers)}"


class Host(Node):
    """An end host with one underlay interface (``eth0``) on a segment."""

    ifname = HOST_IF

    def __init__(self, lab: Lab, name: str) -> None:
        super().__init__(lab, name)
        self.ip = ""
        self.segment: Segment | None = None

    @property
    def public_ip(self) -> str:
        """The address others on the outermost segment see: through every NAT above."""
        assert self.segment is not None
        ip, segment = self.ip, self.segment
        while segment.router is not None:
            ip, segment = segment.router.wan_ip, segment.router.upstream
        return ip

    def resolv_conf(self, text: str) -> Path:
        """Write this host's /etc/resolv.conf (as seen by commands run in it); the path
        of the file on the machine (/etc/netns/<netns>/resolv.conf)."""
        directory = ETC_NETNS_DIR / self.netns
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / "resolv.conf"
        with open(path, "w") as f:  # in place: a running process may hold it bind-mounted
            f.write(text)
        return path

    def move_to(self, segment: Segment) -> None:
        """Unplug from the current segment and plug into ``segment`` with a new address.

        Addresses are never reused, so a roaming peer really shows up from a new one.
        """
        self._ip("link", "del", HOST_IF)
        self._attach(segment)

    def _attach(self, segment: Segment) -> None:
        self.lab._plug(self, segment, HOST_IF)
        self.segment = segment
        self.ip = self.lab._address_of(self, HOST_IF)
        if segment.gateway is not None:
            self._ip("route", "add", "default", "via", segment.gateway)


class NatRouter(Node):
    """A NAT router between an upstream segment (``wan0``) and its own LAN (``lan0``)."""

    def __init__(self, lab: Lab, name: str, kind: NatKind, upstream: Segment) -> None:
        super().__init__(lab, name)
        self.kind = kind
        self.upstream = upstream
        self.wan_ip = ""
        self.lan_ip = ""
        self.lan: Segment

    def dropped_inbound(self) -> int:
        """How many unsolicited packets from the WAN the router has dropped so far."""
        proc = self.run(["nft", "-j", "list", "table", "inet", "weftlab_filter"])
        dropped = 0
        for item in json.loads(proc.stdout)["nftables"]:
            rule = item.get("rule")
            if rule is None or rule.get("comment") != "inbound":
                continue
            for expr in rule["expr"]:
                if "counter" in expr:
                    dropped += int(expr["counter"]["packets"])
        return dropped


def nat_ruleset(kind: NatKind) -> str:
    """The nftables ruleset of a NAT router of ``kind``."""
    if kind == "bare":  # only masquerade: nothing filters what reaches the router itself
        return f"""
table ip weftlab_nat {{
    chain postrouting {{
        type nat hook postrouting priority srcnat; policy accept;
        oifname "{WAN_IF}" masquerade
    }}
}}
"""
    masquerade = {"easy": "masquerade", "hard": "masquerade random"}[kind]
    return f"""
table ip weftlab_nat {{
    chain postrouting {{
        type nat hook postrouting priority srcnat; policy accept;
        oifname "{WAN_IF}" {masquerade}
    }}
}}
table inet weftlab_filter {{
    chain forward {{
        type filter hook forward priority filter; policy accept;
        ct state established,related accept
        iifname "{LAN_IF}" oifname "{WAN_IF}" accept
        counter drop comment "inbound"
    }}
    chain input {{
        type filter hook input priority filter; policy accept;
        iifname "{WAN_IF}" ct state established,related accept
        iifname "{WAN_IF}" counter drop comment "inbound"
    }}
}}
"""


_BLOCK_TABLE = """
table inet weftlab_block {
    set peers { type ipv4_addr; }
    chain input {
        type filter hook input priority filter; policy accept;
        meta l4proto udp ip saddr @peers drop
    }
}
"""


class Lab:
    """A set of namespaces that lives as long as the ``with`` block. See the module doc."""

    def __init__(self) -> None:
        if os.geteuid() != 0:
            raise LabError("the lab needs root (network namespaces): run as root")
        self.prefix = f"wl{os.getpid()}x{next(_lab_numbers)}-"
        self.workdir = Path(tempfile.mkdtemp(prefix=self.prefix))
        for name in PRIVATE_RUN_DIRS:  # mount points for the boxes' own directories
            Path("/run", name).mkdir(mode=0o755, exist_ok=True)
        self.nodes: dict[str, Node] = {}
        self._netns: list[str] = []
        self._procs: list[subprocess.Popen[Any]] = []
        self._claimed: list[ipaddress.IPv4Network] = []
        self._blocked: dict[str, Counter[str]] = {}
        self._closed = False

    # -- lifetime ---------------------------------------------------------------

    def __enter__(self) -> Lab:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            self.close()
        except LabError as cleanup_error:
            if exc is None:
                raise
            exc.add_note(f"and then the lab's cleanup failed: {cleanup_error}")

    @property
    def netns_names(self) -> list[str]:
        """Names of the namespaces this lab made (and has not deleted yet)."""
        return list(self._netns)

    def close(self) -> None:
        """Kill every process the lab started and delete every namespace it made."""
        if self._closed:
            return
        self._closed = True
        problems: list[str] = []
        self._stop_tracked_processes()
        for netns in reversed(self._netns):
            try:
                _kill_netns_processes(netns)
            except TimeoutError as err:
                problems.append(str(err))
            proc = run_cmd(["ip", "netns", "del", netns], check=False)
            if proc.returncode != 0 and netns in list_netns():
                problems.append(f"ip netns del {netns}: {proc.stderr.strip()}")
            shutil.rmtree(ETC_NETNS_DIR / netns, ignore_errors=True)
        self._netns.clear()
        shutil.rmtree(self.workdir, ignore_errors=True)
        if problems:
            raise LabError("; ".join(problems))

    def _track(self, proc: subprocess.Popen[Any]) -> None:
        if self._closed:
            proc.kill()
            raise LabError("the lab is closed")
        self._procs.append(proc)

    def _stop_tracked_processes(self) -> None:
        def all_exited(procs: list[subprocess.Popen[Any]]) -> bool:
            return all(p.poll() is not None for p in procs)

        for sig in (signal.SIGTERM, signal.SIGKILL):
            running = [p for p in self._procs if p.poll() is None]
            for proc in running:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, sig)
            with contextlib.suppress(TimeoutError):
                poll_until(
                    functools.partial(all_exited, running),
                    timeout_s=KILL_GRACE_S,
                    what="lab processes to exit",
                )
        self._procs.clear()

    @classmethod
    def cleanup_stale(cls) -> list[str]:
        """Delete namespaces (and work directories) of labs whose process is dead.

        Returns the names of the namespaces deleted.
        """
        removed = []
        for netns in list_netns():
            match = _LAB_NAME_RE.match(netns)
            if match is None or _pid_alive(int(match["pid"])):
                continue
            with contextlib.suppress(TimeoutError):
                _kill_netns_processes(netns)
            if run_cmd(["ip", "netns", "del", netns], check=False).returncode == 0:
                removed.append(netns)
        for etc in ETC_NETNS_DIR.glob("wl*x*-*"):
            match = _LAB_NAME_RE.match(etc.name)
            if match is not None and not _pid_alive(int(match["pid"])):
                shutil.rmtree(etc, ignore_errors=True)
        for workdir in Path(tempfile.gettempdir()).glob("wl*x*-*"):
            match = _LAB_NAME_RE.match(workdir.name)
            if match is not None and workdir.is_dir() and not _pid_alive(int(match["pid"])):
                shutil.rmtree(workdir, ignore_errors=True)
        return removed

    # -- building ---------------------------------------------------------------

    def segment(self, name: str, subnet: str | None = None) -> Segment:
        """A switched segment; ``subnet`` is a network inside 198.18.0.0/15, or the next free /24."""
        network = self._claim_subnet(subnet)
        seg = Segment(self, self._check_name(name), network)
        self._add_netns(seg)
        seg._sysctl({"net.ipv6.conf.all.disable_ipv6": 1, "net.ipv6.conf.default.disable_ipv6": 1})
        seg._ip("link", "add", BRIDGE, "type", "bridge")
        seg._ip("link", "set", BRIDGE, "up")
        return seg

    def host(self, name: str, segment: Segment) -> Host:
        """A host plugged into ``segment``, with the next free address on it."""
        host = Host(self, self._check_name(name))
        self._add_netns(host)
        host._sysctl({"net.ipv6.conf.all.accept_dad": 0, "net.ipv6.conf.default.accept_dad": 0})
        host._ip("link", "set", "lo", "up")
        host.resolv_conf(LAB_RESOLV_CONF)
        host._attach(segment)
        return host

    def nat_router(
        self,
        name: str,
        *,
        upstream: Segment,
        kind: NatKind = "easy",
        lan_subnet: str | None = None,
    ) -> NatRouter:
        """A NAT router on ``upstream`` with a new LAN segment ``<name>-lan`` (``r.lan``)."""
        if kind not in ("easy", "hard", "bare"):
            raise ValueError(f"NAT kind must be 'easy', 'hard' or 'bare', not {kind!r}")
        router = NatRouter(self, self._check_name(name), kind, upstream)
        self._add_netns(router)
        router._sysctl(
            {
                "net.ipv4.ip_forward": 1,
                "net.ipv6.conf.all.disable_ipv6": 1,
                "net.ipv6.conf.default.disable_ipv6": 1,
            }
        )
        router._ip("link", "set", "lo", "up")
        self._plug(router, upstream, WAN_IF)
        router.wan_ip = self._address_of(router, WAN_IF)
        if upstream.gateway is not None:
            router._ip("route", "add", "default", "via", upstream.gateway)
        router.lan = self.segment(f"{name}-lan", lan_subnet)
        self._plug(router, router.lan, LAN_IF)
        router.lan_ip = self._address_of(router, LAN_IF)
        router.lan.gateway = router.lan_ip
        router.lan.router = router
        run_cmd(["ip", "netns", "exec", router.netns, "nft", "-f", "-"], input=nat_ruleset(kind))
        return router

    def block_udp(self, a: Host, b: Host) -> None:
        """Drop UDP between ``a`` and ``b`` until unblocked.

        Each host drops what arrives from the other's addresses (its own and the one its
        NATs show), so senders see no error, as when a network in between drops it.
        The addresses are those of the moment: block again after a ``move_to``.
        """
        self._change_block(a, b, "add")
        self._change_block(b, a, "add")

    def unblock_udp(self, a: Host, b: Host) -> None:
        """Undo one :meth:`block_udp` of the same pair."""
        self._change_block(a, b, "delete")
        self._change_block(b, a, "delete")

    # -- internals --------------------------------------------------------------

    def _check_name(self, name: str) -> str:
        if self._closed:
            raise LabError("the lab is closed")
        if not _NODE_NAME_RE.match(name):
            raise ValueError(f"lab name {name!r}: use 1-32 of a-z, 0-9 and '-', starting a-z")
        if name in self.nodes:
            raise ValueError(f"the lab already has a box named {name!r}")
        return name

    def _add_netns(self, node: Node) -> None:
        run_cmd(["ip", "netns", "add", node.netns])
        self._netns.append(node.netns)
        self.nodes[node.name] = node

    def _claim_subnet(self, subnet: str | None) -> ipaddress.IPv4Network:
        if subnet is None:
            for candidate in UNDERLAY.subnets(new_prefix=SEGMENT_PREFIXLEN):
                if not any(candidate.overlaps(taken) for taken in self._claimed):
                    self._claimed.append(candidate)
                    return candidate
            raise LabError("the underlay 198.18.0.0/15 has no free /24 left")
        network = ipaddress.IPv4Network(subnet)
        if not network.subnet_of(UNDERLAY):
            raise ValueError(f"segment subnet {subnet} is outside the lab underlay {UNDERLAY}")
        if network.prefixlen > 30:
            raise ValueError(f"segment subnet {subnet} is too small: use /30 or larger")
        if any(network.overlaps(taken) for taken in self._claimed):
            raise ValueError(f"segment subnet {subnet} overlaps another segment")
        self._claimed.append(network)
        return network

    def _plug(self, node: Node, segment: Segment, ifname: str) -> None:
        """Wire ``node``'s ``ifname`` to a new port of ``segment`` and address it."""
        port = segment._new_port_name()
        address = segment._allocate_address()
        # Both ends are created directly in their namespaces: no name in the root one.
        segment._ip(
            "link", "add", port, "mtu", str(UNDERLAY_MTU), "type", "veth",
            "peer", "name", ifname, "mtu", str(UNDERLAY_MTU), "netns", node.netns,
        )  # fmt: skip
        segment._ip("link", "set", port, "master", BRIDGE, "up")
        node._sysctl({f"net.ipv6.conf.{ifname}.disable_ipv6": 1})
        node._ip("addr", "add", f"{address}/{segment.network.prefixlen}", "dev", ifname)
        node._ip("link", "set", ifname, "up")

    @staticmethod
    def _address_of(node: Node, ifname: str) -> str:
        proc = run_cmd(["ip", "-n", node.netns, "-4", "-o", "addr", "show", "dev", ifname])
        return proc.stdout.split()[3].split("/")[0]

    def _change_block(self, at: Host, other: Host, op: Literal["add", "delete"]) -> None:
        counts = self._blocked.get(at.name)
        if counts is None:
            run_cmd(["ip", "netns", "exec", at.netns, "nft", "-f", "-"], input=_BLOCK_TABLE)
            counts = self._blocked[at.name] = Counter()
        for address in {other.ip, other.public_ip}:
            if op == "add":
                counts[address] += 1
                changed = counts[address] == 1
            else:
                if counts[address] == 0:
                    raise LabError(f"UDP between {at.name} and {other.name} is not blocked")
                counts[address] -= 1
                changed = counts[address] == 0
            if changed:
                element = f"{op} element inet weftlab_block peers {{ {address} }}"
                run_cmd(["ip", "netns", "exec", at.netns, "nft", element])
