"""Rules for the DNS settings: get, check and set the DNS document (docs/control-protocol.md).

The document lives in the settings table in two parts: the tailnet's domain in
``dns_domain`` (as ``serve --dns-domain`` has always stored it) and the rest, as
canonical JSON, in ``dns``. ``set_dns`` checks the whole document and writes both in one
transaction, so a refused document changes nothing; a document without ``base_domain``
keeps the domain in force. With no document set, nodes get the default: MagicDNS on
under the domain, the OS's own resolvers for everything else.

The map hub reads the compiled ``tailcfg.DNSConfig`` with every snapshot (``config``)
and pushes it to every stream when it changed. The hosts a domain must not swallow
(the control server's, the relays') are known to the server layer, which passes them in.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Iterable
from typing import Any

from weftnet import tailcfg
from weftnet.control.domain import dnsdoc
from weftnet.control.domain.records import Tx
from weftnet.control.service.audit import record as audit
from weftnet.control.service.core import DEFAULT_DNS_DOMAIN, Db, Invalid

DNS_SETTING = "dns"
DOMAIN_SETTING = "dns_domain"


@dataclasses.dataclass(frozen=True, slots=True)
class Checked:
    document: dnsdoc.DNSDocument
    domain: str  # the tailnet's domain the document puts in force


class DnsRules:
    def __init__(self, db: Db) -> None:
        self.db = db
        self._cache: tuple[tuple[str | None, str], tailcfg.DNSConfig] | None = None

    @staticmethod
    def _stored(tx: Tx) -> tuple[dnsdoc.DNSDocument, str]:
        text = tx.get_setting(DNS_SETTING)
        domain = tx.get_setting(DOMAIN_SETTING) or DEFAULT_DNS_DOMAIN
        if text is None:
            return dnsdoc.DEFAULT_DOCUMENT, domain
        try:
            return dnsdoc.parse(json.loads(text)), domain
        except ValueError:
            # Written by a newer server, or edited by hand: maps must still build, so
            # nodes get the default until an admin sets the document again.
            return dnsdoc.DEFAULT_DOCUMENT, domain

    def config(self, tx: Tx) -> tailcfg.DNSConfig:
        """The DNSConfig in force in ``tx`` (compiled once per stored document)."""
        key = (tx.get_setting(DNS_SETTING), tx.get_setting(DOMAIN_SETTING) or DEFAULT_DNS_DOMAIN)
        cached = self._cache
        if cached is not None and cached[0] == key:
            return cached[1]
        doc, domain = self._stored(tx)
        config = dnsdoc.compile_config(doc, domain)
        self._cache = (key, config)
        return config

    def get_dns(self) -> dict[str, Any]:
        """The document in force, with the tailnet's domain as its ``base_domain``."""

        def read(tx: Tx) -> dict[str, Any]:
            doc, domain = self._stored(tx)
            return doc.to_json(domain)

        return self.db.read(read)

    @staticmethod
    def _checked(
        tx: Tx, value: object, server_hosts: Iterable[str], relay_hosts: Iterable[str]
    ) -> Checked:
        try:
            doc = dnsdoc.document(value)
            domain = doc.base_domain or tx.get_setting(DOMAIN_SETTING) or DEFAULT_DNS_DOMAIN
            dnsdoc.check_split(doc.split, domain)
            dnsdoc.check_domain(domain, server_hosts, relay_hosts)
        except dnsdoc.DNSError as e:
            raise Invalid(f"DNS settings refused: {e}") from None
        return Checked(doc, domain)

    def check_dns(
        self, value: object, server_hosts: Iterable[str] = (), relay_hosts: Iterable[str] = ()
    ) -> dict[str, Any]:
        """Check a document (text or decoded JSON); change nothing. Returns it as
        ``set_dns`` would store it."""
        checked = self.db.read(lambda tx: self._checked(tx, value, server_hosts, relay_hosts))
        return checked.document.to_json(checked.domain)

    def set_dns(
        self, value: object, server_hosts: Iterable[str] = (), relay_hosts: Iterable[str] = ()
    ) -> dict[str, Any]:
        """Check and store a document in one transaction; Invalid leaves the old one."""
        server_hosts, relay_hosts = list(server_hosts), list(relay_hosts)

        def store(tx: Tx) -> Checked:
            checked = self._checked(tx, value, server_hosts, relay_hosts)
            rest = dataclasses.replace(checked.document, base_domain=None)
            tx.set_setting(DNS_SETTING, json.dumps(rest.to_json(), separators=(",", ":")))
            tx.set_setting(DOMAIN_SETTING, checked.domain)
            audit(tx, time.time(), "dns.set", "dns", checked.domain)
            return checked

        checked = self.db.write(store)
        self.db.settings = dataclasses.replace(self.db.settings, dns_domain=checked.domain)
        self.db.feed.publish()
        return checked.document.to_json(checked.domain)
