"""What every request handler needs, built once per process by the app's lifespan."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any

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
    _background: set[asyncio.Task[Any]] = field(default_factory=set)

    def spawn(self, work: Coroutine[Any, Any, Any]) -> None:
        """Run *work* in the background, keeping a reference until it finishes."""
        task = asyncio.create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def drain(self) -> None:
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
