"""The inventory rules every metadata backend applies alike: what makes a new version,
what a deletion records, how counters move, and how searches are described and paged.

Backends only read and write; the decisions are made here, once.
"""

from __future__ import annotations

import base64
import json
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any, NamedTuple

from putplace.metadata.globs import glob_regex
from putplace.models import STORED, FileMetadata, FileRecord, FileVersion

#: Fields whose change makes a new version. Access time changes whenever a file is read
#: (a backup reads every file), and the IP address is the reporting host's, not the
#: file's: counting either would make a version per scan.
VERSIONED_FIELDS: tuple[str, ...] = tuple(
    name
    for name in FileMetadata.model_fields
    if name not in ("hostname", "filepath", "ip_address", "file_atime")
)

Location = tuple[str, str]


def day_of(when: datetime) -> str:
    """The UTC day a change is counted in: ``2026-11-30``."""
    return when.date().isoformat()


def by_directory(filepaths: Iterable[str]) -> dict[str, list[str]]:
    """Paths as ``{directory: [names]}``: how a scan keeps what it saw, a row per
    directory rather than a write per file."""
    seen: dict[str, list[str]] = {}
    for path in filepaths:
        directory, _, name = path.rpartition("/")
        seen.setdefault(directory or "/", []).append(name)
    return seen


def split_path(path: str) -> tuple[str, str]:
    """``("/a/b", "c")`` for ``/a/b/c``, as :func:`by_directory` keys it."""
    directory, _, name = path.rpartition("/")
    return directory or "/", name


def is_new_version(old: FileRecord, new: FileMetadata) -> bool:
    """True when *new* is not what *old* holds now: other content or metadata, or *old*
    is a deletion (the file came back)."""
    if old.deleted_at is not None:
        return True
    before, after = old.__dict__, new.__dict__
    return any(before[name] != after[name] for name in VERSIONED_FIELDS)


def current_version(record: FileRecord) -> FileVersion:
    """The current state of a location as the first item of its history."""
    return FileVersion.model_validate(
        {**record.model_dump(), "valid_from": record.recorded_at,
         "deleted": record.deleted_at is not None},
        context=STORED,
    )  # fmt: skip


@dataclass(frozen=True, slots=True)
class PastVersion:
    """A state that has just ended, as it is kept in the history."""

    file_id: str
    record: FileRecord
    valid_from: datetime
    valid_to: datetime
    deleted: bool


def ended(record: FileRecord, now: datetime) -> PastVersion:
    return PastVersion(
        file_id=record.id,
        record=record,
        valid_from=record.recorded_at,
        valid_to=replaced_at(record, now),
        deleted=record.deleted_at is not None,
    )


def replaced_at(record: FileRecord, now: datetime) -> datetime:
    """When a write (or deletion) at *now* replaces *record*: never before it began. A write's
    time is taken when its request arrives; with several server processes it may then
    wait for another's lock (or their clocks differ), and a later-begun version would
    otherwise end before it began (seen: 674 of 11,950 with two processes)."""
    return max(now, record.recorded_at)


#: A counter row: (day, namespace, hostname, files_added, bytes_added, files_deleted,
#: bytes_deleted).
GrowthRow = tuple[str, str, str, int, int, int, int]


@dataclass(slots=True)
class Growth:
    """Counter changes, per (UTC day, namespace, hostname): ``[files_added, bytes_added,
    files_deleted, bytes_deleted]``. Live files of a host are the sum of added minus
    deleted over all days, so one table answers both totals and growth."""

    by_day_host: defaultdict[tuple[str, str, str], list[int]] = field(
        default_factory=lambda: defaultdict(lambda: [0, 0, 0, 0])
    )

    def add(self, day: str, namespace: str, host: str, files: int, size: int) -> None:
        row = self.by_day_host[day, namespace, host]
        row[0] += files
        row[1] += size

    def remove(self, day: str, namespace: str, host: str, files: int, size: int) -> None:
        row = self.by_day_host[day, namespace, host]
        row[2] += files
        row[3] += size

    def resize(self, day: str, namespace: str, host: str, old: int, new: int) -> None:
        if new >= old:
            self.add(day, namespace, host, 0, new - old)
        else:
            self.remove(day, namespace, host, 0, old - new)

    @classmethod
    def combined(cls, parts: Iterable[Growth]) -> Growth:
        """The changes of all *parts*, added up per (day, namespace, hostname)."""
        total = cls()
        for part in parts:
            for key, values in part.by_day_host.items():
                row = total.by_day_host[key]
                for i, value in enumerate(values):
                    row[i] += value
        return total

    def rows(self) -> list[GrowthRow]:
        return [(d, n, h, *v) for (d, n, h), v in self.by_day_host.items() if any(v)]  # type: ignore[misc]


class WritePlan(NamedTuple):
    """What one write does: each record with the time its version began, the versions
    it ends, and the counter changes."""

    records: list[tuple[FileMetadata, datetime]]
    history: list[PastVersion]
    growth: Growth


def plan_puts(
    files: Sequence[FileMetadata],
    current: Mapping[Location, FileRecord],
    now: datetime,
    namespace: str,
) -> WritePlan:
    """*files* (one per location of *namespace*) against the records *current* holds for
    them."""
    records: list[tuple[FileMetadata, datetime]] = []
    history: list[PastVersion] = []
    growth = Growth()
    day = day_of(now)
    for meta in files:
        old = current.get((meta.hostname, meta.filepath))
        if old is None:
            growth.add(day, namespace, meta.hostname, 1, meta.file_size)
            records.append((meta, now))
        elif is_new_version(old, meta):
            history.append(ended(old, now))
            if old.deleted_at is not None:
                growth.add(day, namespace, meta.hostname, 1, meta.file_size)
            else:
                growth.resize(day, namespace, meta.hostname, old.file_size, meta.file_size)
            records.append((meta, replaced_at(old, now)))
        else:
            records.append((meta, old.recorded_at))
    return WritePlan(records, history, growth)


