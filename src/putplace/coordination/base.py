"""What the server's processes agree on: per-key request rates, quota reservations of
uploads in flight, and the keys revoked (so caches drop them). One process alone
(:mod:`.local`), or every instance behind a load balancer through Redis (:mod:`.redis`).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

#: Called with a key's hash when it was revoked, rotated or deleted anywhere; with None
#: when announcements may have been missed (every cached key must be looked up again).
KeyListener = Callable[[str | None], None]

#: A reservation of a crashed process lapses after this long.
RESERVATION_SECONDS = 3600


def take_token(
    tokens: float, at: float, now: float, per_second: float, burst: int
) -> tuple[float, int]:
    """A token bucket holding *tokens* at time *at*, refilled at *per_second* up to
    *burst*, asked for one at *now*: the tokens it holds then, and 0 if one was taken,
    else the whole seconds until there will be one (at least 1, as ``Retry-After``)."""
    tokens = min(burst, tokens + max(0.0, now - at) * per_second)
    if tokens >= 1:
        return tokens - 1, 0
    return tokens, max(1, math.ceil((1 - tokens) / per_second))


@dataclass(frozen=True)
class Reservation:
    """Room taken in a namespace's quota while content is on its way."""

    bucket: str
    token: str
    amount: int


class Coordinator(ABC):
    """Limits and announcements shared by the processes that use the same coordinator."""

    kind: str
    #: Whether other processes see what this one counts (else: this process only).
    shared: bool

    async def close(self) -> None:  # noqa: B027
        """Stop listening and release connections."""

    @abstractmethod
    def listen(self, on_key_change: KeyListener) -> None:
        """From now on, *on_key_change* hears every key change announced anywhere."""

    async def ping(self) -> bool:
        """True when limits are shared as configured (always, for one process)."""
        return True

    @abstractmethod
    async def take(self, bucket: str, per_second: float, burst: int) -> int:
        """Take one token from *bucket* (refilled at *per_second*, holding at most
        *burst*): 0 when there was one, else the seconds until there will be."""

    @abstractmethod
    async def reserve(self, bucket: str, amount: int) -> tuple[Reservation, int]:
        """Reserve *amount* in *bucket*; with what the others held reserved at that
        moment. The caller checks its limit after reserving (and releases on refusal),
        so two racing callers each see the other."""

    @abstractmethod
    async def release(self, reservation: Reservation) -> None:
        """Give a reservation back (the content arrived and is counted, or failed)."""

    @abstractmethod
    async def announce_key_change(self, key_hash: str) -> None:
        """Tell every process that the key with this hash was revoked, rotated or
        deleted."""

    def describe(self) -> dict[str, Any]:
        """For ``/health``: where limits are kept and whether that works now."""
        return {"type": self.kind, "shared": self.shared, "status": "healthy"}
