"""The tailnet's run-time settings (device approval) and reading the audit log.

Settings live in the settings table; changing one is audited in its transaction and
published (a setting may change what nodes see). The audit log is append-only: the
rules write it (``audit.record``); this only reads it, newest first.
"""

from __future__ import annotations

import time

from weftnet.control.domain.records import AuditEntry, Tx
from weftnet.control.service.audit import record as audit
from weftnet.control.service.core import (
    DEVICE_APPROVAL_SETTING,
    Db,
    Invalid,
    TailnetSettings,
    tailnet_settings,
)

MAX_AUDIT_PAGE = 1000  # entries in one page of list_audit


class TailnetRules:
    def __init__(self, db: Db) -> None:
        self.db = db

    def tailnet_settings(self) -> TailnetSettings:
        return self.db.read(tailnet_settings)

    def set_tailnet_settings(
        self, *, device_approval: bool, now: float | None = None
    ) -> TailnetSettings:
        """Turn device approval on (new devices wait for an admin) or off (devices
        waiting stay waiting until approved; new ones join at once)."""
        at = time.time() if now is None else now

        def apply(tx: Tx) -> TailnetSettings:
            if tailnet_settings(tx).device_approval != device_approval:
                tx.set_setting(DEVICE_APPROVAL_SETTING, "on" if device_approval else "off")
                audit(tx, at, "settings.set", "setting", DEVICE_APPROVAL_SETTING,
                      value=device_approval)  # fmt: skip
            return tailnet_settings(tx)

        settings = self.db.write(apply)
        self.db.feed.publish()
        return settings

    def list_audit(
        self, *, limit: int = 100, before_id: int | None = None, since: float | None = None
    ) -> list[AuditEntry]:
        """Entries newest first: at most ``limit``, older than entry ``before_id``, at or
        after ``since`` (unix seconds)."""
        if not 1 <= limit <= MAX_AUDIT_PAGE:
            raise Invalid(f"limit must be between 1 and {MAX_AUDIT_PAGE}")
        return self.db.read(
            lambda tx: tx.audit_entries(limit=limit, before_id=before_id, since=since)
        )
