"""The relay: nodes without a direct path exchange WireGuard datagrams through it.

``protocol`` (frames, pure), ``upgrade`` (the HTTP/1.1 upgrade, pure), ``limits`` (token
bucket and notice throttle, pure), ``server`` (asyncio relay core) and ``client``
(asyncio client core with reconnection). The frame format is docs/relay-protocol.md.
The package itself imports nothing, so the pure modules load without asyncio.
"""
