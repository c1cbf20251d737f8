# Type stub of the C extension (_fastpath.c); the pure twin is reference.py.
from weftnet.wireguard.replay import ReplayWindow as _PyReplayWindow

MAX_SEGMENTS: int
MAX_PACKET: int
MAX_COALESCE: int

class Aead:
    def __init__(self, key: bytes) -> None: ...

class ReplayWindow:
    def check_and_update(self, counter: int) -> bool: ...
    def reset(self) -> None: ...

def seal_packet(
    aead: Aead,
    remote_index: int,
    counter: int,
    pkt: bytes | bytearray | memoryview,
    vnet: bool,
    mtu: int,
    out: bytearray | memoryview,
    out_off: int,
) -> tuple[int, int, int]: ...
def open_messages(
    aead: Aead,
    replay: ReplayWindow | _PyReplayWindow,
    local_index: int,
    buf: bytes | bytearray | memoryview,
    start: int,
    end: int,
    seg: int,
    dec: bytearray,
    dec_off: int,
    coalesce: bool,
) -> tuple[int, int, list[tuple[int, int, int]], int, int, int]: ...
