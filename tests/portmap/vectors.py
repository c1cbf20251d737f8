"""Answers captured from Debian's miniupnpd 2.3.1 in the lab (weftlab.miniupnpd): the
gateway at 198.18.1.1, its WAN address 198.18.0.2, our host 198.18.1.2."""

from __future__ import annotations

NATPMP_ADDRESS = bytes.fromhex("0080000000000005c6120002")  # epoch 5 s, 198.18.0.2
NATPMP_MAP = bytes.fromhex("0081000000000005a2a9a2a90000001e")  # 41641 -> 41641, 30 s

SSDP = (
    b"HTTP/1.1 200 OK\r\n"
    b"CACHE-CONTROL: max-age=120\r\n"
    b"ST: urn:schemas-upnp-org:device:InternetGatewayDevice:1\r\n"
    b"USN: uuid:5e1f0a52-7a3c-4c11-9f0e-1b9f3f5e0a01::urn:schemas-upnp-org:device:"
    b"InternetGatewayDevice:1\r\n"
    b"EXT:\r\n"
    b"SERVER: Debian/6.1 UPnP/1.1 MiniUPnPd/2.3.1\r\n"
    b"LOCATION: http://198.18.1.1:5000/rootDesc.xml\r\n"
    b'OPT: "http://schemas.upnp.org/upnp/1/0/"; ns=01\r\n'
    b"01-NLS: 1796314744\r\n"
    b"BOOTID.UPNP.ORG: 1796314744\r\n"
    b"CONFIGID.UPNP.ORG: 1337\r\n"
    b"\r\n"
)

_SERVICE = (
    "<service><serviceType>urn:schemas-upnp-org:service:{0}</serviceType>"
    "<serviceId>urn:upnp-org:serviceId:{0}</serviceId><SCPDURL>/{1}.xml</SCPDURL>"
    "<controlURL>/ctl/{1}</controlURL><eventSubURL>/evt/{1}</eventSubURL></service>"
)
DESCRIPTION = (
    '<?xml version="1.0"?>\n<root xmlns="urn:schemas-upnp-org:device-1-0" configId="1337">'
    "<specVersion><major>1</major><minor>1</minor></specVersion><device>"
    "<deviceType>urn:schemas-upnp-org:device:InternetGatewayDevice:2</deviceType>"
    "<friendlyName>Debian router</friendlyName><serviceList>"
    + _SERVICE.format("Layer3Forwarding:1", "L3F")
    + "</serviceList><deviceList><device>"
    "<deviceType>urn:schemas-upnp-org:device:WANDevice:2</deviceType><serviceList>"
    + _SERVICE.format("WANCommonInterfaceConfig:1", "CmnIfCfg")
    + "</serviceList><deviceList><device>"
    "<deviceType>urn:schemas-upnp-org:device:WANConnectionDevice:2</deviceType><serviceList>"
    + _SERVICE.format("WANIPConnection:2", "IPConn")
    + _SERVICE.format("WANIPv6FirewallControl:1", "IP6FCtl")
    + "</serviceList></device></deviceList></device></deviceList></device></root>"
).encode()

_ENVELOPE = (
    '<?xml version="1.0"?>\r\n<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"'
    ' s:encodingStyle="http://schemas.xmlsoap.org/soap/encoding/"><s:Body>{}</s:Body>'
    "</s:Envelope>\r\n"
)
_NS = 'xmlns:u="urn:schemas-upnp-org:service:WANIPConnection:2"'
EXTERNAL_IP = _ENVELOPE.format(
    f"<u:GetExternalIPAddressResponse {_NS}><NewExternalIPAddress>198.18.0.2"
    "</NewExternalIPAddress></u:GetExternalIPAddressResponse>"
).encode()
ADDED = _ENVELOPE.format(f"<u:AddPortMappingResponse {_NS}/>").encode()
ADDED_ANY = _ENVELOPE.format(
    f"<u:AddAnyPortMappingResponse {_NS}><NewReservedPort>41642</NewReservedPort>"
    "</u:AddAnyPortMappingResponse>"
).encode()
ENTRY = _ENVELOPE.format(
    f"<u:GetSpecificPortMappingEntryResponse {_NS}><NewInternalPort>41641</NewInternalPort>"
    "<NewInternalClient>198.18.1.2</NewInternalClient><NewEnabled>1</NewEnabled>"
    "<NewPortMappingDescription>weftnet</NewPortMappingDescription>"
    "<NewLeaseDuration>60</NewLeaseDuration></u:GetSpecificPortMappingEntryResponse>"
).encode()
DELETED = _ENVELOPE.format(
    f"<u:DeletePortMappingResponse {_NS}></u:DeletePortMappingResponse>"
).encode()
CONFLICT = _ENVELOPE.format(  # UDA 1.1 section 3.2.2, the fault miniupnpd sends with HTTP 500
    "<s:Fault><faultcode>s:Client</faultcode><faultstring>UPnPError</faultstring><detail>"
    '<UPnPError xmlns="urn:schemas-upnp-org:control-1-0"><errorCode>718</errorCode>'
    "<errorDescription>ConflictInMappingEntry</errorDescription></UPnPError></detail></s:Fault>"
).encode()
