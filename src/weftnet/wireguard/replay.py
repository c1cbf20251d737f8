"""The receive-side anti-replay window for transport data counters.

Theory of operation (WireGuard whitepaper section 5.4.6; RFC 6479; Linux
drivers/net/wireguard/receive.c ``counter_validate``):

Every transport message carries a 64-bit counter, used once per keypair. Packets may
arrive reordered, so the receiver accepts any counter it has not seen yet, as long as it
is no more than COUNTER_WINDOW_SIZE behind the highest counter accepted so far.

The seen-set is a ring of COUNTER_BITS_TOTAL bits kept as BLOCKS 64-bit words. Bit ``n``
for a counter lives in word ``(n >> 6) % BLOCKS``. When a newer counter moves the window
forward, the words it moves over are zeroed whole (at most BLOCKS of them), rather than
shifting the bitmap: that is RFC 6479's trick, and why one word (64 bits) of the ring is
"redundant" and the usable window is COUNTER_BITS_TOTAL - 64.

As in the kernel, the stored position is the highest accepted counter plus one (zero
meaning none yet), and every incoming counter is shifted by one before use, so that a
freshly zeroed window accepts counter 0 exactly once.

Call ``check_and_update`` only after the packet has authenticated, otherwise a forger
could move the window. The caller also stops using the keypair well before the counter
limit (REJECT_AFTER_MESSAGES); counters at or past it are refused here as well.
"""

from __future__ import annotations

from weftnet.wireguard.constants import REJECT_AFTER_MESSAGES

__all__ = [
    "BITS_PER_BLOCK",
    "BLOCKS",
    "COUNTER_BITS_TOTAL",
    "COUNTER_WINDOW_SIZE",
    "REJECT_AFTER_MESSAGES",
    "ReplayWindow",
]

COUNTER_BITS_TOTAL = 8192  # bits in the ring of seen counters (kernel messages.h)
BITS_PER_BLOCK = 64  # bits per ring word, the kernel's BITS_PER_LONG on 64-bit hosts
BLOCKS = COUNTER_BITS_TOTAL // BITS_PER_BLOCK  # 128 words in the ring
COUNTER_WINDOW_SIZE = COUNTER_BITS_TOTAL - BITS_PER_BLOCK  # 8128: how far back we accept
# REJECT_AFTER_MESSAGES: whitepaper section 6.1 and wireguard-go; the kernel uses
# U64_MAX - COUNTER_WINDOW_SIZE - 1, 63 higher. Either way no keypair gets anywhere near
# it: REKEY_AFTER_MESSAGES is 2**60.

_BLOCK_SHIFT = 6  # log2(BITS_PER_BLOCK)
_BLOCK_INDEX_MASK = BLOCKS - 1  # BLOCKS is a power of two
_BIT_INDEX_MASK = BITS_PER_BLOCK - 1
_ZERO_BLOCKS = (0,) * BLOCKS


class ReplayWindow:
    """Sliding-window replay filter for one receiving keypair. Not thread-safe."""

    __slots__ = ("_blocks", "_next")

    def __init__(self) -> None:
        self._next = 0  # highest accepted counter + 1; 0 when nothing accepted yet
        self._blocks = [0] * BLOCKS

    def reset(self) -> None:
        """Forget every counter seen, as for a fresh keypair."""
        self._next = 0
        self._blocks = [0] * BLOCKS

    def check_and_update(self, counter: int) -> bool:
        """Return True and record ``counter`` if it is new and inside the window.

        Should be called once per authenticated transport message, with its counter.
        """
        # The kernel also refuses when its stored position passes REJECT_AFTER_MESSAGES;
        # that cannot happen here, since only counters below the limit are ever stored.
        if not 0 <= counter < REJECT_AFTER_MESSAGES:
            return False
        counter += 1
        last = self._next
        if counter + COUNTER_WINDOW_SIZE < last:
            return False  # too far behind the window
        blocks = self._blocks
        index = counter >> _BLOCK_SHIFT
        if counter > last:
            # Move the window: zero the words after the old top word, up to the new one
            # (at most the whole ring). Mostly the top word stays the same: no loop then.
            current = last >> _BLOCK_SHIFT
            if index != current:
                if index - current >= BLOCKS:
                    blocks[:] = _ZERO_BLOCKS
                else:
                    for i in range(current + 1, index + 1):
                        blocks[i & _BLOCK_INDEX_MASK] = 0
            self._next = counter
        index &= _BLOCK_INDEX_MASK
        bit = 1 << (counter & _BIT_INDEX_MASK)
        word = blocks[index]
        if word & bit:
            return False
        blocks[index] = word | bit
        return True
