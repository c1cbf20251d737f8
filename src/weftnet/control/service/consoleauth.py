"""Web console logins: local passwords, server-side sessions, and user roles.

Theory of operation: a session is a row in ``console_sessions``. The browser's cookie
holds a random id (``new_session`` returns it once); the store keeps only its SHA-256,
so a database dump opens no session. Each session has its own CSRF token, an idle
timeout (``last_seen`` + ``IDLE_TIMEOUT_S``) and an absolute one (``expires_at``).
``session_user`` is the one check every console request makes: a missing, expired or
idle session, or a disabled user, is ``Unauthorized``.

Local passwords (for tailnets without an identity provider) are scrypt hashes with a
random salt, stored as ``scrypt$n$r$p$salt$hash`` (hex); the check is constant-time,
and an unknown user costs the same scrypt as a known one.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass

from weftnet.control.domain import roles
from weftnet.control.domain.records import ConsoleSession, Identity, Tx, User
from weftnet.control.service.audit import record
from weftnet.control.service.core import Db, Forbidden, Invalid, Unauthorized, find_user

IDLE_TIMEOUT_S = 12 * 3600.0
ABSOLUTE_TIMEOUT_S = 7 * 86400.0
TOUCH_EVERY_S = 60.0  # last_seen is written at most this often
MIN_PASSWORD_LENGTH = 12
MAX_PASSWORD_LENGTH = 1024
SCRYPT_N, SCRYPT_R, SCRYPT_P = 1 << 14, 8, 1
_DUMMY_HASH = "scrypt$16384$8$1$" + "00" * 16 + "$" + "00" * 32


@dataclass(frozen=True, slots=True)
class UserOverview:
    """A user as the console's Users page lists them."""

    user: User
    identities: tuple[Identity, ...]
    machines: int
    has_password: bool


@dataclass(frozen=True, slots=True)
class SignedIn:
    """A console session: ``token`` (the cookie; only returned when it is made)."""

    session: ConsoleSession
    user: User
    token: str = ""


def session_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def hash_password(password: str, salt: bytes | None = None) -> str:
    salt = salt if salt is not None else secrets.token_bytes(16)
    digest = hashlib.scrypt(
        password.encode(), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P, dklen=32
    )
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${salt.hex()}${digest.hex()}"


def password_matches(password: str, stored: str) -> bool:
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        got = hashlib.scrypt(
            password.encode()[:MAX_PASSWORD_LENGTH],
            salt=bytes.fromhex(salt),
            n=int(n),
            r=int(r),
            p=int(p),
            dklen=len(digest) // 2,
        )
    except ValueError:
        return False
    return hmac.compare_digest(got.hex(), digest)


def generate_password() -> str:
    return secrets.token_urlsafe(18)  # 24 characters, 144 bits


