"""Run every benchmark in turn (``make bench``); each prints a table and updates
bench/results.json. Then print one summary of PutPlace beside its peers and ceilings, and
write it as Markdown to bench/results.md. Sizes can be reduced for a quick look, e.g.
``BENCH_FILES=10000 BENCH_LARGE_MIB=256 BENCH_SECONDS=5 make bench``.
``--summary`` only prints and writes the summary of the results already in results.json.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import inventory, large_file, metrics_overhead, server_load, small_files, tus_upload
from bench.common import RESULTS, show, show_ratio

MARKDOWN = RESULTS.with_name("results.md")


@dataclass(frozen=True)
class Figure:
    """One summary row: PutPlace's figure at *ours*, the peer's at *theirs* (dotted paths
    into results.json), and the target for ours / theirs, or for ours alone when *theirs*
    is None (a ceiling such as peak RSS, which must stay *below* it)."""

    name: str
    ours: str
    theirs: str | None
    unit: str
    target: float | None  # None: shown for information
    aim: float | None = None

    def cells(self, results: dict[str, Any]) -> list[str]:
        ours = _get(results, self.ours)
        if self.theirs is None:
            assert self.target is not None
            met = None if ours is None else ours < self.target
            target = f"< {self.target:,.0f} {self.unit}"
            return [self.name, show(ours, self.unit), "", "", target, _yes(met)]
        theirs = _get(results, self.theirs)
        ratio = None if ours is None or not theirs else ours / theirs
        if self.target is None:
            return [self.name, show(ours, self.unit), show(theirs, self.unit),
                    show_ratio(ratio), "", ""]  # fmt: skip
        target = f">= {self.target}" + (f" (aim {self.aim})" if self.aim else "")
        met = None if ratio is None else ratio >= self.target
        return [self.name, show(ours, self.unit), show(theirs, self.unit),
                show_ratio(ratio), target, _yes(met)]  # fmt: skip


FIGURES = [
    Figure("small files, first ingest / restic backup",
           "small_files.first_ingest.files_per_s",
           "small_files.first_ingest.restic_files_per_s", "files/s", 1.0, aim=1.5),
    Figure("small files, first ingest / cp -a + sync",
           "small_files.first_ingest.files_per_s",
           "small_files.first_ingest.cp_sync_files_per_s", "files/s", 0.5),
    # The machine's other load moves this less than the rates above.
    Figure("small files, first ingest, files per CPU-s (server + client) / restic's",
           "small_files.first_ingest.files_per_cpu_s",
           "small_files.first_ingest.restic_files_per_cpu_s", "files/CPU-s", None),
    # The same ingest by the development virtualenv's ppclient and ppserver (make bench):
    # what running PutPlace on an interpreter built without PGO or LTO costs.
    Figure("small files, first ingest on the development interpreter / restic backup",
           "small_files.first_ingest_on_also_python.files_per_s",
           "small_files.first_ingest.restic_files_per_s", "files/s", None),
    Figure("small files, unchanged rescan / restic's second backup",
           "small_files.unchanged_rescan.files_per_s",
           "small_files.unchanged_rescan.restic_files_per_s", "files/s", 2.0),
    Figure("large file / cp + sync", "large_file.end_to_end_mib_per_s",
           "large_file.cp_sync_mib_per_s", "MiB/s", 0.9),
    # What the CPU work of an ingest allows on this machine's cores, however well spread:
    # a ratio under the target here means the target needs less work, not more overlap.
    Figure("large file, the most its CPU-s allow on all cores / cp + sync",
           "large_file.cpu_bound_mib_per_s", "large_file.cp_sync_mib_per_s", "MiB/s", None),
    Figure("large file / restic backup", "large_file.end_to_end_mib_per_s",
           "large_file.restic_mib_per_s", "MiB/s", 1.5),
    Figure("large file, server peak RSS", "large_file.server_peak_rss_mib", None, "MiB", 150),
    Figure("large file, client peak RSS", "large_file.client_peak_rss_mib", None, "MiB", 150),
    Figure("very large file, tus 4 parts / tus 1 stream (loopback)",
           "tus_upload.tus_4_parts.mib_per_s", "tus_upload.tus_1_stream.mib_per_s", "MiB/s",
           None),
    Figure("very large file, tus 4 parts / cp + sync", "tus_upload.tus_4_parts.mib_per_s",
           "tus_upload.cp_sync_mib_per_s", "MiB/s", None),
    Figure("very large file, tus 1 stream / cp + sync", "tus_upload.tus_1_stream.mib_per_s",
           "tus_upload.cp_sync_mib_per_s", "MiB/s", None),
    Figure("very large file, tus 1 stream / PUT /blobs", "tus_upload.tus_1_stream.mib_per_s",
           "tus_upload.put_blobs.mib_per_s", "MiB/s", None),
    Figure("tus 4 parts / 1 stream, 20 MiB/s per connection",
           "tus_upload.slow_link.tus_4_parts.mib_per_s",
           "tus_upload.slow_link.tus_1_stream.mib_per_s", "MiB/s", 2.0),
    Figure("tus 4 parts, server peak RSS", "tus_upload.tus_4_parts.server_peak_rss_mib", None,
           "MiB", 200),
    Figure("tus 4 parts, client peak RSS", "tus_upload.tus_4_parts.client_peak_rss_mib", None,
           "MiB", 200),
    Figure("/put_file with metrics / without (wrk, median of the rounds)",
           "metrics_overhead.on_records_per_s", "metrics_overhead.off_records_per_s",
           "records/s", 0.95),
    # Less moved by the machine's other load than throughput: CPU per record, off / on.
    Figure("/put_file server CPU per record, without / with metrics",
           "metrics_overhead.off_cpu_us_per_record", "metrics_overhead.on_cpu_us_per_record",
           "us", 0.95),
    Figure("/put_files x1000 / bare SQLite upsert loop",
           "server_load.batched.records_per_s",
           "server_load.batched.bare_sqlite_records_per_s", "records/s", 0.6),
    Figure("/put_file, wrk 64 connections / bare FastAPI app",
           "server_load.single.records_per_s",
           "server_load.single.bare_fastapi_records_per_s", "records/s", 0.5),
]  # fmt: skip
HEADER = ["figure", "PutPlace", "peer", "ratio", "target", "met?"]


def _get(results: dict[str, Any], path: str) -> Any:
    value: Any = results
    for part in path.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def _yes(met: bool | None) -> str:
    return "skipped" if met is None else "yes" if met else "NO"


def summary() -> None:
    results = json.loads(RESULTS.read_text())
    rows = [HEADER, *(figure.cells(results) for figure in FIGURES)]
    server = results.get("server_load", {})
    present = f"{server.get('present_total', 0):,} / {server.get('acknowledged_total', 0):,}"
    rows.append(["server: records present afterwards / acknowledged", present, "", "",
                 "all", _yes(server.get("all_present"))])  # fmt: skip
    widths = [max(len(row[i]) for row in rows) for i in range(len(HEADER))]
    python = results.get("small_files", {}).get("python", "an unrecorded interpreter")
    also = (results.get("small_files", {}).get("first_ingest_on_also_python") or {}).get("python")
    header = f"PutPlace on {python}" + (f"; development interpreter: {also}" if also else "")
    print("\nsummary (ratio = PutPlace / peer, higher is better; same run)")
    print(header)
    for n, row in enumerate(rows):
        print("  ".join(cell.ljust(w) if i == 0 else cell.rjust(w)
                        for i, (cell, w) in enumerate(zip(row, widths, strict=True))))  # fmt: skip
        if n == 0:
            print("  ".join("-" * w for w in widths))
    lines = [f"| {' | '.join(row)} |" for row in rows]
    lines.insert(1, "|" + "|".join("---" for _ in HEADER) + "|")
    lines.insert(0, header + "\n")
    MARKDOWN.write_text("\n".join(lines) + "\n")
    print(f"\nwritten to {RESULTS.name} and {MARKDOWN.name}")


if __name__ == "__main__":
    # Anything else is refused: a typo must not start the half-hour run and overwrite
    # bench/results.json.
    if sys.argv[1:] not in ([], ["--summary"]):
        raise SystemExit(f"usage: {sys.argv[0]} [--summary]")
    if "--summary" not in sys.argv[1:]:
        small_files.main()
        large_file.main()
        server_load.main()
        inventory.main()
        tus_upload.main()
        metrics_overhead.main()
    summary()
