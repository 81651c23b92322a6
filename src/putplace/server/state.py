"""What every request handler needs, built once per process by the app's lifespan."""

from __future__ import annotations

from dataclasses import dataclass

from putplace.auth import KeyCache
from putplace.blobs import BlobStore
from putplace.config import Settings
from putplace.metadata import MetadataStore
from putplace.server.limits import RateLimiter


@dataclass
class AppState:
    settings: Settings
    metadata: MetadataStore
    blobs: BlobStore
    key_cache: KeyCache
    rate_limiter: RateLimiter
