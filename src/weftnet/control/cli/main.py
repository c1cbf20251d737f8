"""weft-control: run the coordination server, and administer it.

    weft-control serve [--listen HOST:PORT] [--data-dir DIR] [--database-url URL]
                       [--tls-cert FILE --tls-key FILE] [--server-url URL]
                       [--region NAME] [--no-relay] [--relay-rate BYTES] [--stun-port N]
                       [--metrics-listen HOST:PORT] [--log-format text|json] ...
    weft-control relay --listen HOST:PORT --control-url URL --api-key KEY --region NAME
                       [--tls-cert FILE --tls-key FILE] [--tls-ca FILE]
                       [--stun-port N] [--data-dir DIR] [--public-url URL]
                       [--mesh REGION --mesh-secret-file FILE [--mesh-peer URL ...]]
                       [--metrics-listen HOST:PORT] [--log-format text|json]
    weft-control users create NAME | list | delete NAME [--force]
    weft-control users link NAME --issuer I --subject S | unlink NAME --issuer I
    weft-control keys create [--user U] [--reusable] [--ephemeral] [--tags tag:a,tag:b]
                             [--expiration 1h] | list [--user U] | revoke PREFIX_OR_ID
    weft-control nodes list [--user U] | delete ID | expire ID | rename ID NAME
                       | register --user U --code CODE
    weft-control nodes attr ID custom:NAME [VALUE | --delete]
    weft-control nodes routes [ID] | approve-routes ID --routes CIDR,...   (docs/routes.md)
    weft-control policy get | set FILE | check FILE
    weft-control dns get | set FILE | check FILE    (docs/control-protocol.md, DNS settings)
    weft-control apikeys create [--expiration 90d] [--scope admin|relay] | list
                        | revoke PREFIX
    weft-control relays list
    weft-control server-key      the key for `weft up --server-key` (--json: with fingerprint)

Admin commands talk to a running server: through ``--data-dir DIR`` (its admin.json,
on the control host) or ``--server URL --api-key KEY`` (or WEFT_CONTROL_URL and
WEFT_CONTROL_API_KEY); an https server is verified against the system's CAs or
``--tls-ca FILE``, and an API key goes over plain http only to this host unless
``--allow-insecure-http``. Every listing takes ``--json``. Errors are one line on stderr
and a non-zero exit: 1 when the server refused or could not be reached, 2 for bad usage.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn
from urllib.parse import quote

from weftnet import version
from weftnet.control.cli import approval

if TYPE_CHECKING:  # the server's modules load only for `serve` and `relay`
    from weftnet.control.server.app import ServeOptions

PROG = "weft-control"
DEFAULT_LISTEN = "0.0.0.0:8080"
DEFAULT_DATA_DIR = "/var/lib/weft-control"


class UsageError(Exception):
    pass


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line."""

    def error(self, message: str) -> NoReturn:
        print(f"{PROG}: {message} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(2)


def _seconds(text: str) -> float:
    """A duration: "15s", "1h", "90d", or a plain number of seconds ("0.5")."""
    from weftnet.control.domain.names import parse_duration

    try:
        value = float(text)
    except ValueError:
        try:
            return parse_duration(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"invalid duration {text!r}: must be positive")
    return value


def _port(text: str) -> int:
    if not text.isdigit() or not 0 <= int(text) < 65536:
        raise argparse.ArgumentTypeError(f"invalid port {text!r}: 0-65535")
    return int(text)


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"invalid number {text!r}: 1 or more")
    return int(text)


_RATE_UNITS = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9}


def _rate(text: str) -> int:
    """Bytes per second: "200000000", "200M", "1.5G" (decimal units)."""
    t = text.strip().lower().removesuffix("/s").removesuffix("b")
    unit = t[-1:] if t[-1:] in _RATE_UNITS and t[-1:] else ""
    try:
        value = float(t[: len(t) - len(unit)]) * _RATE_UNITS[unit]
    except ValueError:
        value = 0.0
    if not value >= 1:
        raise argparse.ArgumentTypeError(
            f"invalid rate {text!r}: bytes per second, e.g. 200000000 or 200M"
        )
    return int(value)


def _client_tls_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--tls-ca",
        metavar="FILE",
        help="CA certificates (PEM) the server's https certificate must chain to"
        " (default: the system's; SSL_CERT_FILE is honoured)",
    )
    parser.add_argument(
        "--allow-insecure-http",
        action="store_true",
        help="send the API key over plain http:// to another host (it can be read on the way)",
    )


