"""UPnP IGD: SSDP discovery, the device description, and the WANIPConnection SOAP calls.

Theory of operation (UPnP Device Architecture 1.1; IGD WANIPConnection:1 and :2):

1. Discovery: an M-SEARCH (HTTP over UDP) to 239.255.255.250:1900 asks for an
   InternetGatewayDevice; each answer is an HTTP 200 whose LOCATION header is the URL of
   the device description (``parse_ssdp_response``).
2. The description (XML) lists nested devices and their services; the one to use is a
   WANIPConnection (or WANPPPConnection) service, whose controlURL (relative to
   URLBase or the description's URL) receives the SOAP calls (``parse_description``).
3. SOAP: GetExternalIPAddress, AddPortMapping (external port, UDP, internal client and
   port, lease in seconds; 0 would mean "forever", which we never ask for),
   DeletePortMapping and GetSpecificPortMappingEntry (``soap_request``); the answer is
   an HTTP body with ``<NewX>`` values or a ``UPnPError`` fault (``parse_soap_response``).

The XML comes from a device on the LAN, so it is parsed with care: at most
``MAX_XML_BYTES``, no DTD or entity declarations (no entity expansion attacks), and any
parse failure is one ProtocolError.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit
from xml.etree import ElementTree

from weftnet.portmap.errors import Refused
from weftnet.wireguard.errors import ProtocolError

SSDP_GROUP = "239.255.255.250"  # UDA 1.1 section 1.1.2
SSDP_PORT = 1900
SEARCH_TARGET = "urn:schemas-upnp-org:device:InternetGatewayDevice:1"
MAX_SSDP_BYTES = 2048  # an SSDP answer is a few hundred bytes
MAX_XML_BYTES = 64 * 1024  # a device description or SOAP answer; miniupnpd's are ~3 KiB
MAX_HEADER_LINES = 50
SERVICE_TYPES = (  # preferred first
    "urn:schemas-upnp-org:service:WANIPConnection:2",
    "urn:schemas-upnp-org:service:WANIPConnection:1",
    "urn:schemas-upnp-org:service:WANPPPConnection:1",
)
CONFLICT_IN_MAPPING_ENTRY = 718  # IGD: the external port is mapped to another client
_DANGEROUS_XML = re.compile(rb"<!\s*(DOCTYPE|ENTITY)", re.IGNORECASE)
_SOAP_ENV = "http://schemas.xmlsoap.org/soap/envelope/"


class UpnpFault(Refused):
    """The device answered a SOAP call with a UPnPError."""

    protocol = "UPnP"


@dataclass(frozen=True, slots=True)
class Service:
    service_type: str
    control_url: str


def m_search(mx_s: int = 1) -> bytes:
    """The SSDP M-SEARCH for an Internet gateway device (answers within ``mx_s``)."""
    return (
        "M-SEARCH * HTTP/1.1\r\n"
        f"HOST: {SSDP_GROUP}:{SSDP_PORT}\r\n"
        'MAN: "ssdp:discover"\r\n'
        f"MX: {mx_s}\r\n"
        f"ST: {SEARCH_TARGET}\r\n"
        "\r\n"
    ).encode()


def parse_headers(data: bytes) -> tuple[str, dict[str, str]]:
    """An HTTP(U) head: the status line and the headers (lower-case names)."""
    if len(data) > MAX_SSDP_BYTES:
        raise ProtocolError(f"SSDP: a {len(data)}-byte answer is too long")
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError as e:
        raise ProtocolError("SSDP: the answer is not ASCII") from e
    lines = text.split("\r\n")
    if len(lines) > MAX_HEADER_LINES:
        raise ProtocolError("SSDP: too many header lines")
    headers = {}
    for line in lines[1:]:
        if not line:
            break
        name, sep, value = line.partition(":")
        if not sep:
            raise ProtocolError(f"SSDP: malformed header line {line[:40]!r}")
        headers[name.strip().lower()] = value.strip()
    return lines[0], headers


def parse_ssdp_response(data: bytes, gateway: str) -> str:
    """The description URL from an M-SEARCH answer. The URL must point at ``gateway``
    (the answer's source): a device that names another host is not followed."""
    status, headers = parse_headers(data)
    parts = status.split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or parts[1] != "200":
        raise ProtocolError(f"SSDP: not a 200 answer: {status[:40]!r}")
    location = headers.get("location")
    if not location:
        raise ProtocolError("SSDP: the answer has no LOCATION")
    check_url(location, gateway)
    return location


def check_url(url: str, gateway: str) -> None:
    """An http:// URL whose host is ``gateway``; ProtocolError otherwise."""
    try:
        parts = urlsplit(url)
        port = parts.port
        host = ipaddress.ip_address(parts.hostname or "")
    except ValueError as e:
        raise ProtocolError(f"UPnP: bad URL {url[:80]!r}") from e
    if parts.scheme != "http" or str(host) != gateway or port == 0:
        raise ProtocolError(f"UPnP: URL {url[:80]!r} is not http:// on the gateway {gateway}")


def parse_xml(data: bytes) -> ElementTree.Element:
    if len(data) > MAX_XML_BYTES:
        raise ProtocolError(f"UPnP: {len(data)} bytes of XML is too much")
    if _DANGEROUS_XML.search(data):
        raise ProtocolError("UPnP: XML with a DTD or entity declarations is refused")
    try:
        return ElementTree.fromstring(data)
    except ElementTree.ParseError as e:
        raise ProtocolError(f"UPnP: malformed XML ({e})") from e


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _child_text(el: ElementTree.Element, name: str) -> str | None:
    for child in el:
        if _local(child.tag) == name:
            return (child.text or "").strip()
    return None


def parse_description(data: bytes, location: str, gateway: str) -> Service:
    """The WAN connection service of a device description fetched from ``location``."""
    root = parse_xml(data)
    base = _child_text(root, "URLBase") or location
    found: dict[str, str] = {}
    for el in root.iter():
        if _local(el.tag) != "service":
            continue
        stype, control = _child_text(el, "serviceType"), _child_text(el, "controlURL")
        if stype in SERVICE_TYPES and control and stype not in found:
            found[stype] = control
    for stype in SERVICE_TYPES:
        if stype in found:
            url = urljoin(base, found[stype])
            check_url(url, gateway)
            return Service(stype, url)
    raise ProtocolError("UPnP: the device offers no WANIPConnection or WANPPPConnection")


def soap_request(
    service: Service, action: str, args: dict[str, str]
) -> tuple[dict[str, str], bytes]:
    """The HTTP headers and body of a SOAP call of ``action`` with ``args`` (in order)."""
    if not re.fullmatch(r"[A-Za-z]+", action):
        raise ValueError(f"bad SOAP action {action!r}")
    params = "".join(f"<{k}>{_escape(v)}</{k}>" for k, v in args.items())
    body = (
        '<?xml version="1.0"?>\r\n'
        f'<s:Envelope xmlns:s="{_SOAP_ENV}" '
        's:encodingStyle="http://schemas.xmlsoap.org/soap/encoding/">'
        f'<s:Body><u:{action} xmlns:u="{service.service_type}">{params}</u:{action}>'
        "</s:Body></s:Envelope>\r\n"
    ).encode()
    headers = {
        "Content-Type": 'text/xml; charset="utf-8"',
        "SOAPAction": f'"{service.service_type}#{action}"',
    }
    return headers, body


def _escape(value: str) -> str:
    return value.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def add_port_mapping_args(
    external_port: int, internal_client: str, internal_port: int, lease_s: int, description: str
) -> dict[str, str]:
    return {
        "NewRemoteHost": "",
        "NewExternalPort": str(external_port),
        "NewProtocol": "UDP",
        "NewInternalPort": str(internal_port),
        "NewInternalClient": internal_client,
        "NewEnabled": "1",
        "NewPortMappingDescription": description,
        "NewLeaseDuration": str(lease_s),
    }


def port_args(external_port: int) -> dict[str, str]:
    """The arguments of DeletePortMapping and GetSpecificPortMappingEntry."""
    return {"NewRemoteHost": "", "NewExternalPort": str(external_port), "NewProtocol": "UDP"}


def parse_soap_response(status: int, data: bytes, action: str) -> dict[str, str]:
    """The output arguments of ``action``; UpnpFault for a UPnPError, ProtocolError for
    anything else that is not its answer."""
    root = parse_xml(data)
    if _local(root.tag) != "Envelope":
        raise ProtocolError("UPnP: the answer is not a SOAP envelope")
    body = next((el for el in root if _local(el.tag) == "Body"), None)
    if body is None or len(body) == 0:
        raise ProtocolError("UPnP: the SOAP answer has no body")
    answer = body[0]
    if _local(answer.tag) == "Fault":
        for el in answer.iter():
            if _local(el.tag) == "UPnPError":
                code = _child_text(el, "errorCode") or ""
                text = _child_text(el, "errorDescription") or "no description"
                if not code.isdigit() or len(code) > 6:
                    raise ProtocolError(f"UPnP: a fault with a bad error code {code[:20]!r}")
                raise UpnpFault(int(code), text[:200])
        raise ProtocolError(f"UPnP: SOAP fault without a UPnPError (HTTP {status})")
    if status != 200:
        raise ProtocolError(f"UPnP: HTTP {status} to {action}")
    if _local(answer.tag) != f"{action}Response":
        raise ProtocolError(f"UPnP: expected {action}Response, got {_local(answer.tag)[:40]}")
    return {_local(el.tag): (el.text or "").strip() for el in answer}


def parse_external_ip(values: dict[str, str]) -> str:
    text = values.get("NewExternalIPAddress", "")
    try:
        return str(ipaddress.IPv4Address(text))
    except ValueError as e:
        raise ProtocolError(f"UPnP: bad external address {text[:40]!r}") from e


def parse_reserved_port(values: dict[str, str]) -> int:
    """AddAnyPortMapping's answer: the external port the router chose."""
    text = values.get("NewReservedPort", "")
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise ProtocolError(f"UPnP: bad reserved port {text[:20]!r}")
    return int(text)
