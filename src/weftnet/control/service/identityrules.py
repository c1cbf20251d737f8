"""Rules for logins at the OpenID provider: identities -> users, node logins, links.

Theory of operation (docs/identity.md): a user is found by the (issuer, subject) of
their identity, never by email. ``sign_in`` maps verified claims to a user: a known
identity refreshes the user's email, display name, groups and last login (the name never
changes); an unknown one creates a user named by ``identity.user_name`` - unless that
name is taken, which is refused with the ``users link`` hint (so two providers that
say the same email are two users, never one). A disabled user is refused.

A node login is two steps: ``attach_login`` puts the signed-in user (and the key expiry
their login asks for) on the pending login; only ``confirm_login`` - the user's POST on
the confirmation page - registers the node, as that user, with auth_method "oidc".
Every change is audited in its own transaction.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from weftnet.control.domain import credentials, identity
from weftnet.control.domain.identity import Claims, LoginRefused
from weftnet.control.domain.records import (
    Identity,
    NewIdentity,
    OidcLogin,
    Pending,
    Tx,
    User,
)
from weftnet.control.service.audit import record
from weftnet.control.service.core import (
    Conflict,
    Db,
    Invalid,
    NotFound,
    Registered,
    ServiceError,
    approve_pending,
    find_user,
)


class LoginDenied(ServiceError):
    """A sign-in the rules refuse; the message is shown on the login page."""


@dataclass(frozen=True, slots=True)
class SignInRules:
    """Who may sign in and what a new user becomes (from the server's configuration)."""

    filters: identity.Filters = field(default_factory=identity.Filters)
    owner_email: str | None = None
    admin_group: str | None = None
    expiry_from_token: bool = False


def link_hint(name: str, claims: Claims) -> str:
    return (
        f"the user name {name} is already taken by another user: an administrator can link"
        f" this login to it with `weft-control users link {name} --issuer {claims.issuer}"
        f" --subject {claims.subject}`, or create another user and link it there"
    )


class IdentityRules:
    def __init__(self, db: Db) -> None:
        self.db = db

    # signing in

    def sign_in(self, claims: Claims, rules: SignInRules, now: float) -> User:
        """The user these (verified) claims belong to, created on a first login;
        LoginDenied if the filters, the name or a disabled user refuse it."""
        try:
            identity.check_allowed(claims, rules.filters)
        except LoginRefused as e:
            raise LoginDenied(str(e)) from None
        email = claims.trusted_email(rules.filters.email_verified_required)

        def login(tx: Tx) -> User:
            known = tx.identity_by_subject(claims.issuer, claims.subject)
            if known is not None:
                user = tx.user_by_id(known.user_id)
                assert user is not None
                if user.disabled_at is not None:
                    raise LoginDenied(f"the user {user.name} is disabled")
                tx.update_identity(
                    known.id,
                    email=claims.email,
                    email_verified=claims.email_verified,
                    display_name=claims.name,
                    groups=claims.groups,
                    last_login_at=now,
                )
                changes: dict[str, object] = {"last_login_at": now}
                if claims.name:
                    changes["display_name"] = claims.name
                if email is not None:
                    changes["email"] = email
                record(tx, now, "user.login", "user", user.id, issuer=claims.issuer)
                return tx.update_user(user.id, **changes)
            try:
                name = identity.user_name(claims, rules.filters.email_verified_required)
            except LoginRefused as e:
                raise LoginDenied(str(e)) from None
            if tx.user_by_name(name) is not None:
                raise LoginDenied(link_hint(name, claims))
            user = tx.add_user(name, now)
            role = identity.role_for(
                claims, owner_email=rules.owner_email, admin_group=rules.admin_group
            )
            user = tx.update_user(
                user.id, display_name=claims.name, email=email, role=role, last_login_at=now
            )
            self._add_identity(tx, user, claims, now)
            record(tx, now, "user.create", "user", user.id, name=name, role=role, via="oidc")
            return user

        return self.db.write(login)

    @staticmethod
    def _add_identity(tx: Tx, user: User, claims: Claims, now: float) -> Identity:
        return tx.add_identity(
            NewIdentity(
                user_id=user.id,
                issuer=claims.issuer,
                subject=claims.subject,
                email=claims.email,
                email_verified=claims.email_verified,
                display_name=claims.name,
                groups=claims.groups,
                created_at=now,
                last_login_at=now,
            )
        )

    # authorization requests in flight

    def begin_login(self, login: OidcLogin) -> None:
        def add(tx: Tx) -> None:
            tx.delete_expired_oidc_logins(login.created_at)
            tx.add_oidc_login(login)

        self.db.write(add)

    def take_login(self, state_hash: str, now: float) -> OidcLogin | None:
        """The login with this state, once (single use); None if taken or expired."""
        return self.db.write(lambda tx: tx.take_oidc_login(state_hash, now))

    # node logins

    def open_pending(self, code: str, now: float) -> Pending:
        """The pending login of ``code``, if it may still be completed."""
        if not credentials.is_code(code):
            raise NotFound("this login link is malformed: run weft up again")

        def find(tx: Tx) -> Pending:
            pending = tx.pending_by_code(code)
            if pending is None or pending.expires_at <= now:
                raise NotFound("this login link is unknown or has expired: run weft up again")
            if pending.node_id is not None:
                raise Conflict("this device has already been logged in")
            return pending

        return self.db.read(find)

    def attach_login(
        self, code: str, user: User, claims: Claims, rules: SignInRules, now: float
    ) -> Pending:
        """Put ``user`` on the pending login, waiting for their confirmation."""
        expiry = identity.key_expiry(
            claims, now, self.db.settings.node_key_expiry_s, rules.expiry_from_token
        )

        def attach(tx: Tx) -> Pending:
            pending = tx.pending_by_code(code)
            if pending is None or pending.expires_at <= now or pending.node_id is not None:
                raise NotFound("this login link is unknown or has expired: run weft up again")
            tx.set_pending_login(pending.id, user.id, expiry)
            record(tx, now, "login.signed_in", "pending", pending.id, user=user.name)
            found = tx.pending_by_code(code)
            assert found is not None
            return found

        return self.db.write(attach)

    def confirm_login(self, code: str, user_id: int, now: float) -> Registered:
        """The signed-in user confirmed: register the node as them (auth_method oidc)."""

        def confirm(tx: Tx) -> Registered:
            tx.lock_addresses()
            pending = tx.pending_by_code(code)
            if pending is None or pending.expires_at <= now:
                raise NotFound("this login link is unknown or has expired: run weft up again")
            if pending.user_id != user_id:
                raise Conflict("this login was signed in as somebody else: run weft up again")
            owner = tx.user_by_id(user_id)
            if owner is None or owner.disabled_at is not None:
                raise LoginDenied("this user no longer may log in")
            node = approve_pending(
                tx,
                self.db.settings,
                pending,
                owner,
                now,
                key_expiry=pending.key_expiry,
                auth_method="oidc",
            )
            record(tx, now, "node.register", "node", node.id, user=owner.name, via="oidc")
            return Registered(node, owner)

        registered = self.db.write(confirm)
        self.db.feed.publish()
        return registered

    # links (admin)

    def identities(self, name: str | None = None) -> list[tuple[Identity, User]]:
        def listing(tx: Tx) -> list[tuple[Identity, User]]:
            owner = find_user(tx, name) if name is not None else None
            users = {u.id: u for u in tx.users()}
            found = tx.identities(owner.id if owner else None)
            return [(i, users[i.user_id]) for i in found if i.user_id in users]

        return self.db.read(listing)

    def link(self, name: str, issuer: str, subject: str, now: float) -> Identity:
        """Bind the login (issuer, subject) to the existing user ``name``."""
        issuer, subject = issuer.strip(), subject.strip()
        if not issuer or not subject:
            raise Invalid("--issuer and --subject are both needed (as the provider says them)")

        def add(tx: Tx) -> Identity:
            user = find_user(tx, name)
            other = tx.identity_by_subject(issuer, subject)
            if other is not None:
                holder = tx.user_by_id(other.user_id)
                raise Conflict(
                    f"this login is already linked to {holder.name if holder else 'a user'}:"
                    " unlink it there first"
                )
            if any(i.issuer == issuer for i in tx.identities(user.id)):
                raise Conflict(f"{name} already has a login from {issuer}: unlink it first")
            claims = Claims(issuer=issuer, subject=subject)
            linked = self._add_identity(tx, user, claims, now)
            tx.update_identity(linked.id, last_login_at=None)
            record(tx, now, "identity.link", "user", user.id, issuer=issuer, subject=subject)
            return linked

        return self.db.write(add)

    def unlink(self, name: str, issuer: str, now: float) -> int:
        """Remove ``name``'s logins from ``issuer``; how many."""

        def remove(tx: Tx) -> int:
            user = find_user(tx, name)
            gone = [i for i in tx.identities(user.id) if i.issuer == issuer.strip()]
            if not gone:
                raise NotFound(f"{name} has no login from {issuer}")
            for i in gone:
                tx.delete_identity(i.id)
                record(
                    tx, now, "identity.unlink", "user", user.id, issuer=i.issuer, subject=i.subject
                )
            return len(gone)

        return self.db.write(remove)
