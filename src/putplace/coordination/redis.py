"""Limits shared by every server instance through Redis (``PUTPLACE_REDIS_URL``).

Rate limits and quota reservations are Lua scripts, so each check-and-take is atomic
across instances and timed by Redis' own clock. Key revocations are published on a
channel every instance of the deployment (same Redis database) listens to, so a revoked
key is refused everywhere at once.

Redis is a helper, never a dependency of answering: when it does not answer (within
``TIMEOUT_SECONDS``) each instance falls back to its own per-process limits for
``RETRY_SECONDS``, counts the fallback, and reports it in ``/health`` and ``/metrics``.
When the channel comes back, every cached key is looked up again, since revocations
announced meanwhile were missed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar
from urllib.parse import urlsplit

from prometheus_client import Counter, Gauge
from redis.asyncio import Redis
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

import putplace.metric_values  # noqa: F401 (sets how values are kept, before any metric is made)
from putplace.coordination.base import (
    RESERVATION_SECONDS,
    Coordinator,
    KeyListener,
    Reservation,
)
from putplace.coordination.local import LocalCoordinator

log = logging.getLogger("putplace.coordination")
T = TypeVar("T")

TIMEOUT_SECONDS = 0.5
RETRY_SECONDS = 2.0
PREFIX = "putplace:"


def key_channel(database: int) -> str:
    """The channel key changes are announced on, one per database: Redis shares channels
    across its databases, and deployments kept apart by database number (``.../0`` and
    ``.../1`` of one server) must not hear each other's keys."""
    return f"{PREFIX}{database}:keys-changed"


REDIS_UP = Gauge(
    "putplace_redis_up",
    "1 while Redis answers and limits are shared by every instance; 0 while this process "
    "has fallen back to its own limits.",
    multiprocess_mode="livemin",
)
FALLBACKS = Counter(
    "putplace_redis_fallbacks",
    "Limit checks made per process because Redis did not answer, by operation.",
    ["operation"],
)

# Token bucket: tokens and the time they were counted, refilled by Redis' clock.
_TAKE = """
local rate, burst = tonumber(ARGV[1]), tonumber(ARGV[2])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(state[1]) or burst
local at = tonumber(state[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - at) * rate)
local wait = 0
if tokens >= 1 then
  tokens = tokens - 1
else
  wait = math.max(1, math.ceil((1 - tokens) / rate))
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', tostring(now))
redis.call('EXPIRE', KEYS[1], math.ceil(burst / rate) + 1)
return wait
"""

# Reservations: token -> "amount expiry"; lapsed ones are dropped before summing.
_RESERVE = """
local amount, ttl = tonumber(ARGV[2]), tonumber(ARGV[3])
local now = tonumber(redis.call('TIME')[1])
local held = redis.call('HGETALL', KEYS[1])
local others = 0
for i = 1, #held, 2 do
  local size, expiry = string.match(held[i + 1], '(%d+) (%d+)')
  if tonumber(expiry) <= now then
    redis.call('HDEL', KEYS[1], held[i])
  elseif held[i] ~= ARGV[1] then
    others = others + tonumber(size)
  end
end
redis.call('HSET', KEYS[1], ARGV[1], amount .. ' ' .. (now + ttl))
redis.call('EXPIRE', KEYS[1], ttl)
return others
"""


