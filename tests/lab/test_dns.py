"""Issue 13 end to end: the node's resolver at 100.100.100.100, asked with dig inside
node namespaces (research/dns-routes.md §4.4 D1, D1b, D2, D4, D11, D12).

One lab for the module: a coordination server, nodes a and r1 (and c, joined later),
an upstream dnsmasq "updns" standing in for the resolver a's OS had before (a's own
/etc/resolv.conf names it), and "nb", a plain host on a's segment. dnsmasq's query log
shows what reached the upstream.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from weftlab.control import Control, start_control
from weftlab.netlab import Host, Lab, Segment, poll_until
from weftlab.tailnet import Node, join, start_node

pytestmark = pytest.mark.lab

DOMAIN = "weft.internal"  # the server's default MagicDNS domain
SERVICE_V4 = "100.100.100.100"
SERVICE_V6 = "fd7a:115c:a1e0::53"
FORWARDED_IP = "198.18.0.99"  # what updns answers for *.example.test
BIG_TXT = [f"{i:02d}" + "x" * 248 for i in range(12)]  # 12 strings of 250: 3000+ bytes


@dataclass
class Dnsmasq:
    host: Host
    log: Path

    def queries(self, name: str) -> int:
        """How many queries for ``name`` this dnsmasq logged."""
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return len(re.findall(rf"query\[\w+\] {re.escape(name)} from ", text))


def start_dnsmasq(host: Host, args: list[str]) -> Dnsmasq:
    log = host.workdir / "dnsmasq.log"
    host.popen(["dnsmasq", "--no-daemon", "--no-resolv", "--no-hosts", "--bind-interfaces",
                f"--listen-address={host.ip}", "--log-queries", f"--log-facility={log}",
                "--user=root", "--group=root", *args])  # fmt: skip
    host.wait_listening(53)
    host.wait_listening(53, proto="tcp")
    return Dnsmasq(host, log)


@dataclass
class Net:
    lab: Lab
    inet: Segment
    tmp: Path
    control: Control
    a: Node
    r1: Node
    updns: Dnsmasq
    nb: Host
    key: str


@pytest.fixture(scope="module")
def net(lab_environment: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Net]:
    tmp = tmp_path_factory.mktemp("dns")
    with Lab() as lab:
        inet = lab.segment("inet", "198.18.0.0/24")
        ctl = lab.host("ctl", inet)
        up_host = lab.host("updns", inet)
        a_host = lab.host("a", inet)
        r1_host = lab.host("r1", inet)
        nb = lab.host("nb", inet)
        txt = ",".join(f'"{s}"' for s in BIG_TXT)
        updns = start_dnsmasq(up_host, [f"--address=/example.test/{FORWARDED_IP}",
                                        f"--txt-record=big.example.test,{txt}"])  # fmt: skip
        for h in (a_host, r1_host):
            h.resolv_conf(f"nameserver {up_host.ip}\n")
        control = start_control(ctl, tmp / "control")
        a, r1 = start_node(tmp, a_host, "a"), start_node(tmp, r1_host, "r1")
        key = join(control, [a, r1])
        poll_until(lambda: dig(a, f"r1.{DOMAIN}", "+short").strip() == r1.ip4(),
                   timeout_s=10, what="a to resolve r1")  # fmt: skip
        yield Net(lab, inet, tmp, control, a, r1, updns, nb, key)


def dig(node: Node, *args: str, server: str = SERVICE_V4) -> str:
    r = node.host.run(["dig", f"@{server}", "+time=2", "+tries=1", *args], check=False)
    return r.stdout


def header(out: str) -> tuple[str, set[str]]:
    """(status, flags) of a dig answer."""
    status = re.search(r"status: (\w+)", out)
    flags = re.search(r";; flags: ([\w ]+);", out)
    assert status and flags, out
    return status.group(1), set(flags.group(1).split())


def section(out: str) -> list[list[str]]:
    """The record lines of dig's answer and authority (+noall +answer +authority)."""
    return [line.split() for line in out.splitlines() if line and not line.startswith(";")]


