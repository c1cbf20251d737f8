"""weftnet.node.osdns: resolv.conf backed up, written and given back byte for byte;
systemd-resolved through resolvectl; the daemon's verbs (up, down, logout, expiry, a
crash, --accept-dns=false, a program that keeps rewriting the file)."""

from __future__ import annotations

import asyncio
import errno
import hashlib
import os
import time
from pathlib import Path
from typing import Any

import pytest

from tests.node.support import SERVER, FakeServer, make_daemon, node
from weftnet import tailcfg
from weftnet.dns.osconfig import MARKER, Environment, NodeDNSState
from weftnet.node import osdns
from weftnet.node.daemon import NodeDaemon
from weftnet.node.osdns import OSDNS, ResolvConf

ORIGINAL = b"# the host's own\nnameserver 198.18.1.53\nsearch lan.test\n"
MAGIC = tailcfg.DNSConfig(magic_dns=True, domain="weft.internal", search_domains=["weft.internal"])
ME = node(1, "me", ["100.64.0.1"])
UP = {"login_server": SERVER, "auth_key": "weftkey-test", "hostname": "me"}


def sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


# -- ResolvConf ------------------------------------------------------------------------


def test_apply_backs_up_then_restore_gives_back_every_byte_and_the_mode(tmp_path: Path) -> None:
    path = tmp_path / "resolv.conf"
    path.write_bytes(ORIGINAL)
    os.chmod(path, 0o640)
    rc = ResolvConf(str(path), tmp_path / "state")
    (tmp_path / "state").mkdir()
    assert rc.apply(MARKER + "\nnameserver 100.100.100.100\n")
    assert path.read_text().startswith(MARKER)
    backup = tmp_path / "state" / osdns.BACKUP
    assert backup.read_bytes() == ORIGINAL and backup.stat().st_mode & 0o777 == 0o600
    assert not rc.apply(MARKER + "\nnameserver 100.100.100.100\n")  # unchanged: no write
    assert rc.base().nameservers == ("198.18.1.53",)  # the backup's, not ours
    assert rc.restore("test") == "restored"
    assert path.read_bytes() == ORIGINAL and path.stat().st_mode & 0o777 == 0o640
    assert not backup.exists() and rc.meta() is None
    assert rc.restore("again") == "nothing"


def test_a_replaced_file_stays_and_the_backup_goes(tmp_path: Path) -> None:
    path = tmp_path / "resolv.conf"
    path.write_bytes(ORIGINAL)
    rc = ResolvConf(str(path), tmp_path)
    rc.apply(MARKER + "\nnameserver 100.100.100.100\n")
    path.write_bytes(b"nameserver 198.18.9.9\n")  # DHCP wrote its own
    assert rc.restore("test") == "left theirs"
    assert path.read_bytes() == b"nameserver 198.18.9.9\n" and rc.meta() is None


def test_a_missing_file_is_missing_again_and_a_symlink_a_symlink(tmp_path: Path) -> None:
    path = tmp_path / "resolv.conf"
    rc = ResolvConf(str(path), tmp_path)
    rc.apply(MARKER + "\n")
    assert path.exists()
    rc.restore("test")
    assert not path.exists()
    (tmp_path / "stub").write_bytes(ORIGINAL)
    path.symlink_to("stub")
    rc.apply(MARKER + "\n")
    assert not path.is_symlink()
    rc.restore("test")
    assert path.is_symlink() and os.readlink(path) == "stub" and path.read_bytes() == ORIGINAL


def test_rename_refused_with_ebusy_writes_in_place_logged_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "resolv.conf"
    path.write_bytes(ORIGINAL)
    inode = path.stat().st_ino
    real_replace = os.replace

    def replace(src: Any, dst: Any) -> None:
        if Path(dst) == path:
            raise OSError(errno.EBUSY, os.strerror(errno.EBUSY))
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    rc = ResolvConf(str(path), tmp_path)
    with caplog.at_level("INFO", logger="weftd.dns"):
        rc.apply(MARKER + "\nnameserver 100.100.100.100\n")
        rc.apply(MARKER + "\nnameserver 100.100.100.100\nsearch x.test\n")
        rc.restore("test")
    assert rc.rename_broken and path.stat().st_ino == inode  # the same (bind-mounted) file
    assert path.read_bytes() == ORIGINAL
    assert sum("writing it in place" in r.message for r in caplog.records) == 1
    assert not list(tmp_path.glob(".resolv.conf.weftd-*"))  # no temporary left behind


