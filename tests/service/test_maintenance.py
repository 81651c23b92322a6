"""``verify`` and ``gc`` (service layer and ``ppserver``) on stores filled through the real API."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx

from putplace.config import Settings
from putplace.models import BlobState
from putplace.service.maintenance import Retention, collect_garbage, verify
from putplace.service.stores import open_stores
from tests.support.payloads import metadata, put, store
from tests.support.processes import run_ppserver


async def test_verify_quarantines_corrupt_and_reports_missing(
    api: httpx.AsyncClient, settings: Settings, stack: str
) -> None:
    good = await store(api, b"good content")
    gone = await store(api, b"content that disappears")
    bad = await store(api, b"content that rots")
    async with open_stores(settings) as stores:
        metadata_store, blobs = stores.metadata, stores.blobs
        await blobs.delete(gone["sha256"])
        rotted = False
        if stack.endswith("local"):
            path = Path(settings.storage_url.removeprefix("file://"))
            (path / bad["sha256"][:2] / bad["sha256"]).write_bytes(b"content that r0ts")
            rotted = True
        report = await verify(metadata_store, blobs)
        assert report.checked == 3
        assert report.missing == [gone["sha256"]]
        assert report.corrupt == ([bad["sha256"]] if rotted else [])
        if rotted:
            blob = await metadata_store.get_blob(bad["sha256"])
            assert blob is not None
            assert blob.state is BlobState.quarantined
            assert not await blobs.exists(bad["sha256"])
            # Clients are asked for the content again, and the download is refused.
            assert (await put(api, metadata(b"content that rots"))).status_code == 201
            answer = (await put(api, bad)).json()
            assert answer["upload_required"] is True
            assert (await api.get(f"/download/{bad['sha256']}")).status_code == 404
            uploaded = await api.put(f"/blobs/{bad['sha256']}", content=b"content that rots")
            assert uploaded.status_code == 201
            assert (await api.get(f"/download/{bad['sha256']}")).content == b"content that rots"
            assert (await put(api, bad)).json()["upload_required"] is False
        assert (await api.get(f"/download/{good['sha256']}")).content == b"good content"
        sample = await verify(metadata_store, blobs, sample=1)
        assert sample.checked == 1


async def test_verify_finishes_a_quarantine_cut_short(
    api: httpx.AsyncClient, settings: Settings
) -> None:
    """Killed between moving corrupt bytes aside and marking the record: the record said
    present for good, clients were never asked again, and a re-upload was taken as
    already stored. The next verify finishes the quarantine."""
    bad = await store(api, b"content that rots")
    async with open_stores(settings) as stores:
        assert await stores.blobs.quarantine(bad["sha256"])  # the move alone
        report = await verify(stores.metadata, stores.blobs)
        assert (report.corrupt, report.missing) == ([bad["sha256"]], [])
        blob = await stores.metadata.get_blob(bad["sha256"])
        assert blob is not None
        assert blob.state is BlobState.quarantined
    assert (await put(api, bad)).json()["upload_required"] is True
    await asyncio.sleep(1.1)  # copies put aside are stamped to the second
    uploaded = await api.put(f"/blobs/{bad['sha256']}", content=b"content that rots")
    assert uploaded.status_code == 201
    assert (await api.get(f"/download/{bad['sha256']}")).content == b"content that rots"
    # Stored again, then lost: the copy put aside before is no quarantine cut short.
    async with open_stores(settings) as stores:
        await stores.blobs.delete(bad["sha256"])
        report = await verify(stores.metadata, stores.blobs)
        assert (report.corrupt, report.missing) == ([], [bad["sha256"]])


async def test_gc_lists_then_deletes_only_unreferenced(
    api: httpx.AsyncClient, settings: Settings
) -> None:
    old = await store(api, b"version 1", filepath="/etc/app.conf")
    await store(api, b"version 2", filepath="/etc/app.conf")  # replaces the only reference
    kept = await store(api, b"still used")
    async with open_stores(settings) as stores:
        metadata_store, blobs = stores.metadata, stores.blobs
        # By default the past version of /etc/app.conf keeps version 1 (restorable).
        held = await collect_garbage(metadata_store, blobs, delete=True, min_age_seconds=0)
        assert (held.unreferenced, held.deleted) == ([], [])
        live_only = Retention(history_keeps_content=False)
        young = await collect_garbage(
            metadata_store, blobs, min_age_seconds=3600, retention=live_only
        )
        assert young.unreferenced == []  # too recent to be collected
        listed = await collect_garbage(
            metadata_store, blobs, min_age_seconds=0, retention=live_only
        )
        assert listed.unreferenced == [old["sha256"]]
        assert listed.deleted == []
        assert await blobs.exists(old["sha256"])
        deleted = await collect_garbage(
            metadata_store, blobs, delete=True, min_age_seconds=0, retention=live_only
        )
        assert deleted.deleted == [old["sha256"]]
        assert not await blobs.exists(old["sha256"])
        assert await metadata_store.get_blob(old["sha256"]) is None
        assert await blobs.exists(kept["sha256"])
        # Registering the collected content again asks for an upload.
        assert (await put(api, metadata(b"version 1"))).status_code == 201
        assert (await put(api, old)).json()["upload_required"] is True


async def test_gc_drops_versions_beyond_retention_then_their_content(
    api: httpx.AsyncClient, settings: Settings
) -> None:
    versions = [await store(api, f"v{i}".encode(), filepath="/etc/app.conf") for i in range(3)]
    async with open_stores(settings) as stores:
        keep_one = Retention(keep_versions=1)
        listed = await collect_garbage(stores.metadata, stores.blobs, min_age_seconds=0,
                                       retention=keep_one)  # fmt: skip
        assert (listed.history_pruned, listed.unreferenced) == (0, [])  # a dry run drops none
        report = await collect_garbage(stores.metadata, stores.blobs, delete=True,
                                       min_age_seconds=0, retention=keep_one)  # fmt: skip
        assert report.history_pruned == 1
        assert report.deleted == [versions[0]["sha256"]]  # v1: its only version is gone
        assert await stores.blobs.exists(versions[1]["sha256"])  # the kept past version's
        history = await stores.metadata.history("host-a", "/etc/app.conf")
        assert [v.sha256 for v in history] == [versions[2]["sha256"], versions[1]["sha256"]]


def test_verify_and_gc_commands(tmp_path: Path) -> None:
    settings = Settings(
        database_url=f"sqlite:///{tmp_path}/putplace.db", storage_url=f"file://{tmp_path}/b"
    )
    clean = run_ppserver(settings, "verify", "--json", cwd=tmp_path)
    assert clean.returncode == 0, clean.stderr
    assert json.loads(clean.stdout) == {"checked": 0, "corrupt": [], "missing": [], "ok": True}
    gc = run_ppserver(settings, "gc", "--json", cwd=tmp_path)
    assert gc.returncode == 0
    assert json.loads(gc.stdout)["unreferenced"] == []
    assert run_ppserver(settings, "verify", "--sample", "0", cwd=tmp_path).returncode == 2
    assert run_ppserver(settings, "gc", "--min-age", "-1", cwd=tmp_path).returncode == 2