def test_peer_names_ptr_and_negative_answers(net: Net) -> None:
    a, r1 = net.a, net.r1
    r1_v4 = r1.ip4()
    r1_v6 = r1.weft("ip", "-6").stdout.strip()
    for _ in range(20):  # D1: 0 failures over 20 repetitions
        out = dig(a, f"r1.{DOMAIN}", "A", "+noall", "+comments", "+answer")
        assert header(out) == ("NOERROR", {"qr", "aa", "rd", "ra"}), out
        assert section(out) == [[f"r1.{DOMAIN}.", "5", "IN", "A", r1_v4]], out
    assert section(dig(a, f"r1.{DOMAIN}", "AAAA", "+noall", "+answer")) == [
        [f"r1.{DOMAIN}.", "5", "IN", "AAAA", r1_v6]
    ]
    assert dig(a, "r1", "A", "+short").split() == [r1_v4]  # the bare name
    assert dig(a, "-x", r1_v4, "+short").split() == [f"r1.{DOMAIN}."]
    assert dig(a, "-x", r1_v6, "+short").split() == [f"r1.{DOMAIN}."]
    assert dig(a, "-x", SERVICE_V4, "+short").split() == ["magicdns.localhost-weftd."]
    for query in (["-x", "100.64.250.1"], [f"nosuch.{DOMAIN}", "A"]):
        out = dig(a, *query, "+noall", "+comments", "+authority")
        status, flags = header(out)
        assert status == "NXDOMAIN" and "aa" in flags, out
        soa = section(out)
        assert len(soa) == 1 and soa[0][1] == "10" and soa[0][3] == "SOA", out
    out = dig(a, f"r1.{DOMAIN}", "MX", "+noall", "+comments", "+answer", "+authority")
    assert header(out)[0] == "NOERROR" and [r[3] for r in section(out)] == ["SOA"], out
    out = dig(a, "+tcp", f"r1.{DOMAIN}", "A", "+noall", "+comments", "+answer")
    assert header(out)[0] == "NOERROR" and section(out)[0][-1] == r1_v4, out
    # The IPv6 service address answers too (the lab hosts have IPv6 on weft0).
    assert dig(a, f"r1.{DOMAIN}", "+short", server=SERVICE_V6).split() == [r1_v4]
    dns = a.status()["dns"]
    assert dns["queries"] >= 30 and dns["local_answers"] >= 30 and dns["servfail"] == 0
    assert sorted(dns["listening"]) == sorted([f"{SERVICE_V4}:53", f"[{SERVICE_V6}]:53"])


def test_forwarding_to_the_base_resolver_and_truncation(net: Net) -> None:
    a = net.a
    a_ip = a.host.ip
    before = net.updns.queries("www.example.test")
    assert dig(a, "www.example.test", "+short").split() == [FORWARDED_IP]
    assert net.updns.queries("www.example.test") == before + 1
    assert f"www.example.test from {a_ip}" in net.updns.log.read_text()
    # D1b: a 3000-byte TXT. Plain UDP without EDNS gets TC; TCP gets all of it.
    out = dig(a, "+noedns", "+ignore", "big.example.test", "TXT", "+noall", "+comments")
    assert "tc" in header(out)[1], out
    out = dig(a, "+tcp", "big.example.test", "TXT", "+short")
    assert all(s in out for s in BIG_TXT), out
    # Tailnet names never reach the upstream.
    dig(a, f"nosuch.{DOMAIN}")
    assert net.updns.queries(f"nosuch.{DOMAIN}") == 0
    dns = a.status()["dns"]
    assert dns["forwarded"] >= 3 and dns["truncated"] >= 1 and dns["upstream_timeouts"] == 0
    assert dns["base_resolvers"] == [net.updns.host.ip]


# D12, measured on the 2-core CI machine shared with other jobs (dnsperf 2.10, weftd on
# uvloop): 1,000 q/s for 10 s, 80% local names and 20% forwarded to dnsmasq: 10,000
# completed, 0 lost, p50 0.45 ms, p99 4.9 ms, max 21.7 ms, average 0.66 ms.
LOAD_QPS = 1000
LOAD_S = 10