def test_recover_after_a_crash(tmp_path: Path) -> None:
    path = tmp_path / "resolv.conf"
    path.write_bytes(ORIGINAL)
    ResolvConf(str(path), tmp_path).apply(MARKER + "\nnameserver 100.100.100.100\n")
    # kill -9: a new process finds our file and the backup
    assert ResolvConf(str(path), tmp_path).recover() == "restored"
    assert path.read_bytes() == ORIGINAL
    assert ResolvConf(str(path), tmp_path).recover() == "nothing"


# -- resolved, through a fake resolvectl ---------------------------------------------------


class FakeCtl:
    def __init__(self, fail: str = "") -> None:
        self.calls: list[list[str]] = []
        self.fail = fail

    def __call__(self, argv: list[str], **_: Any) -> Any:
        self.calls.append(argv)
        bad = self.fail and self.fail in argv
        return type("R", (), {"returncode": 1 if bad else 0, "stdout": "", "stderr": "nope"})


def test_resolved_mode_configures_the_link_and_reverts_it(tmp_path: Path) -> None:
    ctl = FakeCtl()
    env = Environment("# systemd-resolved\nnameserver 127.0.0.53\n", True, "files resolve dns")
    seen: list[list[str]] = []
    m = OSDNS(tmp_path, "weft0", env=env, run=ctl, on_base=seen.append)
    assert m.mode == "resolved"

    async def go() -> None:
        await m.update(MAGIC, True, NodeDNSState.up)
        cmds = [c[1] for c in ctl.calls]
        assert cmds == ["dns", "domain", "default-route", "llmnr", "mdns", "dnssec",
                        "dnsovertls", "flush-caches"]  # fmt: skip
        assert ctl.calls[0] == ["resolvectl", "dns", "weft0", "100.100.100.100",
                                "fd7a:115c:a1e0::53"]  # fmt: skip
        domains = ctl.calls[1][3:]
        assert domains[:2] == ["weft.internal", "~64.100.in-addr.arpa"] and len(domains) == 66
        assert "~64.100.in-addr.arpa" in domains and ctl.calls[2][3] == "no"
        ctl.calls.clear()
        await m.update(MAGIC, True, NodeDNSState.up)
        assert ctl.calls == []  # nothing changed
        await m.update(MAGIC, True, NodeDNSState.down)
        assert ctl.calls == [["resolvectl", "revert", "weft0"]]
        assert m.status()["configured"] is False

    asyncio.run(go())


def test_resolved_revert_failing_still_turns_the_default_route_off(tmp_path: Path) -> None:
    ctl = FakeCtl(fail="revert")
    env = Environment("# systemd-resolved\nnameserver 127.0.0.53\n", True, "resolve")
    m = OSDNS(tmp_path, "weft0", env=env, run=ctl)

    async def go() -> None:
        await m.update(MAGIC, True, NodeDNSState.up)
        ctl.calls.clear()
        await m.deconfigure("test")
        assert [c[1] for c in ctl.calls] == ["revert", "dns", "domain", "default-route"]
        assert ctl.calls[-1][-1] == "no"

    asyncio.run(go())


# -- the daemon ----------------------------------------------------------------------------


class DNSServer(FakeServer):
    dns: tailcfg.DNSConfig | None = MAGIC

    def full(self) -> tailcfg.MapResponse:
        return tailcfg.MapResponse(node=self.me, peers=self.peers, packet_filter=[],
                                   dns_config=self.dns)  # fmt: skip


def run(tmp_path: Path, server: FakeServer, body: Any) -> Any:
    async def scenario() -> Any:
        d = make_daemon(tmp_path, server)
        await d.start()
        try:
            return await body(d)
        finally:
            await d.close()

    return asyncio.run(scenario())


async def poll(what: Any, timeout_s: float = 5.0) -> float:
    t0 = time.monotonic()
    while not what():
        assert time.monotonic() - t0 < timeout_s, "timed out"
        await asyncio.sleep(0.02)
    return time.monotonic() - t0


