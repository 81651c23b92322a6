"""What every request handler needs, built once per process by the app's lifespan."""

from __future__ import annotations

from dataclasses import dataclass, field

from putplace.auth import KeyCache
from putplace.config import Settings
from putplace.service.inventory import DuplicateGroupsCache
from putplace.service.memory import MemoryBudget
from putplace.service.resumable import RunningHashes
from putplace.service.stores import Stores


@dataclass
class AppState:
    settings: Settings
    stores: Stores
    key_cache: KeyCache
    duplicate_groups: DuplicateGroupsCache
    request_memory: MemoryBudget
    running_hashes: RunningHashes = field(default_factory=RunningHashes)