@pytest.mark.exclusive  # a 25 ms p99 under 1,000 queries/s: runs alone
def test_load_1000_qps_no_timeouts_p99_within_25_ms(net: Net) -> None:
    a = net.a
    a_v4 = a.ip4()
    local = [f"a.{DOMAIN} A", f"a.{DOMAIN} AAAA", "a A", f"{_rev(a_v4)} PTR",
             f"nosuch.{DOMAIN} A"] * 2 + [f"a.{DOMAIN} MX"] * 2  # fmt: skip
    forwarded = ["www.example.test A", "mail.example.test A", "other.example.test A"]
    lines = local * 1 + forwarded  # 12 local : 3 forwarded = 80% : 20%
    data = a.host.workdir / "queries.txt"
    data.write_text("\n".join(lines) + "\n")
    before = a.status()["dns"]
    r = a.host.run(["dnsperf", "-s", SERVICE_V4, "-d", str(data), "-l", str(LOAD_S),
                    "-Q", str(LOAD_QPS), "-c", "4", "-t", "2", "-v"],
                   timeout=LOAD_S + 30)  # fmt: skip
    latencies = sorted(float(m) for m in re.findall(r"^> \w+ .* ([\d.]+)$", r.stdout, re.M))
    lost = re.search(r"Queries lost:\s+(\d+)", r.stdout)
    completed = re.search(r"Queries completed:\s+(\d+)", r.stdout)
    summary = r.stdout[r.stdout.find("Statistics:") :]
    assert lost and completed and latencies, r.stdout[-3000:]
    p50 = latencies[len(latencies) // 2] * 1000
    p99 = latencies[int(len(latencies) * 0.99)] * 1000
    print(f"dnsperf: {completed.group(1)} completed, {lost.group(1)} lost, p50 {p50:.2f} ms,"
          f" p99 {p99:.2f} ms, max {latencies[-1] * 1000:.2f} ms\n{summary}")  # fmt: skip
    assert int(lost.group(1)) == 0, summary
    assert int(completed.group(1)) >= LOAD_QPS * LOAD_S * 0.95, summary
    assert p99 <= 25.0, f"p99 {p99:.2f} ms\n{summary}"
    after = a.status()["dns"]
    assert after["upstream_timeouts"] == before["upstream_timeouts"]
    assert after["servfail"] == before["servfail"]
    assert after["forwarded"] - before["forwarded"] >= 0.15 * LOAD_QPS * LOAD_S


def _rev(ip: str) -> str:
    return ".".join(reversed(ip.split("."))) + ".in-addr.arpa"


def test_a_rename_and_a_new_node_resolve_within_2_s(net: Net) -> None:
    a, control = net.a, net.control
    rows = control.admin_json("nodes", "list")
    rid = next(r["id"] for r in rows if (r.get("given_name") or r.get("name")) == "r1")
    r1_v4 = net.r1.ip4()
    control.admin("nodes", "rename", str(rid), "gw1")
    t0 = time.monotonic()
    poll_until(lambda: dig(a, f"gw1.{DOMAIN}", "+short").split() == [r1_v4],
               timeout_s=2, interval_s=0.05, what="gw1 to resolve")  # fmt: skip
    renamed_s = time.monotonic() - t0
    out = dig(a, f"r1.{DOMAIN}", "+noall", "+comments")
    assert header(out)[0] == "NXDOMAIN", out
    print(f"rename resolves {renamed_s:.2f} s after the admin command returned")
    c_host = net.lab.host("c", net.inet)
    c = start_node(net.tmp, c_host, "c")
    c.weft("up", "--login-server", control.url, "--auth-key", net.key, "--hostname", "c")
    t0 = time.monotonic()
    c_v4 = c.ip4()
    poll_until(lambda: dig(a, f"c.{DOMAIN}", "+short").split() == [c_v4],
               timeout_s=2, interval_s=0.05, what="c to resolve")  # fmt: skip
    print(f"a new node resolves {time.monotonic() - t0:.2f} s after its `weft up` returned")


def test_a_lan_neighbour_gets_no_answer(net: Net) -> None:
    a, nb = net.a, net.nb
    before = a.status()["dns"]["refused_nonlocal"]
    nb.run(["ip", "route", "add", SERVICE_V4, "via", a.host.ip])
    try:
        r = nb.run(["dig", f"@{SERVICE_V4}", "+time=2", "+tries=1", f"r1.{DOMAIN}"], check=False)
        assert "connection timed out" in r.stdout or "no servers" in r.stdout, r.stdout
        r = nb.run(["dig", f"@{SERVICE_V4}", "+tcp", "+time=2", "+tries=1", f"a.{DOMAIN}"],
                   check=False)  # fmt: skip
        assert "ANSWER SECTION" not in r.stdout, r.stdout
    finally:
        nb.run(["ip", "route", "del", SERVICE_V4, "via", a.host.ip])
    poll_until(lambda: a.status()["dns"]["refused_nonlocal"] >= before + 2,
               timeout_s=2, what="refused_nonlocal to count both")  # fmt: skip
    # D11(c): nothing listens on port 53 but the service addresses.
    listeners = a.host.run(["ss", "-H", "-lun", "sport", "=", ":53"]).stdout.split()
    addrs = sorted(w for w in listeners if w.endswith(":53"))
    assert addrs == sorted([f"{SERVICE_V4}:53", f"[{SERVICE_V6}]:53"]), listeners


# -- the server's DNS document (D3, D5, D6, D7) -------------------------------------------


def set_dns(net: Net, document: dict[str, object]) -> None:
    path = net.tmp / "dns.json"
    path.write_text(json.dumps(document))
    net.control.admin("dns", "set", str(path))


def name_of(net: Net, node: Node) -> str:
    """The node's name in the tailnet now (an earlier test may have renamed it)."""
    ip = node.ip4()
    rows = net.control.admin_json("nodes", "list")
    return str(next(r["given_name"] for r in rows if r["ipv4"] == ip))


def resolves(node: Node, name: str, want: list[str], timeout_s: float = 2.0) -> float:
    """Seconds until ``name`` answers ``want`` (A, +short) at ``node``'s resolver."""
    t0 = time.monotonic()
    poll_until(lambda: dig(node, name, "+short").split() == want, timeout_s=timeout_s,
               interval_s=0.05, what=f"{name} -> {want}")  # fmt: skip
    return time.monotonic() - t0


def test_a_name_the_policy_hides_is_nxdomain_within_2_s(net: Net) -> None:
    a, r1 = net.a, net.r1
    r1_name, r1_v4 = f"{name_of(net, r1)}.{DOMAIN}", r1.ip4()
    policy = net.tmp / "deny-all.json"
    policy.write_text('{"acls": []}')
    allow = net.tmp / "allow-all.json"
    allow.write_text('{"acls": [{"action": "accept", "src": ["*"], "dst": ["*:*"]}]}')
    net.control.admin("policy", "set", str(policy))
    try:
        t0 = time.monotonic()
        poll_until(lambda: header(dig(a, r1_name, "+noall", "+comments"))[0] == "NXDOMAIN",
                   timeout_s=2, interval_s=0.05, what="r1 hidden")  # fmt: skip
        hidden_s = time.monotonic() - t0
        assert header(dig(a, "-x", r1_v4, "+noall", "+comments"))[0] == "NXDOMAIN"
        print(f"a name the policy hides is NXDOMAIN {hidden_s:.2f} s after `policy set`")
    finally:
        net.control.admin("policy", "set", str(allow))
    resolves(a, r1_name, [r1_v4])


def test_split_dns_goes_only_to_its_servers(net: Net) -> None:
    a = net.a
    corp = start_dnsmasq(net.lab.host("corpdns", net.inet), ["--address=/corp.test/198.18.0.77"])
    set_dns(net, {"nameservers": {"split": {"corp.test": [corp.host.ip]}}})
    try:
        took = resolves(a, "db.corp.test", ["198.18.0.77"])
        for i in range(25):  # 50 mixed queries
            assert dig(a, f"h{i}.corp.test", "+short").split() == ["198.18.0.77"]
            assert dig(a, f"w{i}.example.test", "+short").split() == [FORWARDED_IP]
        assert sum(net.updns.queries(f"h{i}.corp.test") for i in range(25)) == 0
        assert net.updns.queries("db.corp.test") == 0
        assert sum(corp.queries(f"w{i}.example.test") for i in range(25)) == 0
        assert sum(corp.queries(f"h{i}.corp.test") for i in range(25)) == 25
        print(f"split DNS in effect {took:.2f} s after `dns set`")
    finally:
        set_dns(net, {})


def test_override_local_dns_sends_everything_to_the_global_servers(net: Net) -> None:
    a = net.a
    glob = start_dnsmasq(net.lab.host("globdns", net.inet), ["--address=/example.test/198.18.0.88"])
    set_dns(net, {"override_local_dns": True, "nameservers": {"global": [glob.host.ip]}})
    try:
        resolves(a, "first.example.test", ["198.18.0.88"])
        before = net.updns.queries("www.example.test")
        for _ in range(100):
            assert dig(a, "www.example.test", "+short").split() == ["198.18.0.88"]
        assert glob.queries("www.example.test") == 100
        assert net.updns.queries("www.example.test") == before
        # tailnet names are still answered by the node itself
        assert dig(a, f"{name_of(net, net.r1)}.{DOMAIN}", "+short").split() == [net.r1.ip4()]
    finally:
        set_dns(net, {})
    resolves(a, "back.example.test", [FORWARDED_IP])


def test_extra_records_are_answered_locally_and_follow_edits(net: Net) -> None:
    a = net.a
    records = [{"name": f"grafana.{DOMAIN}", "type": "A", "value": "100.64.0.3"},
               {"name": "printer.home.test", "type": "A", "value": "198.18.1.9"}]  # fmt: skip
    set_dns(net, {"extra_records": records})
    try:
        resolves(a, f"grafana.{DOMAIN}", ["100.64.0.3"])
        resolves(a, "printer.home.test", ["198.18.1.9"])
        out = dig(a, "printer.home.test", "+noall", "+comments")
        assert header(out) == ("NOERROR", {"qr", "aa", "rd", "ra"}), out
        assert net.updns.queries("printer.home.test") == 0
        records[1]["value"] = "198.18.1.10"
        set_dns(net, {"extra_records": records})
        took = resolves(a, "printer.home.test", ["198.18.1.10"])
        print(f"an edited extra record answers {took:.2f} s after `dns set`")
    finally:
        set_dns(net, {})