def test_daemon_writes_on_up_and_gives_back_on_down_logout_expiry_exit(tmp_path: Path) -> None:
    rc = tmp_path / "resolv.conf"
    rc.write_bytes(ORIGINAL)
    h0 = sha(rc)
    server = DNSServer(ME, [])
    bases: list[list[str]] = []

    async def body(d: NodeDaemon) -> None:
        told = d.dns.set_base_resolvers

        def spy(servers: list[str]) -> None:
            bases.append(servers)
            told(servers)

        d.dns.set_base_resolvers = spy  # type: ignore[method-assign]
        assert (await d.up(UP))["result"] == {"state": "Running"}
        text = rc.read_text()
        assert text.startswith(MARKER) and "nameserver 100.100.100.100\n" in text
        assert "search weft.internal lan.test\n" in text
        assert bases[-1] == ["198.18.1.53"]
        st = (await d_api(d, "dns_status"))["result"]
        assert st["mode"] == "direct" and st["os"]["nameservers"] == ["100.100.100.100"]
        assert st["server"]["domain"] == "weft.internal" and st["backup"]
        await d.down()
        assert sha(rc) == h0
        await d.up(UP)
        assert rc.read_text().startswith(MARKER)
        await d.logout()
        assert sha(rc) == h0
        await d.up(UP)
        assert rc.read_text().startswith(MARKER)
        server.push(tailcfg.MapResponse(node=ME.model_copy(update={"expired": True})))
        await poll(lambda: sha(rc) == h0, 2)
        server.me = ME
        await d.up(UP)
        assert rc.read_text().startswith(MARKER)

    run(tmp_path, server, body)
    assert sha(rc) == h0  # weftd exiting gives it back


async def d_api(d: NodeDaemon, cmd: str) -> Any:
    from weftnet.node.api import NodeApi

    method = getattr(NodeApi(d), f"api_{cmd}")
    return await method({"cmd": cmd})


def test_daemon_recovers_a_crashed_runs_file_at_start(tmp_path: Path) -> None:
    rc = tmp_path / "resolv.conf"
    rc.write_bytes(ORIGINAL)
    (tmp_path / "state").mkdir(mode=0o700)
    ResolvConf(str(rc), tmp_path / "state").apply(MARKER + "\nnameserver 100.100.100.100\n")
    server = DNSServer(ME, [])

    async def body(d: NodeDaemon) -> None:
        assert rc.read_bytes() == ORIGINAL  # before any request to the server
        assert server.registers == []

    run(tmp_path, server, body)


def test_accept_dns_false_touches_nothing(tmp_path: Path) -> None:
    rc = tmp_path / "resolv.conf"
    rc.write_bytes(ORIGINAL)
    before = (sha(rc), rc.stat().st_mtime_ns, rc.stat().st_ino)
    server = DNSServer(ME, [])

    async def body(d: NodeDaemon) -> None:
        assert (await d.up({**UP, "accept_dns": False}))["result"] == {"state": "Running"}
        server.push(tailcfg.MapResponse(dns_config=MAGIC.model_copy(update={"domain": "x.test"})))
        await asyncio.sleep(0.1)
        await d.down()
        await d.up(UP)  # remembered
        assert not d.state.prefs.accept_dns
        assert (sha(rc), rc.stat().st_mtime_ns, rc.stat().st_ino) == before
        await d.up({"accept_dns": True})  # and switched on while running
        assert rc.read_text().startswith(MARKER)
        await d.up({"accept_dns": False})
        assert sha(rc) == before[0]

    run(tmp_path, server, body)


def test_trample_reapplies_then_gives_up_after_10_in_5_s(tmp_path: Path) -> None:
    rc = tmp_path / "resolv.conf"
    rc.write_bytes(ORIGINAL)
    server = DNSServer(ME, [])

    def overwrite(text: bytes) -> None:
        with open(rc, "r+b") as f:
            f.write(text)
            f.truncate()

    async def body(d: NodeDaemon) -> None:
        await d.up(UP)

        def ours() -> bool:
            return rc.read_bytes().startswith(MARKER.encode())

        overwrite(b"nameserver 198.18.7.7\n")
        took = await poll(ours, 1.5)
        print(f"re-applied {took:.3f} s after the overwrite")
        assert d.osdns.file.backup.read_bytes() == b"nameserver 198.18.7.7\n"
        for i in range(12):
            overwrite(f"nameserver 198.18.7.{i}\n".encode())
            await poll(lambda: ours() or d.osdns.limit.gave_up, 1.5)
            if d.osdns.limit.gave_up:
                break
        assert d.osdns.limit.gave_up and i == 9  # the 1st + 9 here = 10 in 5 s
        warning = [h for h in (await d_api(d, "status"))["result"]["health"] if "rewritten" in h]
        assert warning == [f"{rc} rewritten by another program 10 times in 5 s; DNS left to it"]
        await asyncio.sleep(1.2)
        assert rc.read_bytes() == b"nameserver 198.18.7.9\n"  # left to it
        await d.down()
        assert rc.read_bytes() == b"nameserver 198.18.7.9\n"  # theirs stays
        assert not d.osdns.health()

    run(tmp_path, server, body)
