"""Run mongoeco's MongoDB wire-protocol server on loopback, backed by its SQLite engine.

``python -m tests.support.mongo_server --port 0 --path /tmp/x/mongo.sqlite``

Prints one line, ``READY <uri>``, once the server accepts connections, then serves until
SIGTERM/SIGINT. Run as a separate process so the server never shares the test process's
event loop or GIL. ``--port 0`` lets the OS pick a free port (no bind race).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import signal
import sys
from collections.abc import Callable
from typing import Any

#: Tries of an engine lookup that lost a race (see _tolerate_feature_cache_races).
_TRIES = 5


def _retried(method: Callable[..., Any], lost: Callable[[Exception], bool]) -> Callable[..., Any]:
    @functools.wraps(method)
    def again(*args: Any, **kwargs: Any) -> Any:
        for _ in range(_TRIES - 1):
            try:
                return method(*args, **kwargs)
            except Exception as exc:
                if not lost(exc):
                    raise
        return method(*args, **kwargs)  # the last try: whatever it raises goes through

    return again


def _feature_key_gone(exc: Exception) -> bool:
    key = exc.args[0] if isinstance(exc, KeyError) and exc.args else None
    return isinstance(key, tuple) and len(key) == 3


def _walked_while_filled(exc: Exception) -> bool:
    return isinstance(exc, RuntimeError) and "changed size during iteration" in str(exc)


def _tolerate_feature_cache_races(engine_class: type) -> None:
    """mongoeco's SQLite engine (4.11) answers "does field F of this collection hold
    arrays (reals, text that is not ASCII, ...)?" from a cache that its worker threads
    read with ``if key in cache: return cache[key]``, while a write on another thread
    drops the collection's keys. The read then fails with a KeyError of its key (a
    ``(database, collection, feature)`` tuple), and the client's query with it: seen once
    in CI, in ``test_concurrent_first_puts_of_one_location[mongodb]``, where two stores
    write one location at once. Those lookups only read, so one that lost the race is
    run again, as is the dropping, which walks the cache while other threads fill it."""
    for name in dir(engine_class):
        if name.startswith("_field_") and name.endswith("_in_collection"):
            setattr(engine_class, name, _retried(getattr(engine_class, name), _feature_key_gone))
    invalidate = getattr(engine_class, "_invalidate_collection_features_cache", None)
    if invalidate is not None:
        retried = _retried(invalidate, _walked_while_filled)
        engine_class._invalidate_collection_features_cache = retried  # type: ignore[attr-defined]


async def serve(host: str, port: int, path: str) -> None:
    from mongoeco.engines.sqlite import SQLiteEngine
    from mongoeco.wire.proxy import AsyncMongoEcoProxyServer

    _tolerate_feature_cache_races(SQLiteEngine)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    server = AsyncMongoEcoProxyServer(engine=SQLiteEngine(path), host=host, port=port)
    await server.start()
    try:
        print(f"READY {server.address.uri}", flush=True)
        await stop.wait()
    finally:
        await server.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--path", required=True, help="SQLite file for the engine")
    args = parser.parse_args(argv)
    asyncio.run(serve(args.host, args.port, args.path))
    return 0


if __name__ == "__main__":
    sys.exit(main())
