"""`weft-control` commands for device approval, key expiry, tags, settings and the audit
log (docs/identity.md, docs/console.md). ``add_commands`` adds them to the parser;
``run`` answers one of them through the admin API, or returns None if it is not one."""

from __future__ import annotations

import argparse
import datetime
import json
from collections.abc import Callable, Sequence
from typing import Any

Printer = Callable[[Any, float], None]
Outcome = tuple[Any, Printer | None, str | None]  # (JSON answer, table printer, text)
NodeId = Callable[[str], int]


def on_off(text: str) -> bool:
    if text.lower() in ("on", "true", "yes"):
        return True
    if text.lower() in ("off", "false", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected on or off, not {text!r}")


def add_node_commands(
    nodes: Any, action: Callable[[Any, str, str], argparse.ArgumentParser]
) -> None:
    action(nodes, "approve", "approve a device waiting for approval").add_argument(
        "node", metavar="ID"
    )
    p = action(nodes, "key-expiry", "turn a node's key expiry off or on again")
    p.add_argument("node", metavar="ID")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--disable", action="store_true", help="its key never expires")
    which.add_argument("--enable", action="store_true", help="it expires as others do")
    p = action(nodes, "tags", "make a node a tagged node (it loses its user)")
    p.add_argument("node", metavar="ID")
    p.add_argument("tags", metavar="tag:a,tag:b")


def add_commands(
    commands: Any,
    common: argparse.ArgumentParser,
    group: Callable[[str, str], Any],
    action: Callable[[Any, str, str], argparse.ArgumentParser],
) -> None:
    settings = group("settings", "the tailnet's settings (device approval)")
    action(settings, "get", "print the tailnet's settings")
    p = action(settings, "set", "change the tailnet's settings")
    p.add_argument(
        "--device-approval", type=on_off, required=True, metavar="on|off",
        help="on: new devices wait for an admin's `nodes approve`",
    )  # fmt: skip
    p = commands.add_parser(
        "audit", help="the audit log, newest first (--json: JSON lines)", parents=[common]
    )
    p.add_argument("--since", metavar="DURATION", help="only entries this recent, e.g. 1h")
    p.add_argument("--limit", type=int, default=100, help="at most this many (%(default)s)")


def since_ts(text: str | None, now: float) -> float | None:
    from weftnet.control.domain import names

    if not text:
        return None
    try:
        return now - names.parse_duration(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def run(
    key: tuple[str, str], args: argparse.Namespace, req: Callable[..., Any], node_id: NodeId
) -> Outcome | None:
    if key == ("nodes", "approve"):
        out = req("POST", f"/nodes/{node_id(args.node)}/authorize")
        return out, None, f"node {out['id']} ({out['given_name']}) is approved"
    if key == ("nodes", "key-expiry"):
        body = {"disabled": bool(args.disable)}
        out = req("POST", f"/nodes/{node_id(args.node)}/key-expiry", body=body)
        state = "off" if out["key_expiry_disabled"] else "on"
        return out, None, f"node {out['id']} ({out['given_name']}): key expiry {state}"
    if key == ("nodes", "tags"):
        tags = [t.strip() for t in args.tags.split(",") if t.strip()]
        out = req("POST", f"/nodes/{node_id(args.node)}/tags", body={"tags": tags})
        return out, None, f"node {out['id']} ({out['given_name']}): {', '.join(out['tags'])}"
    if key == ("settings", "get"):
        out = req("GET", "/settings")
        return out, None, _settings_text(out)
    if key == ("settings", "set"):
        out = req("PATCH", "/settings", body={"device_approval": args.device_approval})
        return out, None, _settings_text(out)
    if key[0] == "audit":
        import time

        params = {"limit": str(args.limit)}
        since = since_ts(args.since, time.time())
        if since is not None:
            params["since"] = str(since)
        return req("GET", "/audit", params=params), print_audit, None
    return None


def _settings_text(out: dict[str, Any]) -> str:
    return f"device approval: {'on' if out['device_approval'] else 'off'}"


def audit_rows(entries: Sequence[dict[str, Any]]) -> list[tuple[str, ...]]:
    rows: list[tuple[str, ...]] = [("TIME", "ACTOR", "ORIGIN", "ACTION", "TARGET", "FROM")]
    for e in entries:
        when = datetime.datetime.fromtimestamp(e["ts"], datetime.UTC)
        actor = e["actor"]
        who = f"{actor['type']}:{actor['name'] or actor['id'] or '-'}"
        target = f"{e['target']['type']}:{e['target']['id']}"
        rows.append(
            (when.strftime("%Y-%m-%d %H:%M:%S"), who, e["origin"], e["action"], target,
             e["remote_addr"] or "-")
        )  # fmt: skip
    return rows


def print_audit(entries: Sequence[dict[str, Any]], _now: float) -> None:
    from weftnet.control.cli.main import _table

    _table(audit_rows(entries))


def print_json_lines(entries: Sequence[dict[str, Any]]) -> None:
    for e in entries:
        print(json.dumps(e, separators=(",", ":")))
