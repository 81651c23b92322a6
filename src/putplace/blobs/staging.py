"""Staging for resumable uploads: bytes that arrive over many requests (and many API
processes) and become a blob only when whole and verified.

A staging area only keeps bytes; the metadata store keeps how many are acknowledged
(:class:`putplace.metadata.uploads.Upload`). Writes go to absolute offsets, so two
requests sending the same bytes of an upload at once cannot corrupt it, and bytes past
the acknowledged offset (a request cut short, a crash) are simply written over by the
next request. Hashing is the caller's job (:mod:`putplace.service.resumable`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterable, AsyncIterator
from typing import Any

from putplace.blobs.base import BlobError


class StagingBusyError(BlobError):
    """Another writer (perhaps of a process that lost its lease) still writes this upload."""


#: A backend's own state for one upload (an S3 multipart upload's id): JSON-friendly,
#: kept in the upload's record so any API process can continue the upload.
StagingState = dict[str, Any]


class UploadStaging(ABC):
    """Where resumable uploads wait, beside the blobs of the same store."""

    @abstractmethod
    async def create(self, upload_id: str, length: int) -> StagingState:
        """Prepare an empty upload of *length* bytes; the state to keep with its record."""

    @abstractmethod
    async def append(
        self,
        upload_id: str,
        state: StagingState,
        offset: int,
        length: int,
        chunks: AsyncIterable[bytes],
        *,
        batch: int | None = None,
    ) -> tuple[int, StagingState]:
        """Write *chunks* from *offset* on; return the offset reached, durably, and the
        state to keep from now on. *batch*: bytes to gather before each write, if the
        store writes in batches (None: its own default).

        *length* is the upload's total size. If *chunks* or the store raises, the
        exception propagates and nothing is acknowledged: bytes written past *offset* are
        written over by the next request. (A body cut short is not an error: the caller
        ends *chunks* there, and what arrived is kept.) :class:`StagingBusyError` when
        another writer of this upload is still at work (callers also hold a lease)."""

    @abstractmethod
    def read(self, upload_id: str, state: StagingState, length: int) -> AsyncIterator[bytes]:
        """The bytes of a whole upload, in order."""

    @abstractmethod
    async def promote(self, upload_id: str, state: StagingState, sha256: str) -> None:
        """Make a whole upload, verified by the caller, the blob *sha256*, durably, and
        free its staging space. Idempotent per content, like a blob commit."""

    @abstractmethod
    async def discard(self, upload_id: str, state: StagingState) -> None:
        """Free everything the upload holds. Safe to call more than once."""

    @abstractmethod
    def list_ids(self) -> AsyncIterator[str]:
        """Ids of every upload with something staged (``gc`` finds those no record knows)."""
