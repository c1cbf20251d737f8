"""A userspace TCP/IP stack without I/O, for weftd's ``--tun userspace-networking``.

``packet`` holds the wire formats, ``tcp`` one connection's state machine (with
``congestion`` and ``reassembly``), ``stack`` the host that demultiplexes packets and
``events`` what it reports. The asyncio adapter is ``weftnet.node.userspace.net``.
"""
