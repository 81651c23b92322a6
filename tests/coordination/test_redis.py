"""Redis going away must not take the API down: limits fall back to each process, the
outage is visible, and everything is shared again when Redis is back."""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import time
from collections.abc import Awaitable
from pathlib import Path
from typing import TypeVar

from prometheus_client import REGISTRY
from redis.asyncio import Redis

from putplace.coordination.redis import RETRY_SECONDS, TIMEOUT_SECONDS, RedisCoordinator
from tests.support.redis import DATABASES, redis_server
from tests.support.servers import free_port

T = TypeVar("T")


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_an_outage_falls_back_to_the_process_and_recovers(tmp_path: Path) -> None:
    port = free_port()
    heard: list[str | None] = []
    with redis_server(tmp_path, port) as url:
        limits = RedisCoordinator(url)
        limits.listen(heard.append)
        assert await limits.take("key:a", 0.01, 2) == 0
        assert await limits.ping()
        assert limits.describe()["status"] == "healthy"
    try:
        fallbacks = sample("putplace_redis_fallbacks_total", operation="rate_limit")
        started = time.monotonic()
        # Redis is gone: answered at once from this process' own bucket (full again).
        assert [await limits.take("key:a", 0.01, 2) for _ in range(3)] == [0, 0, 100]
        assert time.monotonic() - started < 2 * 0.5 + 0.5  # one timeout, not one per call
        assert sample("putplace_redis_up") == 0
        assert sample("putplace_redis_fallbacks_total", operation="rate_limit") - fallbacks == 3
        assert not await limits.ping()
        assert limits.describe() | {"url": ""} == {
            "type": "redis", "url": "", "shared": False, "status": "unavailable"
        }  # fmt: skip
        with redis_server(tmp_path, port):
            for _ in range(60):  # resubscribed: announcements missed meanwhile
                if None in heard:
                    break
                await asyncio.sleep(0.1)
            assert None in heard
            # Back, as seen by the channel alone (no request needed to find out).
            assert sample("putplace_redis_up") == 1
            assert limits.describe()["status"] == "healthy"
            assert await limits.take("key:a", 0.01, 2) == 0  # Redis' own bucket again
    finally:
        await limits.close()


async def test_a_hanging_redis_leaves_no_quota_taken_and_delays_one_request_at_a_time(
    tmp_path: Path,
) -> None:
    """Redis stops answering (but keeps its data): what was reserved in it meanwhile, or
    released while it did not answer, is gone once it answers again; while it hangs, one
    request at a time waits to find out, not every request."""
    with redis_server(tmp_path) as url:
        here, there = RedisCoordinator(url), RedisCoordinator(url)
        try:
            before, _ = await here.reserve("quota:lab:bytes", 7)
            process = await _redis_process(url)
            os.kill(process, signal.SIGSTOP)
            try:
                # Times out; Redis runs the script once it wakes: reserved all the same.
                during, _ = await here.reserve("quota:lab:bytes", 5)
                await here.release(during)
                await here.release(before)  # while Redis does not answer
                await asyncio.sleep(RETRY_SECONDS + 0.1)
                waits = await asyncio.gather(*(_timed(here.take("key:a", 1, 5)) for _ in range(8)))
                assert sum(wait > TIMEOUT_SECONDS * 0.8 for wait in waits) == 1  # the probe
            finally:
                os.kill(process, signal.SIGCONT)
            await asyncio.sleep(RETRY_SECONDS + 0.1)
            await here.take("key:a", 1, 5)  # answers again: releases what it could not
            assert here.describe()["status"] == "healthy"
            assert (await there.reserve("quota:lab:bytes", 1))[1] == 0
        finally:
            await here.close()
            await there.close()


