"""Telling the operating system to use the node's resolver: the I/O shell of
``weftnet.dns.osconfig`` (docs/dns.md, "OS configuration").

Two ways, chosen once at start (``osconfig.detect_mode``, ``weftd --dns-mode``):

* **direct**: weftd owns /etc/resolv.conf (``weftd --resolv-conf PATH`` for tests). The
  file it finds is copied to ``STATE_DIR/resolv.conf.pre-weft`` (0600) with
  ``resolv.conf.pre-weft.json`` (the sha256 of what weftd wrote, the file's mode, or the
  symlink it was); weftd's file goes in by rename, or in place when rename fails with
  EBUSY/EXDEV (a bind-mounted resolv.conf: containers, `ip netns exec`). Restored byte
  for byte on down, logout, expiry and exit, and at start after a crash (``recover``,
  before the control client's first request): only while the file is still the one
  weftd wrote; if another program replaced it, theirs stays and the backup goes. The
  supervised task ``dns`` watches the file (inotify, and a 1 s stat poll) and re-applies
  when someone rewrites it, at most TRAMPLE_LIMIT times in TRAMPLE_WINDOW_S; then it
  leaves DNS to them with a health warning.
* **resolved**: systemd-resolved's per-link settings of the TUN device through
  ``resolvectl`` (servers, search and routing domains, default route, LLMNR/mDNS/DNSSEC
  off), reverted with ``resolvectl revert``. resolv.conf is never touched.
* **off**: nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import dataclasses
import errno
import hashlib
import json
import logging
import os
import shutil
import struct
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from weftnet import tailcfg
from weftnet.dns import osconfig
from weftnet.dns.osconfig import BaseConfig, Inputs, NodeDNSState, OSConfig

log = logging.getLogger("weftd.dns")

DEFAULT_RESOLV_CONF = "/etc/resolv.conf"
RESOLVED_UPLINKS = "/run/systemd/resolve/resolv.conf"  # resolved's own list of servers
NSSWITCH = "/etc/nsswitch.conf"
BACKUP = "resolv.conf.pre-weft"
BACKUP_META = "resolv.conf.pre-weft.json"
POLL_S = 1.0  # the stat poll behind inotify
RESOLVED_POLL_S = 1.0  # how often resolved mode asks whether resolved was restarted
COMMAND_TIMEOUT_S = 2.0  # one resolvectl or busctl call
FOREIGN_LOG_BYTES = 1024  # how much of a trampling program's file to log


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# -- the environment ----------------------------------------------------------------


def _read_text(path: str) -> str | None:
    try:
        return Path(path).read_text(errors="replace")
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError:
        return None


def resolved_up(run: Callable[..., Any] = subprocess.run) -> bool:
    """Whether org.freedesktop.resolve1 has an owner on the system bus."""
    if shutil.which("busctl") is None:
        return False
    argv = ["busctl", "--system", "--timeout=1", "call", "org.freedesktop.DBus",
            "/org/freedesktop/DBus", "org.freedesktop.DBus", "NameHasOwner", "s",
            "org.freedesktop.resolve1"]  # fmt: skip
    try:
        r = run(argv, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return bool(r.returncode == 0 and r.stdout.strip() == "b true")


def resolved_owner(run: Callable[..., Any] = subprocess.run) -> str | None:
    """The unique bus name of systemd-resolved (a new one after it restarts), or None."""
    argv = ["busctl", "--system", "--timeout=1", "call", "org.freedesktop.DBus",
            "/org/freedesktop/DBus", "org.freedesktop.DBus", "GetNameOwner", "s",
            "org.freedesktop.resolve1"]  # fmt: skip
    try:
        r = run(argv, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired):
        return None
    out = r.stdout.strip()
    return out.split(" ", 1)[1].strip('"') if r.returncode == 0 and out.startswith("s ") else None


def environment(resolv_conf: str) -> osconfig.Environment:
    hosts = ""
    for line in (_read_text(NSSWITCH) or "").splitlines():
        if line.strip().startswith("hosts:"):
            hosts = line.split(":", 1)[1]
    return osconfig.Environment(_read_text(resolv_conf), resolved_up(), hosts)


# -- direct: /etc/resolv.conf ---------------------------------------------------------


class ResolvConf:
    """One resolv.conf file, its backup in the state dir, and the writes."""

    def __init__(self, path: str, state_dir: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.backup = Path(state_dir) / BACKUP
        self.meta_path = Path(state_dir) / BACKUP_META
        self.rename_broken = False  # rename onto it failed once: write in place from then on
        self.written: bytes | None = None  # what we last wrote

    def read(self) -> bytes | None:
        try:
            return self.path.read_bytes()
        except FileNotFoundError:
            return None

    def meta(self) -> dict[str, Any] | None:
        try:
            data = json.loads(self.meta_path.read_text())
        except (FileNotFoundError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def is_ours(self, current: bytes | None) -> bool:
        meta = self.meta()
        return bool(meta and current is not None and sha256(current) == meta.get("sha256_of_ours"))

    def base(self) -> BaseConfig:
        """The OS's own settings: the backup while ours is in place, else the file."""
        current = self.read()
        if self.meta() is not None and self.backup.exists():
            return osconfig.parse_resolv_conf(self.backup.read_text(errors="replace"))
        if current is None or osconfig.is_ours(current.decode(errors="replace")):
            return BaseConfig()
        return osconfig.parse_resolv_conf(current.decode(errors="replace"))

    def apply(self, text: str) -> bool:
        """Put ``text`` in place, backing up a foreign file first; False if unchanged."""
        data = text.encode()
        current = self.read()
        if current == data and self.is_ours(current):
            self.written = data
            return False
        if not self.is_ours(current):
            self._save_backup(current)
        meta = self.meta() or {}
        meta["sha256_of_ours"] = sha256(data)
        self._write_meta(meta)
        self._put(data, 0o644)
        self.written = data
        return True

    def restore(self, why: str) -> str:
        """Put the backup back if the file is still ours; "restored", "left theirs" or
        "nothing" (no backup)."""
        meta = self.meta()
        self.written = None
        if meta is None:
            return "nothing"
        current = self.read()
        outcome = "left theirs"
        if self.is_ours(current):
            if meta.get("symlink"):
                self._put_symlink(str(meta["symlink"]))
            elif meta.get("existed", True):
                self._put(self.backup.read_bytes(), int(meta.get("mode", 0o644)))
            else:
                self.path.unlink(missing_ok=True)
            outcome = "restored"
            log.info("dns: restored %s (%s)", self.path, why)
        else:
            log.warning("dns: %s was replaced by another program; leaving it (%s)", self.path, why)
        self.backup.unlink(missing_ok=True)
        self.meta_path.unlink(missing_ok=True)
        return outcome

    def recover(self) -> str:
        """At start: a file of ours left by a crash goes back to what was there before."""
        if self.meta() is None:
            return "nothing"
        return self.restore("left behind by a weftd that did not stop cleanly")

    # -- writes ------------------------------------------------------------------------

    def _save_backup(self, current: bytes | None) -> None:
        meta: dict[str, Any] = {"path": str(self.path), "existed": current is not None}
        if self.path.is_symlink():
            meta["symlink"] = os.readlink(self.path)
        if current is not None:
            meta["mode"] = self.path.stat().st_mode & 0o7777
        fd = os.open(self.backup, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(current or b"")
            f.flush()
            os.fsync(f.fileno())
        os.chmod(self.backup, 0o600)
        self._write_meta(meta)

    def _write_meta(self, meta: dict[str, Any]) -> None:
        tmp = self.meta_path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(meta, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.meta_path)

    def _put(self, data: bytes, mode: int) -> None:
        if not self.rename_broken:
            tmp = self.path.with_name(f".{self.path.name}.weftd-{os.getpid()}")
            try:
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
                os.chmod(tmp, mode)
                os.replace(tmp, self.path)
                return
            except OSError as e:
                with contextlib.suppress(OSError):
                    tmp.unlink()
                if e.errno not in (errno.EBUSY, errno.EXDEV):
                    raise
                self.rename_broken = True
                log.info("dns: cannot rename onto %s (%s): writing it in place from now on",
                         self.path, os.strerror(e.errno))  # fmt: skip
        with open(self.path, "r+b" if self.path.exists() else "wb") as f:
            f.write(data)
            f.truncate()
            f.flush()
            os.fsync(f.fileno())

    def _put_symlink(self, target: str) -> None:
        tmp = self.path.with_name(f".{self.path.name}.weftd-{os.getpid()}")
        tmp.unlink(missing_ok=True)
        os.symlink(target, tmp)
        os.replace(tmp, self.path)


# -- inotify (no stdlib binding: ctypes) --------------------------------------------------

IN_MODIFY = 0x002
IN_ATTRIB = 0x004
IN_CLOSE_WRITE = 0x008
IN_MOVED_TO = 0x080
IN_CREATE = 0x100
IN_DELETE = 0x200
IN_DELETE_SELF = 0x400
IN_MOVE_SELF = 0x800
IN_NONBLOCK = 0o4000
IN_CLOEXEC = 0o2000000
_EVENT = struct.Struct("iIII")  # struct inotify_event without its name


class Inotify:
    """Wakes a waiter when the file is written or replaced (best effort: the caller
    also polls)."""

    FILE_MASK = IN_CLOSE_WRITE | IN_ATTRIB | IN_DELETE_SELF | IN_MOVE_SELF
    DIR_MASK = IN_CLOSE_WRITE | IN_MOVED_TO | IN_CREATE | IN_DELETE

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd = -1
        try:
            self._libc = ctypes.CDLL(None, use_errno=True)
            self.fd = self._libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        except (OSError, AttributeError):
            self.fd = -1
        if self.fd >= 0:
            self._add(str(path.parent), self.DIR_MASK)
        self.rewatch()

    def rewatch(self) -> None:
        """Watch the file's current inode (again: a rename replaces it)."""
        if self.fd >= 0:
            self._add(str(self.path), self.FILE_MASK)

    def _add(self, path: str, mask: int) -> None:
        self._libc.inotify_add_watch(self.fd, path.encode(), mask)

    def drain(self) -> bool:
        """Read pending events; True if one may concern the file."""
        relevant = False
        while True:
            try:
                buf = os.read(self.fd, 65536)
            except (BlockingIOError, OSError):
                return relevant
            off = 0
            while off + _EVENT.size <= len(buf):
                _wd, _mask, _cookie, length = _EVENT.unpack_from(buf, off)
                name = buf[off + _EVENT.size : off + _EVENT.size + length].rstrip(b"\0")
                if not name or name == self.path.name.encode():
                    relevant = True
                off += _EVENT.size + length

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


# -- resolved: systemd-resolved per link ------------------------------------------------


class Resolved:
    """The TUN device's DNS settings in systemd-resolved, through resolvectl."""

    def __init__(self, ifname: str, run: Callable[..., Any] = subprocess.run) -> None:
        self.ifname = ifname
        self.run = run

    def _ctl(self, *args: str) -> None:
        argv = ["resolvectl", *args]
        try:
            r = self.run(argv, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise OSError(f"{' '.join(argv[:3])}: {e}") from None
        if r.returncode != 0:
            raise OSError(f"{' '.join(argv[:3])}: {(r.stderr or r.stdout).strip()}")

    def apply(self, cfg: OSConfig) -> None:
        ifn = self.ifname
        self._ctl("dns", ifn, *cfg.nameservers)
        # A search domain routes too: resolved keeps one entry per name (as Tailscale).
        routing = [f"~{m}" for m in cfg.match_domains if m not in cfg.search_domains]
        domains = [*cfg.search_domains, *routing]
        try:
            self._ctl("domain", ifn, *domains)
        except OSError as e:
            if "too long" not in str(e) and "LimitsExceeded" not in str(e):
                raise
            log.warning("dns: resolved refused %d domains (%s): without *.arpa", len(domains), e)
            self._ctl("domain", ifn, *[d for d in domains if not d.endswith(".arpa")])
        self._ctl("default-route", ifn, "yes" if cfg.default_route else "no")
        for setting in ("llmnr", "mdns", "dnssec", "dnsovertls"):
            self._ctl(setting, ifn, "no")
        with contextlib.suppress(OSError):
            self._ctl("flush-caches")

    def revert(self) -> None:
        try:
            self._ctl("revert", self.ifname)
        except OSError:
            # Never leave the link as a default route (Tailscale issue 18441).
            self._ctl("dns", self.ifname)
            self._ctl("domain", self.ifname)
            self._ctl("default-route", self.ifname, "no")

    @staticmethod
    def base() -> BaseConfig:
        return osconfig.parse_resolv_conf(_read_text(RESOLVED_UPLINKS) or "")


# -- the manager the daemon holds -------------------------------------------------------


class OSDNS:
    """OS DNS for one weftd: ``recover`` at start, ``update`` on every map and prefs
    change, ``deconfigure`` on down/logout/expiry/exit, ``watch`` as a supervised task."""

    def __init__(
        self,
        state_dir: str | os.PathLike[str],
        ifname: str,
        mode: str = "auto",
        resolv_conf: str = DEFAULT_RESOLV_CONF,
        on_base: Callable[[list[str]], None] | None = None,
        env: osconfig.Environment | None = None,
        run: Callable[..., Any] = subprocess.run,
    ) -> None:
        self.file = ResolvConf(resolv_conf, state_dir)
        self.resolved = Resolved(ifname, run)
        self.mode, self.why = osconfig.detect_mode(env or environment(resolv_conf), mode)
        log.info("dns: mode=%s (%s)", self.mode, self.why)
        self.on_base = on_base
        self.applied: OSConfig | None = None  # what the OS has from us now
        self.server: tailcfg.DNSConfig | None = None
        self.limit = osconfig.TrampleLimit()
        self.errors: list[str] = []
        self._inputs: Inputs | None = None
        # The OS's own nameservers (quad-100's fallback), as last told to ``on_base``.
        self.base_resolvers: list[str] | None = None

    # -- the daemon's verbs -------------------------------------------------------------

    def recover(self) -> None:
        """Before the control client's first request: undo a crashed weftd's file."""
        outcome = self.file.recover()
        if outcome != "nothing":
            log.info("dns: startup recovery of %s: %s", self.file.path, outcome)

    async def update(
        self, dns: tailcfg.DNSConfig | None, accept_dns: bool, state: NodeDNSState
    ) -> None:
        self.server = dns
        base = self._base()
        self._tell_base(base)
        inputs = Inputs(dns, accept_dns, state, self.mode, base)
        cfg = osconfig.compile_os_config(inputs)
        self._inputs = inputs
        if cfg.empty:
            await self.deconfigure(state.value if accept_dns else "accept_dns off")
            return
        if cfg == self.applied and not self._trampled():
            return
        await self._apply(cfg)

    async def deconfigure(self, why: str) -> None:
        self.limit.reset()
        if self.mode == "resolved":
            if self.applied is not None:
                try:
                    await asyncio.to_thread(self.resolved.revert)
                    log.info("dns: reverted %s in systemd-resolved (%s)", self.resolved.ifname, why)
                except OSError as e:
                    self._error(f"could not revert {self.resolved.ifname} in resolved: {e}")
        else:
            self.file.restore(why)
        self.applied = None

    async def watch(self) -> None:
        """Re-apply resolv.conf when another program rewrites it (direct mode); re-apply
        the link's settings when systemd-resolved restarts (resolved mode)."""
        if self.mode == "resolved":
            await self._watch_resolved()
            return
        if self.mode != "direct":
            return
        loop = asyncio.get_running_loop()
        notify = Inotify(self.file.path)
        woke = asyncio.Event()
        if notify.fd >= 0:
            loop.add_reader(notify.fd, woke.set)
        try:
            while True:
                # (asyncio.timeout, not wait_for: 3.11's wait_for can swallow a cancel)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(POLL_S):
                        await woke.wait()
                woke.clear()
                if notify.fd >= 0:
                    notify.drain()
                    notify.rewatch()
                await self._check_trample()
        finally:
            if notify.fd >= 0:
                loop.remove_reader(notify.fd)
            notify.close()

    async def _watch_resolved(self) -> None:
        # Without a D-Bus library there is no NameOwnerChanged signal: poll the owner.
        owner = await asyncio.to_thread(resolved_owner, self.resolved.run)
        while True:
            await asyncio.sleep(RESOLVED_POLL_S)
            now = await asyncio.to_thread(resolved_owner, self.resolved.run)
            if now != owner and now is not None and self.applied is not None:
                log.info("dns: systemd-resolved restarted (%s -> %s): applying again", owner, now)
                await self._apply(self.applied)
            owner = now

    # -- what `weft dns status` and `weft status` show ---------------------------------

    def health(self) -> list[str]:
        out = list(self.errors)
        if self.limit.gave_up:
            out.append(
                f"{self.file.path} rewritten by another program {self.limit.limit} times in "
                f"{self.limit.window_s:g} s; DNS left to it"
            )
        return out

    def status(self) -> dict[str, Any]:
        applied = self.applied or OSConfig()
        return {
            "mode": self.mode,
            "why": self.why,
            "accept_dns": self._inputs.accept_dns if self._inputs else None,
            "configured": self.applied is not None,
            "os": {
                "nameservers": list(applied.nameservers),
                "search_domains": list(applied.search_domains),
                "match_domains": list(applied.match_domains),
                "default_route": applied.default_route,
            },
            "resolv_conf": str(self.file.path) if self.mode == "direct" else None,
            "rename_broken": self.file.rename_broken,
            "backup": self.file.meta() is not None,
            "base_resolvers": self.base_resolvers or [],
            "reapplied": self.limit.total,
            "server": None if self.server is None else self.server.model_dump(),
            "health": self.health(),
        }

    # -- inside -------------------------------------------------------------------------

    def _base(self) -> BaseConfig:
        if self.mode == "resolved":
            return self.resolved.base()
        return self.file.base()

    def _tell_base(self, base: BaseConfig) -> None:
        servers = osconfig.base_resolvers(base)
        if servers != self.base_resolvers:
            self.base_resolvers = servers
            if self.on_base is not None:
                self.on_base(servers)

    async def _apply(self, cfg: OSConfig) -> None:
        for w in cfg.warnings:
            log.warning("dns: %s", w)
        try:
            if self.mode == "resolved":
                await asyncio.to_thread(self.resolved.apply, cfg)
                log.info("dns: %s in systemd-resolved: servers %s, domains %s, default route %s",
                         self.resolved.ifname, " ".join(cfg.nameservers),
                         len(cfg.search_domains) + len(cfg.match_domains),
                         cfg.default_route)  # fmt: skip
            elif self.mode == "direct" and self.file.apply(osconfig.render_resolv_conf(cfg)):
                log.info("dns: wrote %s: nameserver %s, search %s", self.file.path,
                         " ".join(cfg.nameservers), " ".join(cfg.search_domains))  # fmt: skip
        except OSError as e:
            self._error(f"could not configure DNS ({self.mode}): {e}")
            raise
        self.errors.clear()
        self.applied = cfg

    def _trampled(self) -> bool:
        return self.mode == "direct" and self.file.written != self.file.read()

    async def _check_trample(self) -> None:
        if self.applied is None or self.file.written is None or self.limit.gave_up:
            return
        current = self.file.read()
        if current == self.file.written:
            return
        if not self.limit.allow(time.monotonic()):
            text = (current or b"")[:FOREIGN_LOG_BYTES].decode(errors="replace")
            log.warning("dns: %s", self.health()[-1])
            log.warning("dns: the other program's %s:\n%s", self.file.path, text)
            return
        log.info("dns: %s was rewritten by another program: applying ours again", self.file.path)
        assert self._inputs is not None
        # The foreign file becomes the backup (ResolvConf.apply): its servers the base.
        base = osconfig.parse_resolv_conf((current or b"").decode(errors="replace"))
        self._tell_base(base)
        self._inputs = dataclasses.replace(self._inputs, base=base)
        cfg = osconfig.compile_os_config(self._inputs)
        if not cfg.empty:
            await self._apply(cfg)

    def _error(self, text: str) -> None:
        log.warning("dns: %s", text)
        if text not in self.errors:
            self.errors.append(text)
