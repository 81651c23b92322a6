"""The content-addressed blob store interface every backend implements."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from putplace.digest import INVALID_SHA256, is_sha256_hex

if TYPE_CHECKING:
    from putplace.blobs.staging import UploadStaging

#: Where blobs whose bytes no longer match their name are moved (a directory or key prefix
#: beside the blobs), for an operator to inspect.
QUARANTINE_DIR = ".quarantine"
_QUARANTINE_STAMP = "%Y%m%dT%H%M%SZ"


def quarantine_name(sha256: str) -> str:
    """The name a copy of *sha256* put aside now takes (in :data:`QUARANTINE_DIR`)."""
    return f"{sha256}.{datetime.now(UTC).strftime(_QUARANTINE_STAMP)}"


def quarantined_when(name: str, sha256: str) -> datetime | None:
    """When the copy named *name* was put aside, if it is a copy of *sha256* (local
    copies named before December 2026 carry Unix seconds)."""
    stamp = name.removeprefix(f"{sha256}.")
    if stamp == name:
        return None
    if stamp.isdigit():
        return datetime.fromtimestamp(int(stamp), UTC)
    try:
        return datetime.strptime(stamp, _QUARANTINE_STAMP).replace(tzinfo=UTC)
    except ValueError:
        return None


class BlobError(Exception):
    """Base class of blob store errors."""


class InvalidBlobNameError(BlobError, ValueError):
    """A name that is not 64 lowercase hex digits: never used as a path or key."""


class BlobNotFoundError(BlobError, LookupError):
    pass


class StorageFullError(BlobError):
    """The store has no space left (HTTP 507)."""


class StorageUnavailableError(BlobError):
    """The store failed for a reason that may pass (HTTP 503)."""


class BlobTooLargeError(BlobError):
    """The content is larger than this backend can hold as one blob (HTTP 413)."""


@dataclass(frozen=True)
class StoredBlob:
    """A blob as the store lists it."""

    sha256: str
    size: int
    modified: datetime


@dataclass(frozen=True)
class Capacity:
    free: int
    total: int


def checked_name(sha256: str) -> str:
    """*sha256* itself, or :class:`InvalidBlobNameError` if it is not a valid blob name."""
    if not is_sha256_hex(sha256):
        raise InvalidBlobNameError(INVALID_SHA256)
    return sha256


class BlobWriter(ABC):
    """Bytes on their way into the store, under a temporary name until :meth:`commit`."""

    @abstractmethod
    async def write(self, data: bytes) -> None: ...

    async def write_all(self, chunks: Sequence[bytes]) -> None:
        """Write *chunks* in order. Backends that can write a list at once override this."""
        for data in chunks:
            await self.write(data)

    @abstractmethod
    async def commit(self) -> None:
        """Make the blob visible under its final name, durably. Idempotent per content:
        committing content that is already stored leaves one intact blob."""

    @abstractmethod
    async def abort(self) -> None:
        """Discard everything written. Safe to call more than once."""


Contents = Sequence[tuple[str, bytes | memoryview]]
"""Whole, already verified contents: ``(sha256, bytes or a view of them)``."""


class GroupWriter(ABC):
    """A group of contents stored together, added a part at a time, so that whoever adds
    them (a bundle arriving) need not hold the whole group in memory."""

    @abstractmethod
    async def add(self, contents: Contents) -> None:
        """Write *contents* (valid names, verified bytes) into the group. Once this
        returns their bytes are no longer read: the caller may write over them."""

    @abstractmethod
    async def commit(self) -> None:
        """Every content added is durable under its final name when this returns."""

    @abstractmethod
    async def abort(self) -> None:
        """End the group without committing it. What was added is gone, or (a store that
        stores each content as it is added) whole and unrecorded; never partial."""


class _StoredAsAdded(GroupWriter):
    """A group for a store without a group commit: each part stored when it is added."""

    def __init__(self, store: BlobStore) -> None:
        self._store = store

    async def add(self, contents: Contents) -> None:
        await self._store.put_many(contents)

    async def commit(self) -> None:
        pass

    async def abort(self) -> None:
        pass


class BlobStore(ABC):
    """Stores content under its SHA-256. Backends never hash; :mod:`.ingest` verifies."""

    kind: str

    async def open(self) -> None:  # noqa: B027 - optional hook
        """Prepare the store (create directories, check the bucket)."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""

    @abstractmethod
    async def ping(self) -> bool:
        """True when the store answers."""

    @abstractmethod
    async def begin(self, sha256: str, size_hint: int | None = None) -> BlobWriter:
        """Start writing the content named *sha256* to a temporary location.

        *size_hint* is the expected size when known; backends may size their parts by it."""

    def group(self) -> GroupWriter:
        """A new group for contents added in parts. Backends with a group commit (local
        disk: one pack file) override this; by default each part is :meth:`put_many`."""
        return _StoredAsAdded(self)

    async def put_many(self, contents: Contents) -> None:
        """Store whole, already verified contents ``(sha256, bytes or a view of them)``
        durably, as a group.

        When this returns, every one is durable under its final name; if it raises, each
        is either whole under its final name or absent. Backends override this to share
        one durability barrier (local disk) or to send concurrently (S3); this default
        commits them one by one.
        """
        for sha256, data in contents:
            writer = await self.begin(sha256, size_hint=len(data))
            try:
                await writer.write(bytes(data))  # a view of a bundle: writers take bytes
                await writer.commit()
            except BaseException:
                await writer.abort()
                raise

    @abstractmethod
    async def size(self, sha256: str) -> int | None:
        """Size in bytes, or None when the blob is not stored."""

    async def exists(self, sha256: str) -> bool:
        return await self.size(sha256) is not None

    @abstractmethod
    def read(self, sha256: str, start: int = 0, length: int | None = None) -> AsyncIterator[bytes]:
        """Stream ``length`` bytes (all remaining when None) from offset ``start``.

        Raises :class:`BlobNotFoundError` on first iteration when the blob is absent."""

    @abstractmethod
    async def delete(self, sha256: str) -> bool:
        """Remove a blob. True when it existed."""

    @abstractmethod
    def list(self) -> AsyncIterator[StoredBlob]:
        """Every blob under its final name, in no particular order (``gc`` finds those no
        record knows). Temporary and quarantined copies are not listed."""

    @abstractmethod
    async def cleanup_temporary(self, older_than_seconds: float) -> int:
        """Remove abandoned temporary uploads older than the given age; returns how many."""

    @abstractmethod
    async def quarantine(self, sha256: str) -> bool:
        """Move a blob whose bytes no longer match its name out of the way for inspection."""

    @abstractmethod
    async def quarantined_since(self, sha256: str) -> datetime | None:
        """When :meth:`quarantine` last put a copy of this content aside, if ever
        (``verify`` finishing a quarantine that was cut short after the move)."""

    @abstractmethod
    def staging(self) -> UploadStaging:
        """Where this store's resumable uploads wait until they are whole."""

    async def capacity(self) -> Capacity | None:
        """Free and total bytes where the store keeps content, or None where that has no
        meaning (object stores grow without a limit the server can see)."""
        return None

    def describe(self) -> dict[str, Any]:
        """Safe-to-show description (no credentials)."""
        return {"type": self.kind}