async def test_health_asks_redis_itself_and_does_not_report_one_missed_answer(
    tmp_path: Path,
) -> None:
    """A request that missed Redis' deadline (a loaded machine, a stall) puts requests on
    this process' limits for a while, but health asks Redis again at once: it reports
    what Redis does now. A health check that misses one deadline tries once more; once
    health found Redis hung, the checks of the next seconds say so without waiting."""
    with redis_server(tmp_path) as url:
        limits = RedisCoordinator(url)
        process = await _redis_process(url)
        try:
            os.kill(process, signal.SIGSTOP)
            try:
                await limits.take("key:a", 1, 5)  # times out: requests fall back
                assert limits.describe()["status"] == "unavailable"
            finally:
                os.kill(process, signal.SIGCONT)
            assert await limits.ping()  # well within RETRY_SECONDS of the timeout
            assert limits.describe()["status"] == "healthy"
            assert sample("putplace_redis_up") == 1

            os.kill(process, signal.SIGSTOP)  # stalls for less than two deadlines
            waking = asyncio.get_running_loop().call_later(
                TIMEOUT_SECONDS * 1.2, os.kill, process, signal.SIGCONT
            )
            try:
                answer, waited = await _timed_answer(limits.ping())
                assert answer  # asked again after the first deadline passed
                assert waited >= TIMEOUT_SECONDS
                assert limits.describe()["status"] == "healthy"
            finally:
                waking.cancel()
                os.kill(process, signal.SIGCONT)

            os.kill(process, signal.SIGSTOP)  # hung for good
            try:
                assert (await _timed_answer(limits.ping()))[0] is False
                assert limits.describe()["status"] == "unavailable"
                answer, waited = await _timed_answer(limits.ping())
                assert answer is False
                assert waited < TIMEOUT_SECONDS / 2  # the last check's finding stands
            finally:
                os.kill(process, signal.SIGCONT)
            await asyncio.sleep(RETRY_SECONDS + 0.1)
            assert await limits.ping()
            assert limits.describe()["status"] == "healthy"
        finally:
            os.kill(process, signal.SIGCONT)
            await limits.close()


async def _timed_answer(call: Awaitable[T]) -> tuple[T, float]:
    """What *call* answered, and the seconds it took."""
    started = time.monotonic()
    answer = await call
    return answer, time.monotonic() - started


async def _timed(call: Awaitable[object]) -> float:
    return (await _timed_answer(call))[1]


async def _redis_process(url: str) -> int:
    client = Redis.from_url(url)
    try:
        info = await client.info("server")
        return int(info["process_id"])
    finally:
        await client.aclose()


async def test_health_names_where_redis_is_never_its_password() -> None:
    for url, shown in [
        ("redis://:s3cret@127.0.0.1:6380/2", "127.0.0.1:6380"),
        ("rediss://user:s3cret@cache.internal/0", "cache.internal:6379"),
        ("unix:///run/redis/redis.sock?db=1", "/run/redis/redis.sock"),
    ]:
        limits = RedisCoordinator(url)
        assert limits.describe()["url"] == shown
        await limits.close()


async def test_deployments_on_other_databases_of_one_redis_do_not_hear_each_others_keys(
    redis_url: str,
) -> None:
    """Redis shares pub/sub channels across its databases; a key revoked in the
    deployment on database N is announced to that deployment only."""
    server, database = redis_url.rsplit("/", 1)
    other_url = f"{server}/{(int(database) + 1) % DATABASES}"
    here, same, there, other = (
        RedisCoordinator(url) for url in (redis_url, redis_url, other_url, other_url)
    )
    heard_same: list[str | None] = []
    heard_other: list[str | None] = []

    async def until_heard(announcer: RedisCoordinator, heard: list[str | None]) -> str:
        """Announce fresh hashes until one is heard: the listener is subscribed."""
        for _ in range(100):
            probe = secrets.token_hex(32)  # not another test's
            await announcer.announce_key_change(probe)
            await asyncio.sleep(0.05)
            if probe in heard:
                return probe
        raise AssertionError("the listener never heard its own database")

    try:
        here.listen(lambda _: None)
        same.listen(heard_same.append)
        other.listen(heard_other.append)
        await until_heard(here, heard_same)
        await until_heard(there, heard_other)
        changed = secrets.token_hex(32)
        await here.announce_key_change(changed)
        # Published after it: once the other database's listener hears this, it would
        # have heard the change first, had it been announced there too.
        await until_heard(there, heard_other)
        assert changed not in heard_other
        for _ in range(100):
            if changed in heard_same:
                break
            await asyncio.sleep(0.05)
        assert changed in heard_same
    finally:
        for coordinator in (here, same, there, other):
            await coordinator.close()
