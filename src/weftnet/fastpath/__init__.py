"""The data plane's batch functions, in C where the extension is built.

``seal_packet`` and ``open_messages`` (see ``reference``) carry every per-packet step of
the data plane's hot loops: segmentation, checksums, padding, ChaCha20-Poly1305, the
replay window and the merging of TCP segments into one TUN write. The C extension
``_fastpath`` (built by pip from ``_fastpath.c`` with libgcrypt's ChaCha20-Poly1305) does them
without the Python overhead of a call per packet; ``reference`` is the same in pure
Python, kept byte for byte equal by a differential test and used where the extension is
not built (a machine without a compiler) or when weftd runs with ``WEFT_DATAPATH=python``
(``use``).

``Aead`` and ``ReplayWindow`` are the key and window types the chosen functions take;
``weftnet.wireguard.session.Keypair`` builds its own from them. ``IMPLEMENTATION`` says
which one is in use ("c" or "python"), for ``weft status``.
"""

from __future__ import annotations

from types import ModuleType

from weftnet.fastpath import reference

native: ModuleType | None
try:
    from weftnet.fastpath import _fastpath

    native = _fastpath
except ImportError:  # not built: the pure path
    native = None

IMPLEMENTATION = ""
Aead = reference.Aead
ReplayWindow = reference.ReplayWindow
seal_packet = reference.seal_packet
open_messages = reference.open_messages


def use(implementation: str) -> None:
    """Choose "c" or "python" for what is created from now on (keypairs, data planes);
    weftd does this once at start (``WEFT_DATAPATH=python`` picks the pure path)."""
    global IMPLEMENTATION, Aead, ReplayWindow, seal_packet, open_messages
    if implementation not in ("c", "python"):
        raise ValueError(f"unknown data path implementation {implementation!r}: c or python")
    if implementation == "c" and native is None:
        raise ValueError("the C data path (weftnet.fastpath._fastpath) is not built")
    impl = native if implementation == "c" and native is not None else reference
    IMPLEMENTATION = implementation
    Aead, ReplayWindow = impl.Aead, impl.ReplayWindow
    seal_packet, open_messages = impl.seal_packet, impl.open_messages


use("c" if native is not None else "python")

__all__ = [
    "IMPLEMENTATION",
    "Aead",
    "ReplayWindow",
    "native",
    "open_messages",
    "reference",
    "seal_packet",
    "use",
]
