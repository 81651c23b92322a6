"""What operators watch, the same on every metadata backend: open scans, and the last run
of each maintenance task (kept across restarts, one per task)."""

from __future__ import annotations

from datetime import timedelta

from putplace.auth import utcnow
from putplace.metadata.base import MaintenanceRun, MetadataStore
from putplace.models import ScanState
from tests.metadata.conftest import OpenStore


async def test_open_scans_are_counted_until_they_end(store: MetadataStore) -> None:
    now = utcnow()
    first = await store.create_scan("web1", "/srv", [], now)
    second = await store.create_scan("web2", "/home", [], now, namespace="lab")
    await store.create_scan("web3", "/", [], now)
    assert await store.count_open_scans() == 3
    assert await store.finish_scan(first.id, ScanState.completed, 0, now)
    assert await store.finish_scan(second.id, ScanState.abandoned, 0, now)
    assert await store.count_open_scans() == 1


async def test_the_last_run_of_each_task_is_kept(open_store: OpenStore) -> None:
    store = await open_store()
    assert await store.maintenance_runs() == []
    when = utcnow().replace(microsecond=0)
    await store.record_maintenance(MaintenanceRun("verify", when, {"corrupt": 2, "missing": 0}))
    await store.record_maintenance(MaintenanceRun("gc", when, {"orphaned": 1}))
    later = when + timedelta(hours=1)
    await store.record_maintenance(MaintenanceRun("verify", later, {"corrupt": 0, "missing": 1}))
    # Another process (a server, after `ppserver verify` ran) sees the same.
    other = await open_store()
    assert await other.maintenance_runs() == [
        MaintenanceRun("gc", when, {"orphaned": 1}),
        MaintenanceRun("verify", later, {"corrupt": 0, "missing": 1}),
    ]
