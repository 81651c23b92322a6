"""The server's half of a first ingest, in process: CPU per file, by thread.

Not part of ``make bench`` (it has no peer; it explains the server's share of the
small-files ratio, which the client and the machine's drift hide end to end). The app is
built with ``create_app()`` and run with its lifespan on a fresh SQLite database and blob
directory (fsync on), and driven through ASGI without HTTP: BENCH_INPROC_STEPS (default
40) steps of 1,000 files, BENCH_INPROC_IN_FLIGHT (default 4) at once, as ``ppclient``
sends a first ingest of the tree ``make bench`` uses: a ``POST /put_files`` of 1,000 new
records, then a ``POST /bundles`` of their contents (1-8 KiB); the last quarter of the
steps are copies of contents stored by then, so they send records only. Prints the
process's CPU per file and each thread's, and records them in bench/results.json
(``server_ingest``). To compare two versions of the code, run it from each, alternating:
``PYTHONPATH=/path/to/other/checkout/src python -m bench.server_ingest``.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
import struct
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson

from bench.common import record, table
from putplace.config import Settings

FILES_PER_STEP = 1000
COPY_SHARE = 4  # the last quarter of the steps are copies of earlier contents


def _thread_cpu() -> dict[str, float]:
    """CPU seconds so far of this process's threads, by name (numbered pools as one)."""
    ticks = os.sysconf("SC_CLK_TCK")
    totals: dict[str, float] = {}
    for thread in threading.enumerate():
        try:
            fields = Path(f"/proc/self/task/{thread.native_id}/stat").read_text()
        except OSError:
            continue
        utime, stime = fields.rsplit(")", 1)[1].split()[11:13]
        name = thread.name.rsplit("_", 1)[0]
        totals[name] = totals.get(name, 0.0) + (int(utime) + int(stime)) / ticks
    return totals


#: A step: its ``/put_files`` body, its bundle (None: records only) and the number of
#: contents in the bundle.
Step = tuple[bytes, bytes | None, int]


def _records(first: int, contents: list[bytes]) -> bytes:
    """The ``/put_files`` body of a step of files numbered from *first*."""
    records = [
        {
            "filepath": f"/bench/d{n // 100}/f{n}", "hostname": "bench",
            "ip_address": "127.0.0.1", "sha256": hashlib.sha256(data).hexdigest(),
            "file_size": len(data), "file_mode": 0o100644, "file_uid": 0, "file_gid": 0,
            "file_mtime": 1.7e9 + n, "file_atime": 1.7e9, "file_ctime": 1.7e9 + n,
            "is_symlink": False, "link_target": None,
        }
        for n, data in enumerate(contents, start=first)
    ]  # fmt: skip
    return orjson.dumps({"files": records})


#: Random bytes the contents are cut from (at random places and lengths): made once, so
#: making a step costs little per file (see ``bench/instructions.py``, which counts the
#: instructions of the whole process, this driver's included).
POOL_BYTES = 4 << 20


def _steps(rng: random.Random, new: int, copies: int) -> tuple[list[Step], list[Step]]:
    """*new* steps of files with contents of their own (1-8 KiB, each with its bundle),
    then *copies* steps of files whose contents are random ones of those: records only,
    as the tree ``make bench`` ingests ends (``bench.small_files.make_tree``)."""
    fresh: list[Step] = []
    stored: list[bytes] = []
    pool = rng.randbytes(POOL_BYTES)
    for step in range(new):
        first = step * FILES_PER_STEP
        contents = [_cut(rng, pool, n) for n in range(first, first + FILES_PER_STEP)]
        header = b"".join(
            struct.pack(">32sQ", hashlib.sha256(c).digest(), len(c)) for c in contents
        )
        bundle = b"PPBNDL01" + struct.pack(">I", len(contents)) + header + b"".join(contents)
        fresh.append((_records(step * FILES_PER_STEP, contents), bundle, len(contents)))
        stored += contents
    later: list[Step] = []
    for step in range(new, new + copies):
        contents = [stored[rng.randrange(len(stored))] for _ in range(FILES_PER_STEP)]
        later.append((_records(step * FILES_PER_STEP, contents), None, 0))
    return fresh, later


def _cut(rng: random.Random, pool: bytes, number: int) -> bytes:
    """Content *number*: 1-8 KiB, its number then bytes of *pool* from a random place (the
    number makes each distinct: two cuts could otherwise meet at one place and length)."""
    size = rng.randint(1024, 8192)
    start = rng.randrange(len(pool) - size)
    return number.to_bytes(8, "big") + pool[start : start + size - 8]


