"""Redis going away must not take the API down: limits fall back to each process, the
outage is visible, and everything is shared again when Redis is back."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from prometheus_client import REGISTRY

from putplace.coordination.redis import RETRY_SECONDS, RedisCoordinator
from tests.support.redis import redis_server
from tests.support.servers import free_port


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
            await asyncio.sleep(RETRY_SECONDS + 0.2)
            assert await limits.take("key:a", 0.01, 2) == 0  # Redis' own bucket again
            assert sample("putplace_redis_up") == 1
            assert limits.describe()["status"] == "healthy"
            for _ in range(60):  # resubscribed: announcements missed meanwhile
                if None in heard:
                    break
                await asyncio.sleep(0.1)
            assert None in heard
    finally:
        await limits.close()
