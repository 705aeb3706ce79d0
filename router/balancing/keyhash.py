"""Stable hashes for sticky keys and replica ids.

Every router instance and every worker process must place a key on the same replica, so
nothing here may depend on the process: Python's `hash()` is salted per process
(PYTHONHASHSEED) and is never used. A request's key (a header value or a client address)
is hashed on every request, so `hash64` is cheap: CRC-32 and Adler-32 from zlib (stable
across platforms and versions), about 10x faster than BLAKE2b and a 64-bit mix in pure
Python. Placement only needs spread, not secrecy: a client picks its own sticky key
anyway. Replica ids are hashed with BLAKE2b when tables are built, where time does not
matter.
"""

from __future__ import annotations

import hashlib
import zlib

MASK64 = (1 << 64) - 1
# splitmix64's increment (2^64 / golden ratio): successive points of one replica.
GOLDEN_GAMMA = 0x9E3779B97F4A7C15


def hash64(text: str) -> int:
    """A stable 64-bit hash (the same in every process and every router instance): CRC-32
    in the high half, Adler-32 in the low half. Tables take what they need from it: Maglev
    `key mod M` (both halves), the ring the high bits, rendezvous and the geo draw mix it
    with splitmix64 first."""
    try:
        data = text.encode()
    except UnicodeEncodeError:  # undecodable header bytes kept as surrogates (aiohttp)
        data = text.encode("utf-8", "surrogatepass")
    return (zlib.crc32(data) << 32) | zlib.adler32(data)


def hash128(text: str) -> tuple[int, int]:
    """Two independent stable 64-bit hashes of `text` (Maglev's offset and skip)."""
    digest = hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()
    return int.from_bytes(digest[:8], "big"), int.from_bytes(digest[8:], "big")


def mix64(value: int) -> int:
    """splitmix64's finaliser: spreads a 64-bit value over all bits."""
    value = ((value ^ (value >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    value = ((value ^ (value >> 27)) * 0x94D049BB133111EB) & MASK64
    return value ^ (value >> 31)


def unit_interval(key: int, salt: int = 0) -> float:
    """A key's deterministic draw from (0, 1)."""
    return ((mix64(key ^ salt) >> 11) + 0.5) / float(1 << 53)
