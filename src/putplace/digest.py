"""SHA-256 helpers and the names client and server both check (standard library only)."""

from __future__ import annotations

import hashlib
import re
from typing import Final

SHA256_HEX_LENGTH: Final = 64
SHA256_PATTERN: Final = r"^[0-9a-f]{64}$"
_SHA256_RE: Final = re.compile(SHA256_PATTERN)

#: A namespace name: lowercase letters, digits, ".", "_" and "-", at most 63.
NAMESPACE_PATTERN: Final = r"^[a-z0-9][a-z0-9._-]{0,62}$"
NAMESPACE_RE: Final = re.compile(NAMESPACE_PATTERN)

#: What every refusal of a malformed content hash says.
INVALID_SHA256: Final = "Invalid SHA256 hash format: expected 64 lowercase hex characters"

#: Bytes read or moved per step when streaming content. Bounded memory per stream.
CHUNK_SIZE: Final = 1024 * 1024

#: Below this many bytes, hashing or writing on the event loop is cheaper than a hop to a
#: worker thread; above it, the hop keeps the loop free for other requests.
INLINE_WORK_LIMIT: Final = 64 * 1024


def is_sha256_hex(value: str) -> bool:
    """True when *value* is exactly 64 lowercase hex digits: the only valid blob name."""
    return _SHA256_RE.fullmatch(value) is not None


def sha256_hex(data: bytes) -> str:
    """Hex SHA-256 of an in-memory byte string (tests and small payloads only)."""
    return hashlib.sha256(data).hexdigest()
