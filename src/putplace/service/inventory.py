"""Reading the inventory: search, history, where content lives, and the statistics built
from the counters each write keeps."""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from enum import StrEnum
from typing import Any

from putplace.config import Quota
from putplace.metadata import MetadataStore
from putplace.metadata.inventory import Cursor, DuplicateGroup, FileQuery, Totals
from putplace.models import FileVersion, Location
from putplace.service import quotas
from putplace.service.errors import InvalidInputError, NotFoundError
from putplace.service.files import FileAnswer, checked_sha256, describe_all

# -- search -----------------------------------------------------------------------------


async def search(
    store: MetadataStore, query: FileQuery, cursor: str | None, limit: int
) -> tuple[list[FileAnswer], str | None]:
    """One page of records and the cursor of the next (None: this was the last)."""
    try:
        after = None if cursor is None else Cursor.decode(cursor, query.order)
        # One more than asked tells whether another page exists.
        found = await store.search_files(query, after, limit + 1)
    except ValueError as exc:
        raise InvalidInputError(str(exc)) from None
    more = len(found) > limit
    found = found[:limit]
    answers = await describe_all(store, [f.record for f in found])
    for answer, item in zip(answers, found, strict=True):
        answer["namespace"] = item.record.namespace
        answer["recorded_at"] = item.record.recorded_at
        answer["deleted_at"] = item.record.deleted_at
    return answers, found[-1].cursor.encode(query.order) if more else None


async def history(
    store: MetadataStore, namespace: str, hostname: str, filepath: str
) -> list[FileVersion]:
    versions = await store.history(hostname, filepath, namespace)
    if not versions:
        raise NotFoundError("this location was never recorded")
    return versions


async def locations(
    store: MetadataStore, sha256: str, namespaces: Sequence[str], *, include_past: bool
) -> list[Location]:
    return await store.locations(
        checked_sha256(sha256), include_past=include_past, namespaces=namespaces
    )


# -- statistics -------------------------------------------------------------------------


_CACHED_QUERIES = 256
_GROWTH_FIELDS = ("bucket", "files_added", "bytes_added", "files_deleted", "bytes_deleted")


class Bucket(StrEnum):
    day = "day"
    week = "week"
    month = "month"


def bucket_of(day: str, bucket: Bucket) -> str:
    """``2026-11-30`` as its day, ISO week's Monday, or month (``2026-11``)."""
    if bucket is Bucket.day:
        return day
    when = date.fromisoformat(day)
    if bucket is Bucket.week:
        return (when - timedelta(days=when.weekday())).isoformat()
    return day[:7]


@dataclass(frozen=True, slots=True)
class Stats:
    files: int
    bytes_referenced: int
    distinct_contents: int
    bytes_stored: int
    bytes_saved: int
    hosts: list[dict[str, Any]]
    duplicate_groups: list[dict[str, Any]]
    growth: list[dict[str, Any]]
    quotas: list[dict[str, Any]]


class DuplicateGroupsCache:
    """The largest duplicate groups, kept for *seconds* per (host, top): they are grouped
    from every record (about a second per million on SQLite), where everything else in
    ``/stats`` is read from counters. One per process; 0 seconds keeps nothing."""

    def __init__(self, seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._seconds = seconds
        self._clock = clock
        self._kept: dict[
            tuple[str | None, int, tuple[str, ...]], tuple[float, list[DuplicateGroup]]
        ] = {}

    async def get(
        self,
        store: MetadataStore,
        hostname: str | None,
        top: int,
        namespaces: Sequence[str] = (),
    ) -> list[DuplicateGroup]:
        now = self._clock()
        key = (hostname, top, tuple(namespaces))
        kept = self._kept.get(key)
        if kept is not None and now - kept[0] < self._seconds:
            return kept[1]
        groups = await store.duplicate_groups(hostname, top, namespaces)
        if self._seconds > 0:
            if len(self._kept) >= _CACHED_QUERIES:  # bounded: hostnames come from callers
                self._kept.clear()
            self._kept[key] = (now, groups)
        return groups


async def stats(
    store: MetadataStore,
    hostname: str | None,
    bucket: Bucket,
    top: int,
    duplicates: DuplicateGroupsCache,
    namespaces: Sequence[str] = (),
    limits: Mapping[str, Quota] | None = None,
) -> Stats:
    """*limits*: the quotas of the namespaces to show usage of."""
    totals = await store.totals(hostname, namespaces)
    if namespaces:  # only what these namespaces sent: the global totals tell what others hold
        count, size = await store.held_totals(namespaces)
        totals = Totals(growth=totals.growth, blob_count=count, blob_bytes=size)
    groups = await duplicates.get(store, hostname, top, namespaces)
    hosts: defaultdict[str, list[int]] = defaultdict(lambda: [0, 0])
    growth: defaultdict[str, list[int]] = defaultdict(lambda: [0, 0, 0, 0])
    for day, _, host, files_added, bytes_added, files_deleted, bytes_deleted in totals.growth:
        hosts[host][0] += files_added - files_deleted
        hosts[host][1] += bytes_added - bytes_deleted
        row = growth[bucket_of(day, bucket)]
        for i, value in enumerate((files_added, bytes_added, files_deleted, bytes_deleted)):
            row[i] += value
    files = sum(h[0] for h in hosts.values())
    referenced = sum(h[1] for h in hosts.values())
    usage = []
    for namespace, quota in sorted((limits or {}).items()):
        used_files, used_bytes = await quotas.usage(store, namespace)
        usage.append({"namespace": namespace, "files": used_files, "files_limit": quota.files,
                      "bytes": used_bytes, "bytes_limit": quota.bytes})  # fmt: skip
    return Stats(
        files=files,
        bytes_referenced=referenced,
        distinct_contents=totals.blob_count,
        bytes_stored=totals.blob_bytes,
        bytes_saved=max(0, referenced - totals.blob_bytes),
        hosts=[{"hostname": h, "files": v[0], "bytes": v[1]} for h, v in sorted(hosts.items())],
        duplicate_groups=[
            {"sha256": g.sha256, "count": g.count, "size": g.size, "wasted_bytes": g.wasted_bytes}
            for g in groups
        ],
        growth=[
            {
                "bucket": b,
                "files_added": v[0],
                "bytes_added": v[1],
                "files_deleted": v[2],
                "bytes_deleted": v[3],
            }
            for b, v in sorted(growth.items())
        ],
        quotas=usage,
    )
