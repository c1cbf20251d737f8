"""Every WireGuard protocol constant in one place (wireguard-go device/constants.go).

Values from the whitepaper, section 6.1 ("Protocol & Cryptography") and the kernel's
messages.h. Sizes and labels of the wire formats stay with their formats
(messages.py, cookie.py, crypto.py); this module holds the timers and limits.
"""

from __future__ import annotations

REKEY_AFTER_MESSAGES = 1 << 60  # initiate a new handshake after this many sent messages
REJECT_AFTER_MESSAGES = (1 << 64) - (1 << 13) - 1  # never use a keypair past this counter
REKEY_AFTER_TIME_S = 120.0  # the initiator rekeys a session this old
REJECT_AFTER_TIME_S = 180.0  # a session this old is used for nothing
REKEY_ATTEMPT_TIME_S = 90.0  # stop retrying a handshake after this long
REKEY_TIMEOUT_S = 5.0  # retransmit an unanswered initiation after this (+ jitter)
REKEY_TIMEOUT_JITTER_MAX_S = 1 / 3  # up to a third of a second of jitter
KEEPALIVE_TIMEOUT_S = 10.0  # answer received data with a keepalive if we sent nothing
MAX_TIMER_HANDSHAKES = int(REKEY_ATTEMPT_TIME_S / REKEY_TIMEOUT_S)  # 18 tries
COOKIE_REFRESH_TIME_S = 120.0  # a cookie secret (and a received cookie) lives two minutes
PADDING_MULTIPLE = 16  # plaintext is padded to a multiple of 16 bytes

# Implementation limits (wireguard-go's values, not the whitepaper's).
MAX_STAGED_PACKETS = 128  # packets kept per peer while waiting for a session
UNDER_LOAD_HANDSHAKES_PER_S = 64  # above this many handshake messages a second, demand mac2
UNDER_LOAD_HOLD_S = 1.0  # stay "under load" this long after the rate drops
# Per-source limit of handshake work under load and of cookie replies (wireguard-go
# ratelimiter/ratelimiter.go, the kernel's ratelimiter.c).
RATELIMIT_PACKETS_PER_S = 20  # messages a second from one IPv4 address or IPv6 /64
RATELIMIT_BURST = 5  # a source may use this many at once after a quiet spell
RATELIMIT_MAX_ENTRIES = 65536  # sources tracked at once (the kernel's on a >1 GiB host)