def _csv(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def _oidc_flags(serve: argparse.ArgumentParser) -> None:
    """Logins through an OpenID provider (docs/identity.md)."""
    g = serve.add_argument_group("login through an OpenID provider (docs/identity.md)")
    g.add_argument("--oidc-issuer", metavar="URL", help="https (http only on loopback)")
    g.add_argument("--oidc-client-id", metavar="ID")
    g.add_argument("--oidc-client-secret-file", metavar="FILE", help="holds the client secret")
    g.add_argument("--oidc-scope", default="openid email profile", help="(default %(default)s)")
    g.add_argument(
        "--oidc-extra-param",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an extra authorization parameter, e.g. domain_hint=example.com (repeatable)",
    )
    g.add_argument("--oidc-allowed-domains", type=_csv, default=(), metavar="D,...")
    g.add_argument("--oidc-allowed-groups", type=_csv, default=(), metavar="G,...")
    g.add_argument("--oidc-allowed-users", type=_csv, default=(), metavar="EMAIL,...")
    g.add_argument(
        "--oidc-email-verified-required",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="domain and user filters need a verified email (default: required)",
    )
    g.add_argument(
        "--oidc-expiry-from-token",
        action="store_true",
        help="node key expiry = the ID token's expiry (default: --node-key-expiry)",
    )
    g.add_argument("--oidc-client-auth", choices=("basic", "post"), default="basic")
    g.add_argument("--oidc-admin-group", metavar="G", help="its members become console admins")
    g.add_argument("--owner", metavar="EMAIL", help="the first login with this email is owner")


def _oidc_options(args: argparse.Namespace) -> Any:
    from weftnet.control.server.oidc import OidcOptions

    if args.oidc_issuer is None:
        others = [a for a in ("oidc_client_id", "oidc_client_secret_file") if getattr(args, a)]
        if others:
            raise UsageError(f"--{others[0].replace('_', '-')} needs --oidc-issuer")
        return None
    return OidcOptions(
        issuer=args.oidc_issuer,
        client_id=args.oidc_client_id,
        client_secret_file=args.oidc_client_secret_file,
        scope=args.oidc_scope,
        extra_params=tuple(args.oidc_extra_param),
        client_auth=args.oidc_client_auth,
        allowed_domains=args.oidc_allowed_domains,
        allowed_groups=args.oidc_allowed_groups,
        allowed_users=args.oidc_allowed_users,
        email_verified_required=args.oidc_email_verified_required,
        expiry_from_token=args.oidc_expiry_from_token,
        admin_group=args.oidc_admin_group,
        owner=args.owner,
    )


def _observability_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--metrics-listen",
        metavar="HOST:PORT",
        help="serve Prometheus metrics at http://HOST:PORT/metrics (off by default;"
        " plain http: keep it on loopback or a management network; docs/metrics.md)",
    )
    p.add_argument(
        "--log-format",
        choices=("text", "json"),
        default="text",
        help="log lines as text (the default) or one JSON object per line",
    )


def _metrics_listen(args: argparse.Namespace) -> tuple[str, int] | None:
    from weftnet.metrics.http import ListenError, parse_listen

    if args.metrics_listen is None:
        return None
    try:
        return parse_listen(args.metrics_listen)
    except ListenError as e:
        raise UsageError(str(e)) from None