class RedisCoordinator(Coordinator):
    kind = "redis"
    shared = True

    def __init__(self, url: str) -> None:
        self._url = url
        self._redis: Redis = Redis.from_url(
            url, socket_timeout=TIMEOUT_SECONDS, socket_connect_timeout=TIMEOUT_SECONDS
        )
        self._channel = key_channel(int(self._redis.connection_pool.connection_kwargs.get("db", 0)))
        self._take = self._redis.register_script(_TAKE)
        self._reserve = self._redis.register_script(_RESERVE)
        self._local = LocalCoordinator()
        self._down = False
        self._down_until = 0.0
        # Until when a ping that found Redis not answering stands for the next pings.
        self._ping_down_until = 0.0
        # Reservations Redis may hold that nobody will release there: released while
        # Redis did not answer, or asked for when the answer timed out. Deleted at the
        # next chance, so a short outage does not leave quota taken for an hour.
        self._orphans: set[tuple[str, str]] = set()
        self._listener: KeyListener | None = None
        self._listening: asyncio.Task[None] | None = None

    def listen(self, on_key_change: KeyListener) -> None:
        self._listener = on_key_change
        self._local.listen(on_key_change)
        REDIS_UP.set(1)
        self._listening = asyncio.create_task(self._listen())

    async def ping(self) -> bool:
        """Ask Redis now, even while requests fall back: a request's timeout (a loaded
        machine, a stall) must not make health report an outage that is not there.
        From a healthy state a timed-out ping is asked once more, since one missed
        deadline should not mark the instance degraded. Once a ping itself found Redis
        not answering, the pings of the next ``RETRY_SECONDS`` say so at once, so a hung
        Redis costs health checks one deadline (two from healthy) per period, not every
        check its own; a refused connection answers at once."""
        if self._down and time.monotonic() < self._ping_down_until:
            FALLBACKS.labels("ping").inc()
            return False
        try:
            await self._ping_redis(tries=1 if self._down else 2)
        except (RedisError, OSError) as exc:  # OSError: TimeoutError and refusals too
            self._went_down(exc)
            self._ping_down_until = time.monotonic() + RETRY_SECONDS
            FALLBACKS.labels("ping").inc()
            return False
        await self._answered()
        return True

    async def _ping_redis(self, tries: int) -> None:
        """PING, asked again after a timeout while *tries* last; raises as Redis does."""
        for left in range(tries - 1, -1, -1):
            try:
                await self._redis.ping()
                return
            except (RedisTimeoutError, TimeoutError):
                if not left:
                    raise

    async def close(self) -> None:
        if self._listening is not None:
            self._listening.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listening
        await self._redis.aclose()

    @property
    def available(self) -> bool:
        return not self._down

    def _may_ask(self) -> bool:
        """Whether to ask Redis now. While it is down, one request every
        ``RETRY_SECONDS`` probes it; the others use this process' limits instead of
        each waiting for a timeout."""
        if not self._down:
            return True
        now = time.monotonic()
        if now < self._down_until:
            return False
        self._down_until = now + RETRY_SECONDS  # this caller is the probe
        return True

    async def _shared(
        self, operation: str, call: Callable[[], Awaitable[T]], fallback: Callable[[], Awaitable[T]]
    ) -> T:
        """*call* against Redis; *fallback* (this process' limits) while it is down."""
        if self._may_ask():
            try:
                result = await call()
            except (RedisError, OSError) as exc:
                self._went_down(exc)
            else:
                await self._answered()
                return result
        FALLBACKS.labels(operation).inc()
        return await fallback()

    async def _answered(self) -> None:
        """Redis answered: limits are shared again, and what it may hold that nobody
        will release there is deleted now."""
        self._came_back()
        if self._orphans:
            await self._release_orphans()

    def _went_down(self, exc: BaseException) -> None:
        if not self._down:
            log.warning(
                "Redis does not answer (%s); limits are per process for now", exc or type(exc)
            )
        self._down = True
        self._down_until = time.monotonic() + RETRY_SECONDS
        REDIS_UP.set(0)

    def _came_back(self) -> None:
        if self._down:
            log.warning("Redis answers again; limits are shared by every instance")
        self._down = False
        REDIS_UP.set(1)

    async def _release_orphans(self) -> None:
        orphans, self._orphans = self._orphans, set()
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for bucket, token in orphans:
                    pipe.hdel(f"{PREFIX}reserved:{bucket}", token)
                await pipe.execute()
        except (RedisError, OSError) as exc:
            self._orphans |= orphans
            self._went_down(exc)

    async def take(self, bucket: str, per_second: float, burst: int) -> int:
        if per_second <= 0:
            return 0

        async def shared() -> int:
            keys = [f"{PREFIX}rate:{bucket}"]
            return int(await self._take(keys=keys, args=[per_second, burst]))

        return await self._shared(
            "rate_limit", shared, lambda: self._local.take(bucket, per_second, burst)
        )

    async def reserve(self, bucket: str, amount: int) -> tuple[Reservation, int]:
        reservation = Reservation(bucket, secrets.token_hex(8), amount)
        asked = False

        async def shared() -> int:
            nonlocal asked
            asked = True
            keys = [f"{PREFIX}reserved:{bucket}"]
            args: list[str | int] = [reservation.token, amount, RESERVATION_SECONDS]
            return int(await self._reserve(keys=keys, args=args))

        async def here() -> int:
            if asked:  # the call that timed out may have reserved in Redis all the same
                self._orphans.add((bucket, reservation.token))
            return self._local.hold(reservation)

        return reservation, await self._shared("quota", shared, here)

    async def release(self, reservation: Reservation) -> None:
        if self._local.drop(reservation):
            return  # made while Redis did not answer (and in its orphans if it may be there)

        async def shared() -> None:
            await self._redis.hdel(f"{PREFIX}reserved:{reservation.bucket}", reservation.token)

        async def later() -> None:
            self._orphans.add((reservation.bucket, reservation.token))

        await self._shared("quota", shared, later)

    async def announce_key_change(self, key_hash: str) -> None:
        await self._local.announce_key_change(key_hash)  # this process at once

        async def shared() -> None:
            await self._redis.publish(self._channel, key_hash)

        await self._shared("key_change", shared, _nothing)

    async def _listen(self) -> None:
        """Hear revocations from every instance; resubscribe after an outage and forget
        every cached key then, since announcements made meanwhile were missed."""
        assert self._listener is not None
        subscribed_before = False
        while True:
            try:
                async with self._redis.pubsub(ignore_subscribe_messages=True) as channel:
                    await channel.subscribe(self._channel)
                    if subscribed_before:
                        self._listener(None)
                        self._came_back()
                    subscribed_before = True
                    while True:
                        # Shorter than the socket timeout: an idle wait is not an outage.
                        message = await channel.get_message(timeout=TIMEOUT_SECONDS / 2)
                        if message is not None and message["type"] == "message":
                            self._listener(message["data"].decode())
            except (RedisError, OSError) as exc:
                self._went_down(exc)
                await asyncio.sleep(RETRY_SECONDS)

    def describe(self) -> dict[str, Any]:
        parts = urlsplit(self._url)  # never the password
        socket = parts.scheme == "unix"
        where = parts.path if socket else f"{parts.hostname}:{parts.port or 6379}"
        if self.available:
            return {"type": self.kind, "url": where, "shared": True, "status": "healthy"}
        return {"type": self.kind, "url": where, "shared": False, "status": "unavailable"}


async def _nothing() -> None:
    return None
