"""Limits kept in this process: each server process counts for itself."""

from __future__ import annotations

import secrets
import time
from collections import OrderedDict

from putplace.coordination.base import (
    RESERVATION_SECONDS,
    Coordinator,
    KeyListener,
    Reservation,
    take_token,
)


class LocalCoordinator(Coordinator):
    """Token buckets and reservations in memory (bounded), announcements to this process.
    Also what :class:`RedisCoordinator` falls back to while Redis does not answer."""

    kind = "process"
    shared = False

    def __init__(self, max_buckets: int = 10_000) -> None:
        self._max = max_buckets
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self._reserved: dict[str, dict[str, tuple[int, float]]] = {}
        self._listener: KeyListener | None = None

    def listen(self, on_key_change: KeyListener) -> None:
        self._listener = on_key_change

    async def take(self, bucket: str, per_second: float, burst: int) -> int:
        return self.take_now(bucket, per_second, burst)

    def take_now(self, bucket: str, per_second: float, burst: int) -> int:
        if per_second <= 0:
            return 0
        now = time.monotonic()
        tokens, last = self._buckets.pop(bucket, (float(burst), now))
        tokens, wait = take_token(tokens, last, now, per_second, burst)
        self._buckets[bucket] = (tokens, now)
        while len(self._buckets) > self._max:
            self._buckets.popitem(last=False)
        return wait

    async def reserve(self, bucket: str, amount: int) -> tuple[Reservation, int]:
        reservation = Reservation(bucket, secrets.token_hex(8), amount)
        return reservation, self.hold(reservation)

    def hold(self, reservation: Reservation) -> int:
        """Hold *reservation* (under its own token); what the others held."""
        now = time.monotonic()
        held = self._reserved.setdefault(reservation.bucket, {})
        for token, (_, until) in list(held.items()):
            if until <= now:
                del held[token]
        others = sum(size for size, _ in held.values())
        held[reservation.token] = (reservation.amount, now + RESERVATION_SECONDS)
        return others

    async def release(self, reservation: Reservation) -> None:
        self.drop(reservation)

    def drop(self, reservation: Reservation) -> bool:
        """Release *reservation*; whether this process held it."""
        held = self._reserved.get(reservation.bucket, {})
        found = held.pop(reservation.token, None) is not None
        if not held:
            self._reserved.pop(reservation.bucket, None)
        return found

    async def announce_key_change(self, key_hash: str) -> None:
        if self._listener is not None:
            self._listener(key_hash)
