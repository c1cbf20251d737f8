"""The pure wire formats of port mapping: NAT-PMP, PCP, SSDP and the IGD's XML/SOAP.
Known answers from miniupnpd (tests/portmap/vectors.py), hand-built ones from the RFCs,
and every parser fuzzed: it parses, or raises ProtocolError, nothing else."""

from __future__ import annotations

import contextlib
import functools
import struct
from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.portmap import vectors
from weftnet.portmap import natpmp, pcp, upnp
from weftnet.wireguard.errors import ProtocolError

GATEWAY = "198.18.1.1"
NONCE = bytes(range(12))


# -- NAT-PMP (RFC 6886) ---------------------------------------------------------------


def test_natpmp_requests() -> None:
    assert natpmp.external_address_request() == b"\x00\x00"
    assert natpmp.map_request(41641, 41641, 7200) == bytes.fromhex("0001 0000 a2a9 a2a9 00001c20")
    assert natpmp.map_request(41641, 0, 0)[-6:] == bytes.fromhex("0000 00000000")  # delete
    with pytest.raises(ValueError):
        natpmp.map_request(0, 1, 1)


def test_natpmp_answers_from_miniupnpd() -> None:
    assert natpmp.parse_address_response(vectors.NATPMP_ADDRESS) == natpmp.AddressResponse(
        5, "198.18.0.2"
    )
    assert natpmp.parse_map_response(vectors.NATPMP_MAP) == natpmp.MapResponse(5, 41641, 41641, 30)


def test_natpmp_refusal_and_wrong_answers() -> None:
    refused = bytearray(vectors.NATPMP_MAP)
    refused[3] = 2  # result: not authorized
    with pytest.raises(natpmp.NatPmpError, match="not authorized") as e:
        natpmp.parse_map_response(bytes(refused))
    assert e.value.code == 2
    with pytest.raises(ProtocolError, match="opcode"):
        natpmp.parse_map_response(vectors.NATPMP_ADDRESS)
    with pytest.raises(ProtocolError, match="12"):
        natpmp.parse_address_response(vectors.NATPMP_ADDRESS + b"\0")
    with pytest.raises(ProtocolError, match="version"):
        natpmp.parse_map_response(b"\x02" + vectors.NATPMP_MAP[1:])


# -- PCP (RFC 6887) -------------------------------------------------------------------


def pcp_answer(op: int, result: int = 0, lifetime: int = 7200, body: bytes = b"") -> bytes:
    return struct.pack(">BBBBII12x", 2, 0x80 | op, 0, result, lifetime, 99) + body


def map_body(
    port: int = 41641, ip: bytes = b"\0" * 10 + b"\xff\xff" + bytes([198, 18, 0, 2])
) -> bytes:
    return NONCE + struct.pack(">B3xHH", 17, 41641, port) + ip


def test_pcp_map_request_layout() -> None:
    req = pcp.map_request("198.18.1.2", NONCE, 41641, 41641, 7200)
    assert len(req) == 60
    assert req[:4] == b"\x02\x01\x00\x00" and req[4:8] == (7200).to_bytes(4, "big")
    assert req[8:24] == bytes(10) + b"\xff\xff" + bytes([198, 18, 1, 2])
    assert req[24:36] == NONCE and req[36] == 17 and req[40:44] == bytes.fromhex("a2a9a2a9")
    assert req[44:60] == bytes(10) + b"\xff\xff" + bytes(4)  # any external address
    assert pcp.announce_request("198.18.1.2")[:8] == b"\x02\x00\x00\x00\x00\x00\x00\x00"
    with pytest.raises(ValueError):
        pcp.map_request("198.18.1.2", b"short", 41641, 0, 1)


def test_pcp_answers() -> None:
    r = pcp.parse_response(pcp_answer(1, body=map_body(40000)))
    assert r == pcp.Response(1, 7200, 99, NONCE, 41641, 40000, "198.18.0.2")
    assert pcp.parse_response(pcp_answer(0, lifetime=0)).opcode == pcp.OP_ANNOUNCE
    with pytest.raises(pcp.PcpError, match="not authorized") as e:
        pcp.parse_response(pcp_answer(1, result=2, body=map_body()))
    assert e.value.code == 2
    with pytest.raises(ProtocolError, match="too short"):
        pcp.parse_response(pcp_answer(1, body=map_body()[:20]))
    with pytest.raises(ProtocolError, match="R bit"):
        pcp.parse_response(pcp.announce_request("198.18.1.2"))


