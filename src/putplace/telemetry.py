"""What the service layer counts for operators (exported by ``GET /metrics``): content
stored and duplicates avoided, uploads refused by reason, rate-limit refusals, the key
cache. Labels come from small fixed sets, never from names, hashes or keys."""

from __future__ import annotations

from prometheus_client import Counter

import putplace.metric_values  # noqa: F401 (sets how values are kept, before any metric is made)

CONTENTS_STORED = Counter(
    "putplace_contents_stored", "Distinct contents verified and stored for the first time."
)
CONTENT_BYTES_STORED = Counter(
    "putplace_content_stored_bytes", "Bytes of the contents stored for the first time."
)
DUPLICATES_AVOIDED = Counter(
    "putplace_duplicates_avoided",
    "File records registered whose content the namespace had sent before: nothing to upload.",
)
DUPLICATE_BYTES_AVOIDED = Counter(
    "putplace_duplicate_bytes_avoided", "Bytes of those records' content, not sent again."
)
UPLOADS_REFUSED = Counter(
    "putplace_uploads_refused",
    "Requests refused for their content, by reason (hash_mismatch, size_mismatch, "
    "checksum_mismatch, too_large, quota, stalled).",
    ["reason"],
)
RATE_LIMITED = Counter("putplace_rate_limited", "Requests refused by the per-key rate limit.")
OVERLOADED = Counter(
    "putplace_overloaded",
    "Requests answered 503 because their process had no room for their bodies within the "
    "wait (PUTPLACE_REQUEST_MEMORY_BYTES).",
)
KEY_CACHE = Counter(
    "putplace_key_cache_lookups", "API key lookups, by result (hit, miss).", ["result"]
)


#: Looked up once: ``labels()`` costs as much as the increment, and every request counts.
KEY_CACHE_HIT = KEY_CACHE.labels("hit")
KEY_CACHE_MISS = KEY_CACHE.labels("miss")


def stored(count: int, size: int) -> None:
    CONTENTS_STORED.inc(count)
    CONTENT_BYTES_STORED.inc(size)


def duplicates_avoided(sizes: list[int]) -> None:
    """Count records whose content was not sent again (each increment of a metric writes
    to a shared file under several workers: none for the usual request, which has none)."""
    if sizes:
        DUPLICATES_AVOIDED.inc(len(sizes))
        DUPLICATE_BYTES_AVOIDED.inc(sum(sizes))
