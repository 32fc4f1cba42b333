"""A per-client moving-window rate limit that every worker of one server shares.

Each uvicorn worker is its own process, so an in-process store (``limits``' MemoryStorage) gave a
client the limit once per worker. Here the state lives in one memory-mapped file the workers open
(``certus serve`` makes it in a private temporary directory): a table of client slots, each a ring of
the client's last ``amount`` hit times. A hit is allowed when the oldest of those — the one the ring's
head points at — is older than the period: at most ``amount`` hits in any moving window, exactly, in
O(1) per request. An ``flock`` on the file serialises the read-modify-write (one worker process
holds it for a few microseconds); ``limits`` only parses the notation.

Bounds: a ring holds at most :data:`MAX_RING` times; a larger limit is enforced as the same rate over a
proportionally shorter window (``100000/second`` as 4096 per 40.96 ms). The table has a fixed number
of slots (about 32 MiB in all); a client's slot is found by a 64-bit hash with a short linear probe,
and a slot idle for a whole period is reused. Only when every probed slot is busy within the period
(more active clients than slots) is the least recently active one taken over.
"""

from __future__ import annotations

import fcntl
import hashlib
import math
import mmap
import os
import struct
import time

from engine.serve.guardrails import Refusal

__all__ = ["SharedRateLimiter", "MAX_RING"]

MAX_RING = 4096
TABLE_BYTES = 32 << 20
PROBES = 8
_HEAD = struct.Struct("<QQ")  # client key (0: free), ring head
_T = struct.Struct("<d")
_NEVER = -1e300


class SharedRateLimiter:
    """``check(client)`` raises a 429 :class:`Refusal` (with ``Retry-After``) beyond ``rate`` per client.

    ``path``: the file the workers share (created if missing); None: process-private memory (one worker)."""

    def __init__(self, rate: str, path: str | None = None) -> None:
        from limits import parse

        item = parse(rate)
        self.rate = rate
        amount, period = int(item.amount), float(item.get_expiry())
        if amount > MAX_RING:
            period, amount = period * MAX_RING / amount, MAX_RING
        self.amount, self.period = amount, period
        self.slot_bytes = _HEAD.size + 8 * amount
        self.slots = max(64, min(1 << 16, TABLE_BYTES // self.slot_bytes))
        size = self.slots * self.slot_bytes
        if path is None:
            self.fd = -1
            self.mm = mmap.mmap(-1, size)
        else:
            self.fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
            if os.fstat(self.fd).st_size < size:
                os.ftruncate(self.fd, size)  # zeros: every slot free; a second worker's truncate changes nothing
            self.mm = mmap.mmap(self.fd, size)

    def check(self, client: str) -> None:
        key = int.from_bytes(hashlib.blake2b(client.encode(), digest_size=8).digest(), "little") | 1
        now = time.monotonic()  # one clock for every process on the machine
        if self.fd >= 0:
            fcntl.flock(self.fd, fcntl.LOCK_EX)
        try:
            wait = self._hit(key, now)
        finally:
            if self.fd >= 0:
                fcntl.flock(self.fd, fcntl.LOCK_UN)
        if wait is not None:
            retry = max(1, math.ceil(wait))
            raise Refusal(429, "rate_limit", f"client {client[:64]}: rate limit {self.rate} exceeded; retry in "
                          f"{retry} s", "client", f"rate_limit {self.rate}", headers={"Retry-After": str(retry)})

    def _hit(self, key: int, now: float) -> float | None:
        """Record a hit and return None, or the seconds until one is allowed."""
        mm, sb = self.mm, self.slot_bytes
        off = self._slot(key, now) * sb
        _, head = _HEAD.unpack_from(mm, off)
        at = off + _HEAD.size + 8 * head
        (oldest,) = _T.unpack_from(mm, at)
        if oldest > now - self.period:
            return oldest + self.period - now
        _T.pack_into(mm, at, now)
        _HEAD.pack_into(mm, off, key, (head + 1) % self.amount)
        return None

    def _last(self, off: int, head: int) -> float:
        return _T.unpack_from(self.mm, off + _HEAD.size + 8 * ((head - 1) % self.amount))[0]

    def _slot(self, key: int, now: float) -> int:
        mm, sb = self.mm, self.slot_bytes
        start = key % self.slots
        victim, victim_last = -1, math.inf
        for j in range(PROBES):
            s = (start + j) % self.slots
            k, head = _HEAD.unpack_from(mm, s * sb)
            if k == key:
                return s
            last = _NEVER if k == 0 else self._last(s * sb, head)
            if last < victim_last:
                victim, victim_last = s, last
        off = victim * sb  # free, idle for a period, or (table full) the least recently active
        _HEAD.pack_into(mm, off, key, 0)
        mm[off + _HEAD.size:off + sb] = _T.pack(_NEVER) * self.amount
        return victim
