"""``ppserver verify`` and ``ppserver gc`` against stores filled through the real API."""

from __future__ import annotations

import json
from pathlib import Path

import httpx

from putplace.blobs import create_blob_store
from putplace.config import Settings
from putplace.metadata import create_metadata_store
from putplace.models import BlobState
from putplace.server.maintenance import collect_garbage, verify
from tests.support.payloads import metadata, put, store
from tests.support.processes import run_ppserver


async def test_verify_quarantines_corrupt_and_reports_missing(
    api: httpx.AsyncClient, settings: Settings, stack: str
) -> None:
    good = await store(api, b"good content")
    gone = await store(api, b"content that disappears")
    bad = await store(api, b"content that rots")
    metadata_store, blobs = create_metadata_store(settings), create_blob_store(settings)
    await metadata_store.open()
    await blobs.open()
    try:
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
            assert await put(api, metadata(b"content that rots"))
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
    finally:
        await blobs.close()
        await metadata_store.close()


async def test_gc_lists_then_deletes_only_unreferenced(
    api: httpx.AsyncClient, settings: Settings
) -> None:
    old = await store(api, b"version 1", filepath="/etc/app.conf")
    await store(api, b"version 2", filepath="/etc/app.conf")  # replaces the only reference
    kept = await store(api, b"still used")
    metadata_store, blobs = create_metadata_store(settings), create_blob_store(settings)
    await metadata_store.open()
    await blobs.open()
    try:
        young = await collect_garbage(metadata_store, blobs, min_age_seconds=3600)
        assert young.unreferenced == []  # too recent to be collected
        listed = await collect_garbage(metadata_store, blobs, min_age_seconds=0)
        assert listed.unreferenced == [old["sha256"]]
        assert listed.deleted == []
        assert await blobs.exists(old["sha256"])
        deleted = await collect_garbage(metadata_store, blobs, delete=True, min_age_seconds=0)
        assert deleted.deleted == [old["sha256"]]
        assert not await blobs.exists(old["sha256"])
        assert await metadata_store.get_blob(old["sha256"]) is None
        assert await blobs.exists(kept["sha256"])
        # Registering the collected content again asks for an upload.
        assert await put(api, metadata(b"version 1"))
        assert (await put(api, old)).json()["upload_required"] is True
    finally:
        await blobs.close()
        await metadata_store.close()


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
