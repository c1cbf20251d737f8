"""TCP's receive-side reassembly queue: segments that arrived ahead of a gap.

Theory of operation
-------------------
RFC 9293 §3.10.7.4 lets a receiver keep segments past RCV.NXT "for later processing".
The queue keeps them as non-overlapping ``(seq, data)`` pairs sorted by sequence number
(sequence numbers are unwrapped integers, see tcp.py, so plain comparison works). A new
segment is trimmed against what is already held (the first copy of a byte wins, as
duplicates carry the same bytes), and ``pop_ready`` hands back, in order, every byte
that has become contiguous with RCV.NXT. The connection bounds the queue by accepting
only segments inside its receive window.
"""

from __future__ import annotations

import bisect


class ReassemblyQueue:
    __slots__ = ("_segments", "size")

    def __init__(self) -> None:
        self._segments: list[tuple[int, bytes]] = []
        self.size = 0  # bytes held

    def __len__(self) -> int:
        return len(self._segments)

    def add(self, seq: int, data: bytes) -> None:
        """Hold ``data`` (sequence numbers ``seq`` to ``seq + len(data) - 1``)."""
        segs = self._segments
        end = seq + len(data)
        i = bisect.bisect_left(segs, seq, key=lambda s: s[0])
        if i:
            prev_seq, prev = segs[i - 1]
            prev_end = prev_seq + len(prev)
            if prev_end >= end:
                return
            if prev_end > seq:
                data = data[prev_end - seq :]
                seq = prev_end
        while i < len(segs):
            next_seq, nxt = segs[i]
            if next_seq >= end:
                break
            if next_seq + len(nxt) <= end:
                del segs[i]
                self.size -= len(nxt)
                continue
            data = data[: next_seq - seq]
            break
        if data:
            segs.insert(i, (seq, data))
            self.size += len(data)

    def pop_ready(self, rcv_nxt: int) -> tuple[list[bytes], int]:
        """The data now contiguous with ``rcv_nxt``, and the new RCV.NXT."""
        segs = self._segments
        out: list[bytes] = []
        while segs and segs[0][0] <= rcv_nxt:
            seq, data = segs.pop(0)
            self.size -= len(data)
            end = seq + len(data)
            if end > rcv_nxt:
                out.append(data[rcv_nxt - seq :])
                rcv_nxt = end
        return out, rcv_nxt
