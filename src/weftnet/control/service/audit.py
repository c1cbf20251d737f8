"""The audit log's writer: who is acting, and one entry per change in its transaction.

Theory of operation: the API layer knows who is calling (a console session's user, an
admin API key, a node) and from where; it runs the service call inside
``acting_as(actor)``. The service rules don't take the actor as an argument: each rule
that changes something calls ``record(tx, now, action, target_type, target_id, ...)``
inside its own write transaction, which stamps the entry with ``current_actor()``. So
an entry exists exactly when the change committed, and a refused change leaves none.
The actor travels in a context variable (copied into the worker thread that runs the
service call; ``anyio.to_thread`` copies the context).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

from weftnet.control.domain.records import NewAuditEntry, Tx

# Origins of a change.
ORIGIN_CONSOLE = "console"
ORIGIN_API = "api"  # the admin REST API, with an API key (the weft-control CLI too)
ORIGIN_CLI = "cli"  # weft-control on the server's own database
ORIGIN_NODE = "node"  # a node's own request (logins)
ORIGIN_SERVER = "server"  # the server by itself (expiry, cleanup)


@dataclass(frozen=True, slots=True)
class Actor:
    type: str  # "user", "api_key", "node", "system"
    id: str
    name: str
    origin: str
    remote_addr: str = ""


SYSTEM = Actor(type="system", id="", name="weft-control", origin=ORIGIN_SERVER)
_current: ContextVar[Actor] = ContextVar("weft_actor", default=SYSTEM)


@contextmanager
def acting_as(actor: Actor) -> Iterator[Actor]:
    token = _current.set(actor)
    try:
        yield actor
    finally:
        _current.reset(token)


def current_actor() -> Actor:
    return _current.get()


def record(
    tx: Tx,
    now: float,
    action: str,
    target_type: str,
    target_id: object,
    **details: object,
) -> None:
    """Append one entry for a change made in ``tx``, by the current actor."""
    actor = current_actor()
    tx.add_audit(
        NewAuditEntry(
            ts=now,
            actor_type=actor.type,
            actor_id=actor.id,
            actor_name=actor.name,
            origin=actor.origin,
            action=action,
            target_type=target_type,
            target_id=str(target_id),
            details=dict(details),
            remote_addr=actor.remote_addr,
        )
    )