def build_parser() -> Parser:
    parser = Parser(prog=PROG, description="The weftnet coordination server and its admin tool.")
    version.add_flag(parser)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    commands.required = True

    serve = commands.add_parser("serve", help="run the coordination server")
    serve.add_argument("--listen", default=DEFAULT_LISTEN, help="HOST:PORT (default %(default)s)")
    serve.add_argument("--data-dir", default=DEFAULT_DATA_DIR, help="(default %(default)s)")
    serve.add_argument("--database-url", help="default: sqlite in DATA_DIR/control.db")
    serve.add_argument("--server-url", help="public URL of this server, for login URLs")
    serve.add_argument(
        "--tls-cert", metavar="FILE", help="PEM certificate chain: serve https (with --tls-key)"
    )
    serve.add_argument("--tls-key", metavar="FILE", help="the certificate's PEM private key")
    serve.add_argument("--node-key-expiry", help="e.g. 180d (the default); saved")
    serve.add_argument("--dns-domain", help="e.g. weft.internal (the default); saved")
    serve.add_argument(
        "--device-approval",
        type=approval.on_off,
        nargs="?",
        const=True,
        metavar="on|off",
        help="new devices wait for an admin's approval (on, or no value) or not (off); saved",
    )
    serve.add_argument("--keepalive-interval", type=_seconds, default=15.0, metavar="DURATION")
    serve.add_argument(
        "--router-keepalive-interval",
        type=_seconds,
        default=3.0,
        metavar="DURATION",
        help="keepalives to nodes that may serve routes (dead-router detection; default 3s)",
    )
    serve.add_argument("--ephemeral-grace", type=_seconds, default=10.0, metavar="DURATION")
    serve.add_argument("--login-wait", type=_seconds, default=60.0, metavar="DURATION")
    serve.add_argument("--no-access-log", action="store_true", help="no line per request")
    serve.add_argument(
        "--max-connections",
        type=_positive,
        default=4096,
        metavar="N",
        help="open connections in all; beyond them requests are answered 503 (%(default)s)",
    )
    serve.add_argument(
        "--max-connections-per-address",
        type=_positive,
        default=256,
        metavar="N",
        help="connections one IP address may hold open; more are closed at once (%(default)s)",
    )
    serve.add_argument(
        "--region", default="default", help="region name of the embedded relay (%(default)s)"
    )
    serve.add_argument("--no-relay", action="store_true", help="do not run the embedded relay")
    _oidc_flags(serve)
    serve.add_argument(
        "--relay-rate",
        type=_rate,
        default=200_000_000,
        metavar="BYTES",
        help="bytes/s each relay client may send, e.g. 200M (the default)",
    )
    serve.add_argument(
        "--stun-port",
        type=_port,
        default=3478,
        help="UDP port of the STUN server on the --listen host; 0: none (%(default)s)",
    )
    _observability_flags(serve)
    # Tests only: lets the admin API move the clock policy schedules are judged by.

    relay = commands.add_parser("relay", help="run a standalone relay region")
    relay.add_argument(
        "--listen", default="0.0.0.0:8081", help="HOST:PORT for relay clients (%(default)s)"
    )
    relay.add_argument(
        "--stun-port", type=_port, default=3478, help="UDP STUN port; 0: none (%(default)s)"
    )
    relay.add_argument("--control-url", help="URL of the control server (or WEFT_CONTROL_URL)")
    relay.add_argument("--api-key", help="admin API key (or WEFT_CONTROL_API_KEY)")
    relay.add_argument("--region", required=True, help="this relay's region name, e.g. eu")
    relay.add_argument(
        "--data-dir", default="/var/lib/weft-relay", help="for relay.key (%(default)s)"
    )
    relay.add_argument(
        "--public-url",
        help="http://HOST:PORT nodes connect to (default: the --listen address, or the"
        " address this host reaches the control server from)",
    )
    relay.add_argument(
        "--relay-rate", type=_rate, default=200_000_000, metavar="BYTES", help="per client"
    )
    relay.add_argument(
        "--tls-cert", metavar="FILE", help="PEM certificate chain: serve https (with --tls-key)"
    )
    relay.add_argument("--tls-key", metavar="FILE", help="the certificate's PEM private key")
    relay.add_argument(
        "--mesh",
        metavar="REGION",
        help="serve REGION with the other relays registered with it (they share their"
        " clients); needs --mesh-secret-file, and --region a name of this relay's own",
    )
    relay.add_argument(
        "--mesh-secret-file",
        metavar="FILE",
        help="the secret the relays of the mesh share (mode 0600; `openssl rand -hex 32`)",
    )
    relay.add_argument(
        "--mesh-peer",
        action="append",
        default=[],
        metavar="URL",
        help="a relay of the mesh to watch besides those of the relay map (repeatable)",
    )
    _client_tls_flags(relay)
    _observability_flags(relay)

    common = Parser(add_help=False)
    common.add_argument(
        "--data-dir", help=f"the server's data directory (default {DEFAULT_DATA_DIR})"
    )
    common.add_argument("--server", help="URL of the server (or WEFT_CONTROL_URL)")
    common.add_argument("--api-key", help="admin API key (or WEFT_CONTROL_API_KEY)")
    common.add_argument("--json", action="store_true", help="print JSON")
    _client_tls_flags(common)

    def group(name: str, help_text: str) -> Any:
        sub = commands.add_parser(name, help=help_text)
        actions = sub.add_subparsers(dest="action", metavar="ACTION", parser_class=Parser)
        actions.required = True
        return actions

    def action(actions: Any, name: str, help_text: str) -> Parser:
        p: Parser = actions.add_parser(name, help=help_text, parents=[common])
        return p

    users = group("users", "manage users")
    action(users, "create", "create a user").add_argument("name")
    action(users, "list", "list users")
    p = action(users, "delete", "delete a user")
    p.add_argument("name")
    p.add_argument("--force", action="store_true", help="also delete the user's nodes")
    p = action(users, "set-password", "set a user's web console password (prompted, or stdin)")
    p.add_argument("name")
    p.add_argument(
        "--generate", action="store_true", help="make a strong random password and print it once"
    )
    p = action(users, "role", "set a user's console role (docs/console.md)")
    p.add_argument("name")
    p.add_argument("role", help="owner, admin, network_admin, it_admin, auditor or member")
    p = action(users, "link", "bind a login at an OpenID provider to a user")
    p.add_argument("name")
    p.add_argument("--issuer", required=True)
    p.add_argument("--subject", required=True)
    p = action(users, "unlink", "remove a user's login from an OpenID provider")
    p.add_argument("name")
    p.add_argument("--issuer", required=True)

    keys = group("keys", "manage auth keys")
    p = action(keys, "create", "create an auth key (printed alone on stdout)")
    p.add_argument("--user", help="the user whose nodes this key registers")
    p.add_argument("--reusable", action="store_true", help="usable more than once")
    p.add_argument("--ephemeral", action="store_true", help="nodes go away when offline")
    p.add_argument("--tags", default="", help="tag:a,tag:b: nodes owned by the tags")
    p.add_argument("--expiration", help="e.g. 1h, 7d (default 90d, at most 365d)")
    p.add_argument("--preauthorized", action="store_true", help="its nodes need no device approval")
    action(keys, "list", "list auth keys").add_argument("--user")
    action(keys, "revoke", "revoke an auth key").add_argument("key", metavar="PREFIX_OR_ID")

    nodes = group("nodes", "manage nodes")
    action(nodes, "list", "list nodes").add_argument("--user")
    action(nodes, "delete", "delete a node").add_argument("node", metavar="ID")
    action(nodes, "expire", "expire a node's key now").add_argument("node", metavar="ID")
    p = action(nodes, "rename", "change a node's DNS name")
    p.add_argument("node", metavar="ID")
    p.add_argument("name")
    p = action(nodes, "register", "approve an interactive login")
    p.add_argument("--user", required=True)
    p.add_argument("--code", required=True, help="the code at the end of the login URL")
    p = action(nodes, "attr", "set a device attribute that policy postures test")
    p.add_argument("node", metavar="ID")
    p.add_argument("name", metavar="custom:NAME")
    p.add_argument("value", nargs="?", help="true, false, a number or a string")
    p.add_argument("--delete", action="store_true", help="remove the attribute")
    p = action(nodes, "routes", "routes announced, approved and served (docs/routes.md)")
    p.add_argument("node", metavar="ID", nargs="?", help="only this node")
    p = action(nodes, "approve-routes", "set the routes an admin approves for a node")
    p.add_argument("node", metavar="ID")
    p.add_argument(
        "--routes",
        required=True,
        help='CIDR,... (replaces the approvals; "" withdraws them; an exit node: 0.0.0.0/0,::/0)',
    )
    approval.add_node_commands(nodes, action)
    approval.add_commands(commands, common, group, action)

    policy = group("policy", "the access policy (docs/policy.md)")
    action(policy, "get", "print the policy in force")
    p = action(policy, "set", "check a HuJSON policy file and put it in force")
    p.add_argument("file", metavar="FILE", help="the policy file, - for stdin")
    p = action(policy, "check", "check a policy file and run its tests; change nothing")
    p.add_argument("file", metavar="FILE", help="the policy file, - for stdin")

    dns = group("dns", "the DNS settings: MagicDNS, nameservers, split DNS, extra records")
    action(dns, "get", "print the DNS settings in force (a document `dns set` takes)")
    p = action(dns, "set", "check a JSON or HuJSON DNS document and put it in force")
    p.add_argument("file", metavar="FILE", help="the DNS document, - for stdin")
    p = action(dns, "check", "check a DNS document; change nothing")
    p.add_argument("file", metavar="FILE", help="the DNS document, - for stdin")

    apikeys = group("apikeys", "manage admin API keys")
    p = action(apikeys, "create", "create an API key (printed alone on stdout)")
    p.add_argument("--expiration", help="e.g. 30d (default 90d, at most 365d)")
    p.add_argument("--description", default="")
    p.add_argument(
        "--scope",
        choices=("admin", "relay"),
        default="admin",
        help="admin: everything (default); relay: only what `weft-control relay` needs",
    )
    action(apikeys, "list", "list API keys")
    action(apikeys, "revoke", "revoke an API key").add_argument("prefix", metavar="PREFIX")

    relays = group("relays", "see the relay map")
    action(relays, "list", "list relay regions (embedded and standalone)")
    commands.add_parser(
        "server-key",
        help="the server's key, for `weft up --server-key` (and its fingerprint)",
        parents=[common],
    )
    return parser


