"""Run mongoeco's MongoDB wire-protocol server on loopback, backed by its SQLite engine.

``python -m tests.support.mongo_server --port 0 --path /tmp/x/mongo.sqlite``

Prints one line, ``READY <uri>``, once the server accepts connections, then serves until
SIGTERM/SIGINT. Run as a separate process so the server never shares the test process's
event loop or GIL. ``--port 0`` lets the OS pick a free port (no bind race).
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys


async def serve(host: str, port: int, path: str) -> None:
    from mongoeco.engines.sqlite import SQLiteEngine
    from mongoeco.wire.proxy import AsyncMongoEcoProxyServer

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