Call = Callable[[str, bytes, bytes, bytes], Awaitable[Any]]


def _caller(app: Any, key: str) -> Call:
    async def call(path: str, query: bytes, body: bytes, kind: bytes) -> Any:
        headers = [
            (b"x-api-key", key.encode()),
            (b"host", b"bench"),
            (b"content-type", kind),
            (b"content-length", str(len(body)).encode()),
        ]
        scope = {
            "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
            "method": "POST", "scheme": "http", "path": path, "raw_path": path.encode(),
            "query_string": query, "root_path": "", "headers": headers,
            "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80), "state": {},
        }  # fmt: skip
        sent = False

        async def receive() -> dict[str, Any]:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            await asyncio.Event().wait()  # the client stays until the answer
            raise AssertionError("unreachable")

        answer: list[Any] = []

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                answer.append(message["status"])
            elif message["type"] == "http.response.body":
                answer.append(message.get("body", b""))

        await app(scope, receive, send)
        if answer[0] != 200:
            raise RuntimeError(f"{path} answered {answer[0]}: {b''.join(answer[1:])[:200]!r}")
        return orjson.loads(b"".join(answer[1:]))

    return call


async def _run(steps: int, in_flight: int, settings: Settings) -> dict[str, Any]:
    from putplace.models import ApiKeyCreate
    from putplace.server.app import create_app
    from putplace.service import keys

    app = create_app(settings)
    copies = steps // COPY_SHARE
    # One more step of new contents than measured: the first warms up.
    (warm_up, *fresh), later = _steps(random.Random(7), steps - copies + 1, copies)
    async with app.router.lifespan_context(app):
        state = app.state.putplace
        created = await keys.create_key(state.stores.metadata, ApiKeyCreate(name="bench"))
        call = _caller(app, created.api_key)

        async def one(step: Step) -> None:
            files, bundle, contents = step
            answers = await call("/put_files", b"brief=true", files, b"application/json")
            needed = sum(1 for result in answers["results"] if result["file"]["upload_required"])
            if needed != contents:
                raise RuntimeError(f"{needed} contents asked for, {contents} expected")
            if bundle is not None:
                answer = await call("/bundles", b"", bundle, b"application/vnd.putplace.bundle")
                if answer["stored"] != contents:
                    raise RuntimeError(f"bundle stored {answer['stored']} of {contents}")

        async def run(work: list[Step]) -> None:
            queue = iter(work)

            async def worker() -> None:
                for step in queue:
                    await one(step)

            await asyncio.gather(*(worker() for _ in range(in_flight)))

        await one(warm_up)
        threads, cpu, wall = _thread_cpu(), time.process_time(), time.perf_counter()
        await run(fresh)
        await run(later)  # once every content they copy is stored
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        after = _thread_cpu()
    files = steps * FILES_PER_STEP
    per_thread = {
        name: round((seconds - threads.get(name, 0.0)) / files * 1e6, 1)
        for name, seconds in sorted(after.items(), key=lambda kv: -kv[1])
        if seconds - threads.get(name, 0.0) >= 0.01
    }
    return {
        "files": files,
        "cpu_us_per_file": round(cpu / files * 1e6, 1),
        "files_per_s": round(files / wall),
        "threads_us_per_file": per_thread,
    }


def measure(steps: int, in_flight: int) -> dict[str, Any]:
    """The run, on a fresh database and blob directory (removed afterwards); the other
    settings from the environment, as ``ppserver serve`` takes them."""
    import uvloop

    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(
            database_url=f"sqlite:///{tmp}/putplace.db",
            storage_url=f"file://{tmp}/blobs",
            log_level="warning",
        )
        return uvloop.run(_run(steps, in_flight, settings))


def main() -> None:
    steps = int(os.environ.get("BENCH_INPROC_STEPS", "40"))
    in_flight = int(os.environ.get("BENCH_INPROC_IN_FLIGHT", "4"))
    if steps < 1 or in_flight < 1:
        raise SystemExit("BENCH_INPROC_STEPS and BENCH_INPROC_IN_FLIGHT must be at least 1")
    result = measure(steps, in_flight)
    rows = [
        ("server CPU per file", f"{result['cpu_us_per_file']:.1f} us"),
        ("files/s (in process)", f"{result['files_per_s']:,}"),
    ]
    threads = result["threads_us_per_file"].items()
    rows += [(f"  thread {name}", f"{us:.1f} us") for name, us in threads]
    table(f"server side of a first ingest, in process: {result['files']:,} files", rows)
    record("server_ingest", result)


if __name__ == "__main__":
    main()
