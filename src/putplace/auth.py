"""API keys: generation, hashing, verification. Keys are stored as SHA-256 only."""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from collections import OrderedDict
from datetime import UTC, datetime
from typing import Final

from putplace.models import ApiKeyRecord

KEY_BYTES: Final = 32  # 64 hex characters
_KEY_RE: Final = re.compile(r"[0-9a-f]{64}")


def generate_key() -> str:
    """A new API key: 64 hex characters from the OS CSPRNG."""
    return secrets.token_hex(KEY_BYTES)


def hash_key(key: str) -> str:
    """The stored form of a key."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def looks_like_key(key: str) -> bool:
    """Cheap shape check so junk never reaches the database."""
    return _KEY_RE.fullmatch(key) is not None


def key_matches(key: str, record: ApiKeyRecord) -> bool:
    """Constant-time comparison of a presented key against a stored hash."""
    return hmac.compare_digest(hash_key(key), record.key_hash)


def utcnow() -> datetime:
    """Now, to the millisecond: the precision MongoDB keeps, so a time read back from
    either backend equals the one written (version intervals compare exactly)."""
    now = datetime.now(UTC)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


class KeyCache:
    """A small per-process cache of verified keys, bounded in size and age.

    A revoked or deleted key keeps working for at most ``ttl`` seconds in a process that
    had verified it just before. ``ttl == 0`` disables caching.
    """

    def __init__(self, ttl: float, max_entries: int = 4096) -> None:
        self._ttl = ttl
        self._max = max_entries
        self._entries: OrderedDict[str, tuple[float, ApiKeyRecord]] = OrderedDict()
        #: Bumped by every :meth:`forget`: a record read from the store before a
        #: revocation was heard must not be cached after it.
        self.generation = 0

    def get(self, key_hash: str) -> ApiKeyRecord | None:
        entry = self._entries.get(key_hash)
        if entry is None:
            return None
        expires, record = entry
        if time.monotonic() >= expires:
            del self._entries[key_hash]
            return None
        return record

    def put(self, record: ApiKeyRecord, read_in_generation: int) -> None:
        """Cache *record*, read from the store when :attr:`generation` was
        *read_in_generation* (unless a key was forgotten since: it may be this one)."""
        if self._ttl <= 0 or read_in_generation != self.generation:
            return
        self._entries[record.key_hash] = (time.monotonic() + self._ttl, record)
        self._entries.move_to_end(record.key_hash)
        while len(self._entries) > self._max:
            self._entries.popitem(last=False)

    def update(self, record: ApiKeyRecord) -> None:
        """Replace a cached record (its last use noted) without extending its deadline:
        a record is re-read from the store at least every ``ttl``, so a revocation or
        rotation made by another process is seen in time."""
        entry = self._entries.get(record.key_hash)
        if entry is not None:
            self._entries[record.key_hash] = (entry[0], record)

    def forget(self, key_hash: str | None) -> None:
        """Drop the key with this hash; with None, every key (announcements of revoked
        keys may have been missed)."""
        self.generation += 1
        if key_hash is None:
            self._entries.clear()
        else:
            self._entries.pop(key_hash, None)