class ConsoleAuth:
    def __init__(self, db: Db) -> None:
        self.db = db

    # -- passwords -------------------------------------------------------------------

    def set_password(self, name: str, password: str | None) -> User:
        """Set (or with None remove) a user's console password; ends their sessions."""
        if password is not None and not (
            MIN_PASSWORD_LENGTH <= len(password) <= MAX_PASSWORD_LENGTH
        ):
            raise Invalid(
                f"a password has {MIN_PASSWORD_LENGTH} to {MAX_PASSWORD_LENGTH} characters"
            )
        hashed = hash_password(password) if password is not None else None

        def apply(tx: Tx) -> User:
            user = find_user(tx, name)
            tx.set_user_password_hash(user.id, hashed)
            tx.delete_user_sessions(user.id)
            record(tx, time.time(), "user.set_password", "user", user.name)
            return user

        return self.db.write(apply)

    def check_password(self, name: str, password: str) -> User:
        """The user, if ``password`` is theirs and they may log in; Unauthorized else."""

        def lookup(tx: Tx) -> tuple[User | None, str | None]:
            user = tx.user_by_name(name.strip())
            return user, tx.user_password_hash(user.id) if user else None

        user, stored = self.db.read(lookup)
        ok = password_matches(password, stored or _DUMMY_HASH)
        if user is None or stored is None or not ok:
            raise Unauthorized("wrong user name or password")
        if user.disabled_at is not None:
            raise Unauthorized("this user is disabled")
        return user

    # -- sessions --------------------------------------------------------------------

    def new_session(
        self, user_id: int, now: float, remote_addr: str = "", user_agent: str = ""
    ) -> SignedIn:
        token = secrets.token_urlsafe(32)
        session = ConsoleSession(
            id_hash=session_hash(token),
            user_id=user_id,
            csrf_token=secrets.token_urlsafe(32),
            created_at=now,
            last_seen=now,
            expires_at=now + ABSOLUTE_TIMEOUT_S,
            remote_addr=remote_addr[:64],
            user_agent=user_agent[:256],
        )

        def add(tx: Tx) -> User:
            user = tx.user_by_id(user_id)
            if user is None or user.disabled_at is not None:
                raise Unauthorized("this user may not log in")
            tx.delete_expired_sessions(now)
            tx.add_session(session)
            user = tx.update_user(user.id, last_login_at=now)
            record(tx, now, "console.login", "user", user.name)
            return user

        return SignedIn(session, self.db.write(add), token)

    def session_user(self, token: str, now: float) -> SignedIn:
        """The session the cookie ``token`` names, and its user; Unauthorized unless
        both are still good. Refreshes ``last_seen`` (the idle timeout)."""
        id_hash = session_hash(token)

        def lookup(tx: Tx) -> tuple[ConsoleSession | None, User | None]:
            session = tx.session_by_hash(id_hash)
            return session, tx.user_by_id(session.user_id) if session else None

        session, user = self.db.read(lookup)
        if session is None or user is None:
            raise Unauthorized("not logged in")
        if (
            session.expires_at <= now
            or now - session.last_seen > IDLE_TIMEOUT_S
            or user.disabled_at is not None
        ):
            self.db.write(lambda tx: tx.delete_session(id_hash))
            raise Unauthorized("your session has ended: log in again")
        if now - session.last_seen > TOUCH_EVERY_S:
            self.db.write(lambda tx: tx.touch_session(id_hash, now))
        return SignedIn(session, user)

    def end_session(self, token: str, now: float) -> None:
        """Log out: the session is deleted (an unknown one is no error)."""
        id_hash = session_hash(token)

        def end(tx: Tx) -> None:
            session = tx.session_by_hash(id_hash)
            if session is None:
                return
            tx.delete_session(id_hash)
            user = tx.user_by_id(session.user_id)
            record(tx, now, "console.logout", "user", user.name if user else session.user_id)

        self.db.write(end)

    def users_overview(self) -> list[UserOverview]:
        def read(tx: Tx) -> list[UserOverview]:
            counts: dict[int, int] = {}
            for node in tx.nodes():
                if node.user_id is not None:
                    counts[node.user_id] = counts.get(node.user_id, 0) + 1
            return [
                UserOverview(
                    user=u,
                    identities=tuple(tx.identities(u.id)),
                    machines=counts.get(u.id, 0),
                    has_password=tx.user_password_hash(u.id) is not None,
                )
                for u in sorted(tx.users(), key=lambda u: u.name)
            ]

        return self.db.read(read)

    # -- roles -----------------------------------------------------------------------

    def set_user_role(self, name: str, role: str, actor_role: str | None = None) -> User:
        """Give user ``name`` a role. ``actor_role``: the role of the console user asking
        (roles.may_assign decides); None for the server's own CLI (break-glass)."""
        try:
            role = roles.check_role(role)
        except ValueError as e:
            raise Invalid(str(e)) from None

        def apply(tx: Tx) -> User:
            user = find_user(tx, name)
            if actor_role is not None and not roles.may_assign(actor_role, user.role, role):
                raise Forbidden(f"your role may not make {name} {roles.LABELS[role]}")
            if user.role == role:
                return user
            updated = tx.update_user(user.id, role=role)
            record(tx, time.time(), "user.set_role", "user", user.name, old=user.role, new=role)
            return updated

        return self.db.write(apply)
