"""TLS for every connection a user would put on the internet.

Clients (weftd to the coordination server and to relays, the ``weft-control`` admin
commands, a standalone relay to the coordination server) verify the server's certificate
and host name against the system's trust store, which the SSL_CERT_FILE and SSL_CERT_DIR
environment variables override as for any OpenSSL program, or, with ``--tls-ca FILE``,
against the certificate authorities in FILE only (like curl's ``--cacert``).
Verification is never turned off: there is no "insecure" switch for https.

Servers (``weft-control serve`` and ``weft-control relay`` with ``--tls-cert FILE
--tls-key FILE``) present a PEM certificate chain and key; a file that cannot be used is
refused at start with a one-line reason. TLS 1.2 is the oldest version either side speaks.

Plain http:// stays possible, because the node protocol is sealed end to end to the
server's key (controlbox): what it needs is that key, verified (``node.trust``).
"""

from __future__ import annotations

import functools
import ipaddress
import ssl
from pathlib import Path
from urllib.parse import urlsplit


class TlsError(Exception):
    """A certificate, key or CA file that cannot be used; the message says which and why."""


@functools.lru_cache(maxsize=8)
def client_context(ca_file: str | None = None) -> ssl.SSLContext:
    """A verifying client context: the system store (SSL_CERT_FILE/SSL_CERT_DIR honoured),
    or only the CAs in ``ca_file``. Cached per file: loading a store takes milliseconds."""
    try:
        ctx = ssl.create_default_context(cafile=ca_file)
    except FileNotFoundError:
        raise TlsError(f"--tls-ca {ca_file}: no such file") from None
    except (ssl.SSLError, OSError, ValueError) as e:
        raise TlsError(f"--tls-ca {ca_file}: not a PEM file of CA certificates ({e})") from None
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


def pinned_context(cert_file: str) -> ssl.SSLContext:
    """A client context that trusts exactly one server certificate: the first in
    ``cert_file`` (a server's own, read from its data directory), whatever name it is
    reached by. Only the leaf is trusted, never an intermediate that a chain file also
    holds: with the host name unchecked, trusting a CA would trust all it signed."""
    try:
        text = Path(cert_file).read_text()
    except OSError as e:
        raise TlsError(f"{cert_file}: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise TlsError(f"{cert_file}: not a PEM file") from None
    begin, end = "-----BEGIN CERTIFICATE-----", "-----END CERTIFICATE-----"
    start = text.find(begin)
    stop = text.find(end, start)
    if start < 0 or stop < 0:
        raise TlsError(f"{cert_file}: no PEM certificate in it")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = False  # the certificate itself is pinned: stronger than a name
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    try:
        ctx.load_verify_locations(cadata=text[start : stop + len(end)] + "\n")
    except ssl.SSLError as e:
        raise TlsError(f"{cert_file}: not a usable certificate ({e.reason or e})") from None
    return ctx


def server_context(cert_file: str, key_file: str) -> ssl.SSLContext:
    """A server context presenting the chain in ``cert_file`` with the key in ``key_file``."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    check_server_files(cert_file, key_file, ctx)
    return ctx


def check_server_files(cert_file: str, key_file: str, ctx: ssl.SSLContext | None = None) -> None:
    """TlsError unless ``cert_file`` and ``key_file`` are a usable PEM chain and its key."""
    ctx = ctx or ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    for flag, path in (("--tls-cert", cert_file), ("--tls-key", key_file)):
        try:
            with open(path, "rb"):
                pass
        except OSError as e:
            raise TlsError(f"{flag} {path}: {e.strerror or e}") from None
    try:
        ctx.load_cert_chain(cert_file, key_file)
    except ssl.SSLError as e:
        raise TlsError(
            f"--tls-cert {cert_file} / --tls-key {key_file}: not a PEM certificate chain and"
            f" its private key ({e.reason or e})"
        ) from None


def is_verify_error(e: BaseException) -> bool:
    """Whether ``e`` (or what caused it) is a certificate that did not verify."""
    cause = e.__cause__ or e.__context__
    return (
        isinstance(e, ssl.SSLCertVerificationError)
        or isinstance(cause, ssl.SSLCertVerificationError)
        or "CERTIFICATE_VERIFY_FAILED" in str(e)
    )


def describe(e: BaseException) -> str:
    """A one-line reason for a failed TLS connection that says what to do about it."""
    text = str(e)
    verify = e if isinstance(e, ssl.SSLCertVerificationError) else None
    cause = e.__cause__ or e.__context__
    if verify is None and isinstance(cause, ssl.SSLCertVerificationError):
        verify = cause
    if is_verify_error(e):
        detail = (verify.verify_message if verify is not None else "") or text
        return (
            f"the server's TLS certificate is not trusted ({detail}): refusing to talk to it;"
            " if the certificate is from your own CA, pass --tls-ca FILE (or set SSL_CERT_FILE)"
        )
    return text.splitlines()[0] if text else type(e).__name__


def is_https(url: str) -> bool:
    return urlsplit(url).scheme == "https"


def is_loopback_url(url: str) -> bool:
    """Whether ``url``'s host is this machine (localhost or a loopback address)."""
    host = urlsplit(url).hostname or ""
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
