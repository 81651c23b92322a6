"""Benchmark 5: one very large file over tus (resumable uploads), in the same run:

- on loopback to local disk: ``--tus-parts 4`` against one tus stream, the plain streamed
  upload (``PUT /blobs``, ``--tus-threshold 0``) and ``cp`` + ``sync``
  (BENCH_TUS_MIB, default 4096 MiB);
- over a link where each TCP connection is limited to BENCH_TUS_LINK_MIB_S (default 20)
  MiB/s, as one long-distance stream is: 4 parts against one stream
  (BENCH_TUS_LINK_FILE_MIB, default 512 MiB).

Each upload goes to a fresh server (fsync on); peak RSS of server and client is kept.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from bench.common import (
    cp_sync,
    create_key,
    per_s,
    ppserver,
    ratio,
    record,
    run_client,
    server_env,
    show,
    show_ratio,
    table,
    warm,
)
from bench.throttle import throttled

MIB = 1024 * 1024
LOCAL = {
    "tus_4_parts": ("--tus-parts", "4"),
    "tus_1_stream": ("--tus-parts", "1"),
    "put_blobs": ("--tus-threshold", "0"),
}
LINK = {"tus_4_parts": ("--tus-parts", "4"), "tus_1_stream": ("--tus-parts", "1")}


def make_file(path: Path, mib: int) -> None:
    block = os.urandom(MIB)
    with path.open("wb") as handle:
        for i in range(mib):
            handle.write(block[:-8] + i.to_bytes(8, "big"))


def upload(
    work: Path, data: Path, mib: int, args: tuple[str, ...], link: float | None
) -> dict[str, Any]:
    """One upload of *data* to a fresh server, through a throttled link when given."""
    run = work / "run"
    run.mkdir()
    try:
        env = server_env(run)
        key = create_key(run, env)
        with ppserver(run, env) as server:
            warm(data)
            if link is None:
                seconds, client_rss, _ = run_client(server.url, key, "--no-cache", *args,
                                                    str(data))  # fmt: skip
            else:
                port = urlsplit(server.url).port
                assert port is not None
                with throttled(port, link * MIB) as url:
                    seconds, client_rss, _ = run_client(url, key, "--no-cache", *args,
                                                        str(data))  # fmt: skip
            server_rss = server.peak_rss_mib()
    finally:
        shutil.rmtree(run)  # free the disk for the next upload
    return {
        "mib_per_s": round(mib / seconds, 1),
        "server_peak_rss_mib": round(server_rss, 1),
        "client_peak_rss_mib": round(client_rss, 1),
    }


def main() -> None:
    mib = int(os.environ.get("BENCH_TUS_MIB", "4096"))
    link_mib = int(os.environ.get("BENCH_TUS_LINK_FILE_MIB", "512"))
    link_rate = float(os.environ.get("BENCH_TUS_LINK_MIB_S", "20"))
    results: dict[str, Any] = {"size_mib": mib}
    with tempfile.TemporaryDirectory(prefix="pp-bench-tus-") as tmp:
        work = Path(tmp)
        data = work / "big.bin"
        make_file(data, mib)
        copy = cp_sync(data, work / "copy.bin")
        (work / "copy.bin").unlink()
        results["cp_sync_mib_per_s"] = per_s(mib, copy)
        for name, args in LOCAL.items():
            results[name] = upload(work, data, mib, args, None)
        data.unlink()
        make_file(data, link_mib)
        link: dict[str, Any] = {"size_mib": link_mib, "per_connection_mib_per_s": link_rate}
        for name, args in LINK.items():
            link[name] = upload(work, data, link_mib, args, link_rate)
        results["slow_link"] = link
    copy_rate = results["cp_sync_mib_per_s"]
    rows = [("cp + sync", show(copy_rate, "MiB/s"))]
    for name in LOCAL:
        way = results[name]
        way["ratio_to_cp_sync"] = ratio(way["mib_per_s"], copy_rate)
        rows += [
            (name.replace("_", " "), show(way["mib_per_s"], "MiB/s")),
            ("  ratio to cp + sync", show_ratio(way["ratio_to_cp_sync"])),
            ("  server / client peak RSS",
             f"{way['server_peak_rss_mib']:.0f} / {way['client_peak_rss_mib']:.0f} MiB"),
        ]  # fmt: skip
    parts, single = results["tus_4_parts"]["mib_per_s"], results["tus_1_stream"]["mib_per_s"]
    results["parts_to_single_stream"] = ratio(parts, single)
    results["single_stream_to_put_blobs"] = ratio(single, results["put_blobs"]["mib_per_s"])
    rows += [
        ("4 parts / 1 stream", show_ratio(results["parts_to_single_stream"])),
        ("1 tus stream / PUT /blobs", show_ratio(results["single_stream_to_put_blobs"])),
    ]
    table(f"very large file over tus: {mib:,} MiB, loopback, local disk", rows)
    link["parts_to_single_stream"] = ratio(
        link["tus_4_parts"]["mib_per_s"], link["tus_1_stream"]["mib_per_s"]
    )
    table(
        f"over a link of {link_rate:g} MiB/s per connection: {link_mib:,} MiB",
        [
            ("tus 4 parts", show(link["tus_4_parts"]["mib_per_s"], "MiB/s")),
            ("tus 1 stream", show(link["tus_1_stream"]["mib_per_s"], "MiB/s")),
            ("4 parts / 1 stream", show_ratio(link["parts_to_single_stream"])),
        ],
    )
    record("tus_upload", results)


if __name__ == "__main__":
    main()
