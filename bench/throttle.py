"""A loopback proxy that limits each connection to a fixed rate upstream: one TCP stream
of a long-distance link, where a single stream is the bottleneck, not the disk."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

PIECE = 64 * 1024


async def _pump(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, rate: float | None
) -> None:
    started, sent = time.monotonic(), 0
    try:
        while data := await reader.read(PIECE):
            writer.write(data)
            await writer.drain()
            if rate is not None:
                sent += len(data)
                ahead = sent / rate - (time.monotonic() - started)
                if ahead > 0:
                    await asyncio.sleep(ahead)
    except ConnectionError:
        pass
    finally:
        writer.close()


@contextmanager
def throttled(upstream_port: int, bytes_per_s: float) -> Iterator[str]:
    """A proxy to ``127.0.0.1:upstream_port``; yields its URL."""
    loop = asyncio.new_event_loop()
    ready: list[str] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", upstream_port)
        await asyncio.gather(_pump(reader, up_writer, bytes_per_s),
                             _pump(up_reader, writer, None))  # fmt: skip

    async def start() -> asyncio.Server:
        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        ready.append(f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}")
        return server

    server = loop.run_until_complete(start())
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield ready[0]
    finally:
        loop.call_soon_threadsafe(server.close)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
