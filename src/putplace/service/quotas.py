"""Namespace quotas (``PUTPLACE_QUOTAS``): live file records, and bytes of the content a
namespace sent. Checked before anything is written, so a refusal stores nothing. Two
requests racing for the last of a quota may both pass: quotas are a limit on growth,
not a lock."""

from __future__ import annotations

from collections.abc import Collection

from putplace.config import Quota
from putplace.metadata import MetadataStore
from putplace.service.errors import ForbiddenError


class QuotaExceededError(ForbiddenError):
    """A write would take a namespace over one of its quotas (403)."""


async def usage(store: MetadataStore, namespace: str) -> tuple[int, int]:
    """Live file records of *namespace*, and bytes of the stored content it sent."""
    totals = await store.totals(None, [namespace])
    files = sum(row[3] - row[5] for row in totals.growth)
    _, size = await store.held_totals([namespace])
    return files, size


async def check_files(
    store: MetadataStore, quota: Quota, namespace: str, locations: Collection[tuple[str, str]]
) -> None:
    """Refuse records that would make *namespace* hold more live records than allowed
    (updates of live records add none)."""
    if quota.files is None:
        return
    new = len(locations) - await store.count_live(namespace, locations)
    if new <= 0:
        return
    used, _ = await usage(store, namespace)
    _check(namespace, "files", "live records", used, quota.files, new)


async def check_bytes(store: MetadataStore, quota: Quota, namespace: str, size: int) -> None:
    """Refuse content of *size* bytes the namespace has not sent before, when it would
    take the namespace over its bytes quota."""
    if quota.bytes is None or size == 0:
        return
    _, used = await usage(store, namespace)
    _check(namespace, "bytes", "bytes", used, quota.bytes, size)


def _check(namespace: str, quota: str, unit: str, used: int, limit: int, adding: int) -> None:
    if used + adding > limit:
        raise QuotaExceededError(
            f"namespace {namespace!r} is over its {quota} quota: {used:,} {unit} of "
            f"{limit:,} allowed, and this request adds {adding:,}"
        )