def test_a_natpmp_gateway_answers_pcp_with_unsupported_version() -> None:
    # RFC 6887 section 9: a NAT-PMP server answers version 0, result 1.
    with pytest.raises(pcp.UnsupportedVersion):
        pcp.parse_response(bytes.fromhex("0080 0001 00000005"))


# -- UPnP IGD -------------------------------------------------------------------------


def test_m_search() -> None:
    text = upnp.m_search().decode()
    assert text.startswith("M-SEARCH * HTTP/1.1\r\nHOST: 239.255.255.250:1900\r\n")
    assert 'MAN: "ssdp:discover"' in text and text.endswith("\r\n\r\n")
    assert "ST: urn:schemas-upnp-org:device:InternetGatewayDevice:1" in text


def test_ssdp_answer_from_miniupnpd() -> None:
    assert upnp.parse_ssdp_response(vectors.SSDP, GATEWAY) == "http://198.18.1.1:5000/rootDesc.xml"


@pytest.mark.parametrize(
    "location",
    [
        "http://198.18.9.9:5000/rootDesc.xml",  # another host than the one that answered
        "https://198.18.1.1/rootDesc.xml",
        "file:///etc/passwd",
        "http://[::1]:5000/x",
        "http://198.18.1.1:99999/x",
    ],
)
def test_ssdp_answers_pointing_elsewhere_are_refused(location: str) -> None:
    data = vectors.SSDP.replace(b"http://198.18.1.1:5000/rootDesc.xml", location.encode())
    with pytest.raises(ProtocolError):
        upnp.parse_ssdp_response(data, GATEWAY)


def test_the_wan_service_of_miniupnpds_description() -> None:
    svc = upnp.parse_description(
        vectors.DESCRIPTION, "http://198.18.1.1:5000/rootDesc.xml", GATEWAY
    )
    assert svc == upnp.Service(
        "urn:schemas-upnp-org:service:WANIPConnection:2", "http://198.18.1.1:5000/ctl/IPConn"
    )


def test_a_description_without_a_wan_service_or_sending_us_elsewhere() -> None:
    no_wan = vectors.DESCRIPTION.replace(b"WANIPConnection:2", b"Other:1")
    with pytest.raises(ProtocolError, match="no WANIPConnection"):
        upnp.parse_description(no_wan, "http://198.18.1.1:5000/rootDesc.xml", GATEWAY)
    elsewhere = vectors.DESCRIPTION.replace(b"/ctl/IPConn", b"http://198.18.7.7/ctl")
    with pytest.raises(ProtocolError, match="not http:// on the gateway"):
        upnp.parse_description(elsewhere, "http://198.18.1.1:5000/rootDesc.xml", GATEWAY)


BILLION_LAUGHS = (
    b'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
    b'<!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">]><root>&lol2;</root>'
)


def test_xml_with_a_dtd_or_too_big_is_refused() -> None:
    with pytest.raises(ProtocolError, match="DTD"):
        upnp.parse_xml(BILLION_LAUGHS)
    with pytest.raises(ProtocolError, match="too much"):
        upnp.parse_xml(b"<a>" + b"x" * upnp.MAX_XML_BYTES + b"</a>")


def test_soap_request() -> None:
    svc = upnp.Service("urn:schemas-upnp-org:service:WANIPConnection:1", "http://198.18.1.1/c")
    args = upnp.add_port_mapping_args(41641, "198.18.1.2", 41641, 7200, "a<b")
    headers, body = upnp.soap_request(svc, "AddPortMapping", args)
    assert (
        headers["SOAPAction"] == '"urn:schemas-upnp-org:service:WANIPConnection:1#AddPortMapping"'
    )
    assert b"<NewLeaseDuration>7200</NewLeaseDuration>" in body
    assert b"<NewPortMappingDescription>a&lt;b</NewPortMappingDescription>" in body
    assert b"<NewInternalClient>198.18.1.2</NewInternalClient>" in body
    with pytest.raises(ValueError):
        upnp.soap_request(svc, "Add><x", {})