# -- output ---------------------------------------------------------------------------


def _when(ts: float | None, now: float) -> str:
    if ts is None:
        return "-"
    delta = ts - now
    s = abs(int(delta))
    if s < 120:
        text = f"{s}s"
    elif s < 7200:
        text = f"{s // 60}m"
    elif s < 2 * 86400:
        text = f"{s // 3600}h"
    else:
        text = f"{s // 86400}d"
    return f"in {text}" if delta > 0 else f"{text} ago"


def _printable(text: str) -> str:
    """``text`` without control or format characters: whatever a server or a node put
    in a field (a hostname with terminal escapes), it cannot drive this terminal."""
    return "".join(c if c.isprintable() else "?" for c in text)


def _table(rows: Sequence[Sequence[str]]) -> None:
    rows = [[_printable(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())


def _print_users(users: list[dict[str, Any]], now: float) -> None:
    rows = [("ID", "NAME", "CREATED")]
    rows += [(str(u["id"]), u["name"], _when(u["created_at"], now)) for u in users]
    _table(rows)


def _key_status(k: dict[str, Any]) -> str:
    if k["revoked"]:
        return "revoked"
    if k["expired"]:
        return "expired"
    return "valid" if k["valid"] else "used"


def _print_keys(keys: list[dict[str, Any]], now: float) -> None:
    rows = [("ID", "PREFIX", "USER", "REUSABLE", "EPHEMERAL", "TAGS", "USED", "EXPIRES", "STATUS")]
    for k in keys:
        rows.append(
            (
                str(k["id"]),
                k["prefix"],
                k["user"] or "-",
                "yes" if k["reusable"] else "no",
                "yes" if k["ephemeral"] else "no",
                ",".join(k["tags"]) or "-",
                str(k["used_count"]),
                _when(k["expires_at"], now),
                _key_status(k),
            )
        )
    _table(rows)


def _print_routes(entries: list[dict[str, Any]], _now: float) -> None:
    rows = [("ID", "HOSTNAME", "APPROVED", "AVAILABLE", "SERVING (PRIMARY)")]
    for r in entries:
        approved = list(r["approved"]) + [
            f"{p} (auto)" for p in r["auto_approved"] if p not in r["approved"]
        ]
        rows.append(
            (
                str(r["id"]),
                r["hostname"] or r["given_name"],
                ", ".join(approved) or "-",
                ", ".join(r["announced"]) or "-",
                ", ".join(r["serving"]) or "-",
            )
        )
    _table(rows)


def _print_nodes(nodes: list[dict[str, Any]], now: float) -> None:
    rows = [
        (
            "ID",
            "NAME",
            "HOSTNAME",
            "OWNER",
            "IPV4",
            "IPV6",
            "ONLINE",
            "RELAY",
            "LAST SEEN",
            "EXPIRES",
        )
    ]
    for n in nodes:
        rows.append(
            (
                str(n["id"]),
                n["given_name"],
                n["hostname"] or "-",
                n["user"] or ",".join(n["tags"]) or "-",
                n["ipv4"],
                n["ipv6"],
                "yes" if n["online"] else "no",
                n.get("home_relay") or "-",
                _when(n["last_seen"], now),
                "expired" if n["expired"] else _when(n["key_expiry"], now),
            )
        )
    _table(rows)


def _print_api_keys(keys: list[dict[str, Any]], now: float) -> None:
    rows = [("ID", "PREFIX", "SCOPE", "DESCRIPTION", "CREATED", "EXPIRES", "LAST USED", "STATUS")]
    for k in keys:
        status = "revoked" if k["revoked"] else "expired" if k["expired"] else "valid"
        rows.append(
            (
                str(k["id"]),
                k["prefix"],
                k.get("scope", "admin"),
                k["description"] or "-",
                _when(k["created_at"], now),
                _when(k["expires_at"], now) if k["expires_at"] else "never",
                _when(k["last_used_at"], now),
                status,
            )
        )
    _table(rows)


def _print_relays(relays: list[dict[str, Any]], now: float) -> None:
    rows = [("REGION", "MESH", "URL", "PUBLIC KEY", "STUN", "KIND", "LAST SEEN")]
    for r in relays:
        rows.append(
            (
                r["region"],
                r.get("mesh") or "-",
                r["url"],
                r["public_key"][:25] + "...",
                str(r["stun_port"] or "-"),
                "embedded" if r["embedded"] else "standalone",
                "-" if r["embedded"] else _when(r["last_seen"], now),
            )
        )
    _table(rows)


# -- commands -------------------------------------------------------------------------


def serve_options(args: argparse.Namespace) -> ServeOptions:
    """The ServeOptions of a parsed ``serve`` command line (UsageError if they are bad)."""
    from weftnet.control.server import app as server

    try:
        host, port = server.parse_listen(args.listen)
    except ValueError as e:
        raise UsageError(str(e)) from None
    if (args.tls_cert is None) != (args.tls_key is None):
        raise UsageError("--tls-cert and --tls-key go together")
    return server.ServeOptions(
        data_dir=Path(args.data_dir),
        host=host,
        port=port,
        database_url=args.database_url,
        server_url=args.server_url,
        node_key_expiry=args.node_key_expiry,
        dns_domain=args.dns_domain,
        device_approval=args.device_approval,
        keepalive_s=args.keepalive_interval,
        router_keepalive_s=args.router_keepalive_interval,
        ephemeral_grace_s=args.ephemeral_grace,
        followup_wait_s=args.login_wait,
        max_connections=args.max_connections,
        max_connections_per_address=args.max_connections_per_address,
        access_log=not args.no_access_log,
        relay=not args.no_relay,
        region=args.region,
        relay_rate_bytes_per_s=args.relay_rate,
        stun_port=args.stun_port,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        oidc=_oidc_options(args),
        metrics_listen=_metrics_listen(args),
        log_format=args.log_format,
    )


def run_serve(options: ServeOptions) -> int:
    """Serve until SIGTERM/SIGINT; the exit status (1, with a one-line error, if the
    server cannot start)."""
    from weftnet.control.server import app as server

    server.configure_logging(options.log_format)
    os.umask(0o077)  # the database and everything else in the data dir: owner only
    try:
        server.serve(options)
    except server.ServeError as e:
        print(f"{PROG}: {e}", file=sys.stderr)
        return 1
    return 0


def _serve(args: argparse.Namespace) -> int:
    return run_serve(serve_options(args))


def _relay(args: argparse.Namespace) -> int:
    import asyncio

    from weftnet.control.domain.relays import check_region_name
    from weftnet.control.server import app as server
    from weftnet.relay import standalone as relayd

    try:
        host, port = server.parse_listen(args.listen)
        check_region_name(args.region)
    except ValueError as e:
        raise UsageError(str(e)) from None
    control_url = args.control_url or os.environ.get("WEFT_CONTROL_URL")
    api_key = args.api_key or os.environ.get("WEFT_CONTROL_API_KEY")
    if not control_url or not api_key:
        raise UsageError(
            "relay needs --control-url and --api-key (or WEFT_CONTROL_URL and"
            " WEFT_CONTROL_API_KEY); create a key with `weft-control apikeys create`"
        )
    relayd.configure_logging(args.log_format)
    os.umask(0o077)
    options = relayd.RelayOptions(
        control_url=control_url,
        api_key=api_key,
        region=args.region,
        host=host,
        port=port,
        stun_port=args.stun_port,
        data_dir=Path(args.data_dir),
        public_url=args.public_url,
        rate_bytes_per_s=args.relay_rate,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        tls_ca=args.tls_ca,
        allow_insecure_http=args.allow_insecure_http,
        mesh=args.mesh,
        mesh_secret_file=Path(args.mesh_secret_file) if args.mesh_secret_file else None,
        mesh_peers=list(args.mesh_peer),
        metrics_listen=_metrics_listen(args),
    )
    try:
        asyncio.run(relayd.run(options))
    except relayd.RelayError as e:
        print(f"{PROG} relay: {e}", file=sys.stderr)
        return 1
    return 0


def _attr_value(text: str) -> str | float | bool:
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    try:
        return float(text)
    except ValueError:
        return text


def _read_file(file: str) -> str:
    try:
        return sys.stdin.read() if file == "-" else Path(file).read_text()
    except OSError as e:
        raise UsageError(f"cannot read {file}: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise UsageError(f"cannot read {file}: not UTF-8 text") from None


def _new_password(generate: bool) -> str:
    """A console password: generated, prompted for twice on a terminal, or stdin's first line."""
    from weftnet.control.service.consoleauth import generate_password

    if generate:
        return generate_password()
    if not sys.stdin.isatty():
        return sys.stdin.readline().rstrip("\r\n")
    import getpass

    password = getpass.getpass("New password: ")
    if getpass.getpass("Again: ") != password:
        raise UsageError("the passwords differ")
    return password


def _print_json(out: Any, _now: float) -> None:
    print(json.dumps(out, indent=2))


def _dns_summary(doc: dict[str, Any]) -> str:
    servers = doc["nameservers"]
    fallback = "" if doc["override_local_dns"] else " (fallback)"
    return (
        f"MagicDNS {'on' if doc['magic_dns'] else 'off'} under {doc['base_domain']},"
        f" {len(servers['global'])} global nameserver(s){fallback},"
        f" {len(servers['split'])} split domain(s), {len(doc['extra_records'])} extra record(s)"
    )


def _node_id(client: Any, ref: str) -> int:
    """A node's id from its id or its given name."""
    if ref.isdigit():
        return int(ref)
    matches = [n["id"] for n in client.request("GET", "/nodes") if n["given_name"] == ref]
    if not matches:
        from weftnet.control.cli.adminclient import AdminError

        raise AdminError(f"no node named {ref}: see `{PROG} nodes list`")
    return int(matches[0])


def _only_prefix(ref: str, command: str) -> None:
    """Revocation goes by prefix or id: a whole key would put its secret in a URL."""
    if ref.strip().count("-") >= 2:
        raise UsageError(
            f"{command} revoke takes the key's prefix (the 12 hex digits after the first"
            f" '-') or its id, not the whole key, whose secret would land in access logs;"
            f" see `weft-control {command} list`"
        )


def _print_server_key(text: str, as_json: bool) -> int:
    from weftnet import controlbox, serverkey, tailcfg

    try:
        fp = serverkey.fingerprint(controlbox.key_from_text(tailcfg.MACHINE_KEY_PREFIX, text))
    except ValueError:
        raise UsageError(f"the server answered a malformed key {text[:80]!r}") from None
    if as_json:
        print(json.dumps({"server_key": text, "fingerprint": fp}, indent=2))
    else:
        print(text)
    return 0


def _admin(args: argparse.Namespace) -> int:
    from weftnet.control.cli.adminclient import AdminClient, resolve_target

    now = time.time()
    target = resolve_target(
        args.data_dir,
        args.server,
        args.api_key,
        tls_ca=args.tls_ca,
        allow_insecure_http=args.allow_insecure_http,
    )
    with AdminClient(target) as client:
        if args.command == "server-key":
            return _print_server_key(client.server_key(), args.json)
        req = client.request
        key = (args.command, getattr(args, "action", ""))
        out: Any
        printer: Callable[[Any, float], None] | None = None
        text: str | None = None
        if key == ("users", "create"):
            out = req("POST", "/users", body={"name": args.name})
            text = f"created user {out['name']} (id {out['id']})"
        elif key == ("users", "list"):
            out, printer = req("GET", "/users"), _print_users
            if args.json:
                for u in out:
                    name = quote(u["name"], safe="@")
                    u["identities"] = req("GET", f"/users/{name}/identities")
        elif key == ("users", "link"):
            body = {"issuer": args.issuer, "subject": args.subject}
            out = req("POST", f"/users/{quote(args.name, safe='@')}/identities", body=body)
            text = f"linked {args.name} to {out['subject']} at {out['issuer']}"
        elif key == ("users", "unlink"):
            out = req(
                "DELETE",
                f"/users/{quote(args.name, safe='@')}/identities",
                params={"issuer": args.issuer},
            )
            text = f"unlinked {out['unlinked']} login(s) of {args.name} from {args.issuer}"
        elif key == ("users", "delete"):
            out = req(
                "DELETE",
                f"/users/{quote(args.name, safe='@')}",
                params={"force": str(args.force).lower()},
            )
            text = f"deleted user {args.name}" + (
                f" and {out['nodes_deleted']} node(s)" if out["nodes_deleted"] else ""
            )
        elif key == ("users", "set-password"):
            password = _new_password(args.generate)
            out = req(
                "PUT", f"/users/{quote(args.name, safe='@')}/password", body={"password": password}
            )
            if args.generate:  # shown this once
                out, text = {**out, "password": password}, f"password of {args.name}: {password}"
            else:
                text = f"password of {args.name} set"
        elif key == ("users", "role"):
            out = req("PUT", f"/users/{quote(args.name, safe='@')}/role", body={"role": args.role})
            text = f"{out['name']} is now {out['role']}"
        elif key == ("keys", "create"):
            tags = [t for t in args.tags.split(",") if t.strip()]
            body = {
                "user": args.user,
                "reusable": args.reusable,
                "ephemeral": args.ephemeral,
                "tags": tags,
                "expiration": args.expiration,
                "preauthorized": args.preauthorized,
            }
            out = req("POST", "/keys", body=body)
            text = out["key"]
        elif key == ("keys", "list"):
            out, printer = req("GET", "/keys", params={"user": args.user}), _print_keys
        elif key == ("keys", "revoke"):
            _only_prefix(args.key, "keys")
            out = req("DELETE", f"/keys/{quote(args.key, safe='')}")
            text = f"revoked auth key {out['revoked']}"
        elif key == ("nodes", "list"):
            out, printer = req("GET", "/nodes", params={"user": args.user}), _print_nodes
        elif key == ("nodes", "delete"):
            out = req("DELETE", f"/nodes/{_node_id(client, args.node)}")
            text = f"deleted node {out['deleted']} ({out['given_name']})"
        elif key == ("nodes", "expire"):
            out = req("POST", f"/nodes/{_node_id(client, args.node)}/expire")
            text = f"expired the key of node {out['expired']}"
        elif key == ("nodes", "rename"):
            out = req(
                "POST", f"/nodes/{_node_id(client, args.node)}/rename", body={"name": args.name}
            )
            text = f"node {out['id']} is now {out['given_name']}"
        elif key == ("nodes", "register"):
            out = req("POST", "/nodes/register", body={"user": args.user, "code": args.code})
            text = f"registered node {out['id']} {out['given_name']} {out['ipv4']} {out['ipv6']}"
        elif key == ("nodes", "attr"):
            node_id = _node_id(client, args.node)
            name = quote(args.name.removeprefix("custom:"), safe="")
            if args.delete == (args.value is not None):
                raise UsageError("nodes attr needs a VALUE or --delete (not both)")
            if args.delete:
                out = req("DELETE", f"/nodes/{node_id}/attributes/{name}")
            else:
                out = req(
                    "PUT",
                    f"/nodes/{node_id}/attributes/{name}",
                    body={"value": _attr_value(args.value)},
                )
            attrs = out["attributes"]
            text = f"node {out['id']}: " + (
                ", ".join(f"{k}={json.dumps(v)}" for k, v in attrs.items()) or "no attributes"
            )
        elif key == ("nodes", "routes"):
            if args.node is None:
                out = req("GET", "/routes")
            else:
                out = [req("GET", f"/nodes/{_node_id(client, args.node)}/routes")]
            printer = _print_routes
        elif key == ("nodes", "approve-routes"):
            prefixes = [p.strip() for p in args.routes.split(",") if p.strip()]
            out = req(
                "POST", f"/nodes/{_node_id(client, args.node)}/routes", body={"routes": prefixes}
            )
            text = f"node {out['id']}: approved " + (", ".join(out["approved"]) or "nothing")
            if out["serving"]:
                text += f"; serving {', '.join(out['serving'])}"
        elif key == ("policy", "get"):
            out = req("GET", "/policy")
            if out["policy"] is None:
                text = "no policy set: every node may reach every other"
            else:
                text = out["policy"].rstrip("\n")
        elif key in (("policy", "set"), ("policy", "check")):
            path = "/policy" if args.action == "set" else "/policy/check"
            body = {"policy": _read_file(args.file)}
            out = req("PUT" if args.action == "set" else "POST", path, body=body)
            done = "policy set" if args.action == "set" else "policy ok (not applied)"
            text = f"{done}: {out['acls']} rule(s), {out['tests']} test(s) passed"
            if out["ignored_keys"]:
                text += f"; ignored: {', '.join(out['ignored_keys'])}"
        elif key == ("dns", "get"):
            # The document as JSON, with or without --json (escaped: safe on a terminal).
            out, printer = req("GET", "/dns"), _print_json
        elif key in (("dns", "set"), ("dns", "check")):
            body = {"dns": _read_file(args.file)}
            if args.action == "set":
                out = req("PUT", "/dns", body=body)
                text = f"DNS settings set: {_dns_summary(out)}"
            else:
                out = req("POST", "/dns/check", body=body)
                text = f"DNS settings ok (not applied): {_dns_summary(out['dns'])}"
        elif key == ("apikeys", "create"):
            body = {
                "expiration": args.expiration,
                "description": args.description,
                "scope": args.scope,
            }
            out = req("POST", "/apikeys", body=body)
            text = out["key"]
        elif key == ("apikeys", "list"):
            out, printer = req("GET", "/apikeys"), _print_api_keys
        elif key == ("apikeys", "revoke"):
            _only_prefix(args.prefix, "apikeys")
            out = req("DELETE", f"/apikeys/{quote(args.prefix, safe='')}")
            text = f"revoked API key {out['revoked']}"
        elif key == ("relays", "list"):
            out, printer = req("GET", "/relays"), _print_relays
        elif (outcome := approval.run(key, args, req, lambda r: _node_id(client, r))) is not None:
            out, printer, text = outcome
        else:  # pragma: no cover - argparse only lets known actions through
            raise UsageError(f"unknown command {' '.join(key)}")
    if args.json and args.command == "audit":
        approval.print_json_lines(out)
    elif args.json:
        print(json.dumps(out, indent=2))
    elif printer is not None:
        printer(out, now)
    elif text is not None:
        print(_printable(text))
    return 0


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    from weftnet.control.cli.adminclient import AdminError

    try:
        if args.command == "serve":
            code = _serve(args)
        elif args.command == "relay":
            code = _relay(args)
        else:
            code = _admin(args)
    except UsageError as e:
        print(f"{PROG}: {e}", file=sys.stderr)
        code = 2
    except AdminError as e:
        print(f"{PROG}: {_printable(str(e))}", file=sys.stderr)
        code = 1
    except KeyboardInterrupt:
        code = 130
    sys.exit(code)


if __name__ == "__main__":
    main()