def plan_deletes(records: Iterable[FileRecord], now: datetime) -> WritePlan:
    """Live *records* found gone: each live version ends now, and a deletion begins."""
    history: list[PastVersion] = []
    growth = Growth()
    day = day_of(now)
    for record in records:
        if record.deleted_at is None:
            history.append(ended(record, now))
            growth.remove(day, record.namespace, record.hostname, 1, record.file_size)
    return WritePlan([], history, growth)


# -- searching ------------------------------------------------------------------------


class FileState(StrEnum):
    live = "live"
    deleted = "deleted"
    all = "all"


class SortKey(StrEnum):
    """What a search is ordered by; ties are broken by (source, id)."""

    id = "id"
    path = "path"
    size = "size"
    mtime = "mtime"
    recorded = "recorded"


#: The record field each sort key orders by (None: the id alone).
SORT_FIELDS: dict[SortKey, str | None] = {
    SortKey.id: None,
    SortKey.path: "filepath",
    SortKey.size: "file_size",
    SortKey.mtime: "file_mtime",
    SortKey.recorded: "recorded_at",
}

#: Where a searched record comes from: the current records, or (for "as of") the history.
CURRENT, HISTORY = 0, 1


@dataclass(frozen=True, slots=True)
class FileQuery:
    """Filters of ``GET /files``; every one given must hold. ``namespaces``: those the
    records may be in (empty: any)."""

    namespaces: tuple[str, ...] = ()
    hostnames: tuple[str, ...] = ()
    path_prefix: str | None = None
    path_glob: str | None = None
    sha256: str | None = None
    min_size: int | None = None
    max_size: int | None = None
    mtime_after: float | None = None
    mtime_before: float | None = None
    recorded_after: datetime | None = None
    recorded_before: datetime | None = None
    uploaded_after: datetime | None = None
    uploaded_before: datetime | None = None
    has_content: bool | None = None
    state: FileState = FileState.live
    as_of: datetime | None = None
    sort: SortKey = SortKey.id
    descending: bool = False

    @property
    def order(self) -> str:
        """The ``sort`` parameter this query answers: ``size``, ``-size``..."""
        return ("-" if self.descending else "") + self.sort.value

    @property
    def path_regex(self) -> str | None:
        """The glob as MongoDB matches it (SQLite: :class:`globs.PathGlob`)."""
        return None if self.path_glob is None else glob_regex(self.path_glob)

    @property
    def prefix_range(self) -> tuple[str, str, str] | None:
        """``(exact, low, high)``: a path under the prefix equals *exact* or lies in
        ``[low, high)``, so both backends serve it from the location index."""
        return None if self.path_prefix is None else prefix_range(self.path_prefix)

    @property
    def needs_blob(self) -> bool:
        return (
            self.has_content is not None
            or self.uploaded_after is not None
            or self.uploaded_before is not None
        )


def prefix_range(prefix: str) -> tuple[str, str, str]:
    """``/srv`` matches ``/srv`` and ``/srv/...`` (``/`` sorts just before ``0``), never
    ``/srvx``."""
    exact = prefix.rstrip("/") or "/"
    base = exact if exact.endswith("/") else exact + "/"
    return exact, base, base[:-1] + "0"


class Cursor(NamedTuple):
    """Where a page ended: the last record's sort value, source and id. Its text form
    also names the order of the search it continues (:attr:`FileQuery.order`): a sort
    value means nothing in another order."""

    value: Any
    source: int
    id: str

    def encode(self, order: str) -> str:
        raw = json.dumps([self.value, self.source, self.id, order], separators=(",", ":"))
        return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")

    @classmethod
    def decode(cls, text: str, order: str) -> Cursor:
        """ValueError for anything this module did not encode for a search in *order*."""
        try:
            raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
            value, source, ident, made_for = json.loads(raw)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"invalid cursor: {text!r}") from exc
        if source not in (CURRENT, HISTORY) or not isinstance(ident, str):
            raise ValueError(f"invalid cursor: {text!r}")
        if made_for != order:
            raise ValueError(
                f"the cursor continues a search sorted by {made_for!r}, not {order!r}: "
                "follow it with the sort it came with"
            )
        if value is not None and not isinstance(value, str | int | float):
            raise ValueError(f"invalid cursor: {text!r}")
        return cls(value, source, ident)


class Listed(NamedTuple):
    """A live record as a scan's completion lists it: enough to tell whether the scan saw
    it, and to delete it only if nobody reported it since (its ``updated_at``)."""

    id: str
    filepath: str
    updated_at: datetime


class Found(NamedTuple):
    """One search result and the cursor that resumes after it."""

    record: FileRecord
    cursor: Cursor


def tie_rule(cursor: Cursor, source: int, descending: bool) -> tuple[bool, str | None]:
    """For records of *source* whose sort value equals the cursor's: ``(include,
    beyond_id)``: whether any come after the cursor, and if so only those whose id lies
    beyond *beyond_id* (greater ascending, smaller descending). Order within one sort
    value is (source, id), in the direction of the sort."""
    if source == cursor.source:
        return True, cursor.id
    return (source < cursor.source) if descending else (source > cursor.source), None


@dataclass(frozen=True, slots=True)
class DuplicateGroup:
    sha256: str
    count: int
    size: int

    @property
    def wasted_bytes(self) -> int:
        return (self.count - 1) * self.size


@dataclass(frozen=True, slots=True)
class Totals:
    """What ``GET /stats`` is computed from, as a backend reads it."""

    growth: list[GrowthRow]
    blob_count: int
    blob_bytes: int