def test_soap_answers_from_miniupnpd() -> None:
    ip = upnp.parse_soap_response(200, vectors.EXTERNAL_IP, "GetExternalIPAddress")
    assert upnp.parse_external_ip(ip) == "198.18.0.2"
    assert upnp.parse_soap_response(200, vectors.ADDED, "AddPortMapping") == {}
    any_port = upnp.parse_soap_response(200, vectors.ADDED_ANY, "AddAnyPortMapping")
    assert upnp.parse_reserved_port(any_port) == 41642
    entry = upnp.parse_soap_response(200, vectors.ENTRY, "GetSpecificPortMappingEntry")
    assert entry["NewInternalClient"] == "198.18.1.2" and entry["NewLeaseDuration"] == "60"
    with pytest.raises(upnp.UpnpFault, match="718") as e:
        upnp.parse_soap_response(500, vectors.CONFLICT, "AddPortMapping")
    assert e.value.code == upnp.CONFLICT_IN_MAPPING_ENTRY
    with pytest.raises(ProtocolError, match="expected AddPortMappingResponse"):
        upnp.parse_soap_response(200, vectors.ENTRY, "AddPortMapping")
    with pytest.raises(ProtocolError, match="HTTP 500"):
        upnp.parse_soap_response(500, vectors.ADDED, "AddPortMapping")


# -- fuzzing: every parser parses or raises ProtocolError --------------------------------


def _parses_or_protocol_error(parse: Callable[[bytes], object], data: bytes) -> None:
    with contextlib.suppress(ProtocolError):
        parse(data)


@given(st.binary(max_size=64))
def test_natpmp_parsers_never_crash(data: bytes) -> None:
    _parses_or_protocol_error(natpmp.parse_address_response, data)
    _parses_or_protocol_error(natpmp.parse_map_response, data)


@given(st.binary(max_size=120))
def test_pcp_parser_never_crashes(data: bytes) -> None:
    _parses_or_protocol_error(pcp.parse_response, data)


@given(st.integers(0, 59), st.integers(0, 255))
def test_pcp_parser_with_one_byte_changed(at: int, value: int) -> None:
    data = bytearray(pcp_answer(1, body=map_body()))
    data[at] = value
    _parses_or_protocol_error(pcp.parse_response, bytes(data))


@given(st.binary(max_size=300) | st.text(max_size=300).map(str.encode))
def test_ssdp_parser_never_crashes(data: bytes) -> None:
    _parses_or_protocol_error(lambda d: upnp.parse_ssdp_response(d, GATEWAY), data)


@given(st.integers(0, len(vectors.SSDP) - 1), st.binary(min_size=1, max_size=8))
def test_ssdp_parser_with_bytes_changed(at: int, junk: bytes) -> None:
    data = vectors.SSDP[:at] + junk + vectors.SSDP[at + len(junk) :]
    _parses_or_protocol_error(lambda d: upnp.parse_ssdp_response(d, GATEWAY), data)


_XML = st.recursive(
    st.text(alphabet="abc<>/&;!?=\"' ", max_size=20),
    lambda inner: st.tuples(st.sampled_from(["service", "controlURL", "serviceType", "s:Body",
                                             "Envelope", "UPnPError", "errorCode"]),
                            inner).map(lambda t: f"<{t[0]}>{t[1]}</{t[0]}>"),
    max_leaves=8,
)  # fmt: skip


@given(_XML.map(str.encode) | st.binary(max_size=300))
def test_xml_parsers_never_crash(data: bytes) -> None:
    _parses_or_protocol_error(
        lambda d: upnp.parse_description(d, "http://198.18.1.1:5000/d.xml", GATEWAY), data
    )
    for status in (200, 500):
        _parses_or_protocol_error(functools.partial(upnp.parse_soap_response, status, action="X"),
                                  data)  # fmt: skip


@given(st.integers(0, len(vectors.CONFLICT) - 1), st.binary(min_size=1, max_size=4))
def test_soap_parser_with_bytes_changed(at: int, junk: bytes) -> None:
    for vector in (vectors.CONFLICT, vectors.EXTERNAL_IP):
        data = vector[:at] + junk + vector[at + len(junk) :]
        _parses_or_protocol_error(lambda d: upnp.parse_soap_response(200, d, "X"), data)
        _parses_or_protocol_error(
            lambda d: upnp.parse_external_ip(
                upnp.parse_soap_response(200, d, "GetExternalIPAddress")
            ),
            data,
        )
