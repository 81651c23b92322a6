"""Namespace quotas (``PUTPLACE_QUOTAS``): live file records, and bytes of the content a
namespace sent. Checked before anything is written, so a refusal stores nothing.

What is on its way counts too: a write holds a reservation of what it adds until it is
recorded (or fails), and each check counts the reservations others hold. Reservations
live in the coordinator: per process, or shared by every instance through Redis, so two
requests racing for the last of a quota through different instances cannot both pass.
The reservation is taken *before* usage is read: a write that finishes in between is
then either still reserved or already recorded, never neither.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Collection
from contextlib import asynccontextmanager

from putplace.config import Quota
from putplace.coordination import Coordinator
from putplace.metadata import MetadataStore
from putplace.service.errors import ForbiddenError


class QuotaExceededError(ForbiddenError):
    """A write would take a namespace over one of its quotas (403)."""


async def usage(store: MetadataStore, namespace: str) -> tuple[int, int]:
    """Live file records of *namespace*, and bytes of the stored content it sent."""
    return await live_files(store, namespace), await sent_bytes(store, namespace)


async def live_files(store: MetadataStore, namespace: str) -> int:
    totals = await store.totals(None, [namespace])
    return sum(row[3] - row[5] for row in totals.growth)


async def sent_bytes(store: MetadataStore, namespace: str) -> int:
    _, size = await store.held_totals([namespace])
    return size


@asynccontextmanager
async def holding_files(
    store: MetadataStore,
    coordination: Coordinator,
    quota: Quota,
    namespace: str,
    locations: Collection[tuple[str, str]],
) -> AsyncIterator[None]:
    """Room for the new live records among *locations* (updates of live records add
    none) while the block writes them; :class:`QuotaExceededError` if there is none."""
    new = 0
    if quota.files is not None:
        new = len(locations) - await store.count_live(namespace, locations)
    if quota.files is None or new <= 0:
        yield
        return
    async with _holding(store, coordination, namespace, "files", quota.files, new):
        yield


@asynccontextmanager
async def holding_bytes(
    store: MetadataStore, coordination: Coordinator, quota: Quota, namespace: str, size: int
) -> AsyncIterator[None]:
    """Room for *size* bytes of content the namespace has not sent before, while the
    block stores and records it; :class:`QuotaExceededError` if there is none."""
    if quota.bytes is None or size == 0:
        yield
        return
    async with _holding(store, coordination, namespace, "bytes", quota.bytes, size):
        yield


async def check_bytes(
    store: MetadataStore, coordination: Coordinator, quota: Quota, namespace: str, size: int
) -> None:
    """Refuse now what :func:`holding_bytes` would refuse (a resumable upload's creation:
    its bytes come later, reserved when they are stored)."""
    async with holding_bytes(store, coordination, quota, namespace, size):
        pass


#: Per quota: what its use is counted in, and how it is read (only that one is read).
_QUOTAS = {"files": ("live records", live_files), "bytes": ("bytes", sent_bytes)}


@asynccontextmanager
async def _holding(
    store: MetadataStore,
    coordination: Coordinator,
    namespace: str,
    quota: str,
    limit: int,
    adding: int,
) -> AsyncIterator[None]:
    held, others = await coordination.reserve(f"quota:{namespace}:{quota}", adding)
    try:
        unit, read_use = _QUOTAS[quota]
        used = await read_use(store, namespace)
        if used + others + adding > limit:
            on_the_way = f" (and {others:,} more on their way)" if others else ""
            raise QuotaExceededError(
                f"namespace {namespace!r} is over its {quota} quota: {used:,} "
                f"{unit}{on_the_way} of {limit:,} allowed, and this request adds "
                f"{adding:,}"
            )
        yield
    finally:
        await coordination.release(held)
