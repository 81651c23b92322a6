"""Resumable (tus) uploads as the metadata store keeps them: the record both backends
store alike, as a flat dict of JSON-friendly values."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime
from typing import Any


@dataclass(frozen=True)
class Upload:
    """One resumable upload: how far it has got, and what it will become.

    ``offset`` is the number of bytes acknowledged: durable in the staging area before
    the record says so, so it survives a crash of any process at any moment.
    """

    id: str
    namespace: str
    length: int
    offset: int
    created_at: datetime
    expires_at: datetime
    #: The content's declared SHA-256; None for a partial upload (its final upload
    #: declares the hash of the whole).
    sha256: str | None = None
    #: A part of a concatenation (``Upload-Concat: partial``): never a blob by itself.
    partial: bool = False
    #: A final upload: the ids of the partial uploads it joins, in order.
    parts: tuple[str, ...] = ()
    #: ``Upload-Metadata`` as sent, decoded; returned unchanged by ``HEAD``.
    metadata: dict[str, str] = field(default_factory=dict)
    #: The staging area's own state (an S3 multipart upload's id, its part size).
    staging: dict[str, Any] = field(default_factory=dict)
    #: When the last byte was verified and stored (or, for a partial, received).
    completed_at: datetime | None = None

    @property
    def complete(self) -> bool:
        return self.completed_at is not None

    def advanced(self, offset: int, expires_at: datetime) -> Upload:
        return replace(self, offset=offset, expires_at=expires_at)


#: What ``advance_upload`` changes: the rest is fixed when the upload is created.
PROGRESS_FIELDS = ("offset", "expires_at", "staging", "completed_at")

_FIELDS = tuple(Upload.__dataclass_fields__)

#: Columns whose values are JSON text in a row (SQLite) and plain values in a document.
_JSON_FIELDS = ("parts", "metadata", "staging")


def upload_to_row(upload: Upload) -> dict[str, Any]:
    """The record as flat values; lists and dicts as JSON text."""
    row = asdict(upload)
    for name in _JSON_FIELDS:
        row[name] = json.dumps(row[name])
    row["partial"] = int(upload.partial)
    return row


def upload_from_row(row: dict[str, Any], parse_time: Any) -> Upload:
    """The record from :func:`upload_to_row`'s values (times parsed by *parse_time*);
    other columns (the lease) are not part of it."""
    values = {name: row[name] for name in _FIELDS}
    for name in _JSON_FIELDS:
        if isinstance(values[name], str):
            values[name] = json.loads(values[name])
    values["parts"] = tuple(values["parts"])
    values["partial"] = bool(values["partial"])
    for name in ("created_at", "expires_at", "completed_at"):
        values[name] = parse_time(values[name]) if values[name] is not None else None
    return Upload(**values)
