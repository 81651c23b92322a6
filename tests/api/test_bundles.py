"""``POST /bundles``: many small contents in one request, answered per member."""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from putplace.blobs.packs import MEMBER_HEADER, PACK_DIR, PACK_SUFFIX
from putplace.config import Settings
from putplace.service import bundles
from putplace.service.spare_maps import SpareMaps
from tests.support.payloads import bundle, metadata, store

BUNDLE = {"Content-Type": "application/vnd.putplace.bundle"}


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


async def register(api: httpx.AsyncClient, *contents: bytes) -> None:
    files = [metadata(c) for c in contents]
    answer = await api.post("/put_files", json={"files": files})
    assert answer.json()["stored"] == len(contents)


async def downloaded(api: httpx.AsyncClient, data: bytes) -> bytes | None:
    response = await api.get(f"/download/{sha(data)}")
    return response.content if response.status_code == 200 else None


async def test_members_are_answered_one_by_one(api: httpx.AsyncClient) -> None:
    new, small, empty = os.urandom(5000), b"x", b""
    known = (await store(api, b"already here"))["sha256"]
    liar, unregistered, wrong_size = b"registered bytes", b"nobody registered me", b"123"
    await register(api, new, small, empty, liar, wrong_size)
    members = [
        (sha(new), new),
        (known, b"already here"),
        (sha(liar), b"other bytes!!!!!"),  # same length, wrong content
        (sha(unregistered), unregistered),
        (sha(wrong_size), b"1234"),
        (sha(small), small),
        (sha(new), new),  # twice in one bundle
        (sha(empty), empty),
    ]
    response = await api.post("/bundles", content=bundle(members), headers=BUNDLE)
    assert response.status_code == 200, response.text
    body = response.json()
    statuses = [r["status"] for r in body["results"]]
    assert statuses == [
        "stored", "present", "refused", "refused", "refused", "stored", "refused", "stored",
    ]  # fmt: skip
    assert [r["sha256"] for r in body["results"]] == [m[0] for m in members]
    assert (body["stored"], body["present"], body["refused"]) == (3, 1, 4)
    details = [r["detail"] or "" for r in body["results"]]
    assert "hashes to" in details[2]
    assert "register" in details[3]
    assert "registered size is 3" in details[4]
    assert "more than once" in details[6]
    for data in (new, small, empty):
        assert await downloaded(api, data) == data
    for data in (liar, unregistered, wrong_size):
        assert await downloaded(api, data) is None
    # The registrations now see the content as stored.
    again = await api.post("/put_files", json={"files": [metadata(new), metadata(liar)]})
    assert [r["file"]["upload_required"] for r in again.json()["results"]] == [False, True]
    resent = await api.post("/bundles", content=bundle(members[:1]), headers=BUNDLE)
    assert resent.json()["results"][0]["status"] == "present"


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        (b"NOTABNDL" + b"\0" * 44, 400, "PPBNDL01"),
        (b"PPBNDL01" + (0).to_bytes(4, "big"), 400, "1 to 10000"),
        (b"PPBNDL01" + (10_001).to_bytes(4, "big"), 400, "1 to 10000"),
        (b"PPBNDL01" + (2).to_bytes(4, "big") + b"\0" * 40, 400, "last entry"),
        (b"PPBNDL01", 400, "member count"),
        (bundle([("ab" * 32, b"")], declared=[33 * 1024 * 1024]), 413, "limit is"),
    ],
)
async def test_malformed_bundles_are_refused_whole(
    api: httpx.AsyncClient, body: bytes, status: int, words: str
) -> None:
    response = await api.post("/bundles", content=body, headers=BUNDLE)
    assert response.status_code == status
    assert words in response.json()["detail"]


async def test_a_body_longer_than_its_header_says_is_refused_whole(
    api: httpx.AsyncClient,
) -> None:
    """Bytes after the last member mean the header's lengths do not describe the body (a
    client's framing is wrong): nothing of it is trusted or stored."""
    data = os.urandom(3000)
    await register(api, data)
    for extra in (b"x", os.urandom(100_000)):  # within the first chunk, and beyond it
        response = await api.post(
            "/bundles", content=bundle([(sha(data), data)]) + extra, headers=BUNDLE
        )
        assert response.status_code == 400
        assert "goes on after its last member" in response.json()["detail"]
        assert await downloaded(api, data) is None
    again = await api.post("/put_files", json={"files": [metadata(data)]})
    assert again.json()["results"][0]["file"]["upload_required"] is True
    stored = await api.post("/bundles", content=bundle([(sha(data), data)]), headers=BUNDLE)
    assert stored.json()["results"][0]["status"] == "stored"


async def chunked(body: bytes, size: int, pause: float = 0) -> AsyncIterator[bytes]:
    """*body* sent in pieces of *size*, *pause* seconds apart (so that the server, across
    loopback, reads them apart too)."""
    for offset in range(0, len(body), size):
        yield body[offset : offset + size]
        if pause:
            await asyncio.sleep(pause)


@pytest.mark.parametrize(("size", "pause"), [(5, 0), (999, 0.005)])
async def test_a_bundle_arriving_in_chunks_of_any_size_is_stored_whole(
    api: httpx.AsyncClient, size: int, pause: float
) -> None:
    """The client's chunk boundaries fall inside the header, a member and the bytes after
    the last one (the 999-byte pieces, sent apart, reach the server apart; where the
    reader's own boundaries fall is tested exactly in tests/service/test_bundle_reader).
    Every member is stored byte for byte, and bytes after the last member that arrive
    in the same chunk as its end are still seen."""
    contents = [os.urandom(n) for n in (1500, 1, 2500, 700)]
    await register(api, *contents)
    members = [(sha(data), data) for data in contents]
    longer = await api.post(
        "/bundles", content=chunked(bundle(members) + b"extra", size, pause), headers=BUNDLE
    )
    assert longer.status_code == 400
    assert "goes on after its last member" in longer.json()["detail"]
    response = await api.post(
        "/bundles", content=chunked(bundle(members), size, pause), headers=BUNDLE
    )
    assert response.status_code == 200, response.text
    assert [r["status"] for r in response.json()["results"]] == ["stored"] * 4
    for data in contents:
        assert await downloaded(api, data) == data


async def test_bundle_cut_short_keeps_whole_members(
    api: httpx.AsyncClient, settings: Settings, stack: str
) -> None:
    first, second, third = os.urandom(3000), os.urandom(70_000), os.urandom(4000)
    await register(api, first, second, third)
    full = bundle([(sha(first), first), (sha(second), second), (sha(third), third)])
    cut = full[: len(full) - 1000]  # the last member arrives incomplete

    response = await api.post("/bundles", content=chunked(cut, 8192), headers=BUNDLE)
    assert response.status_code == 400
    assert "ended inside member 2" in response.json()["detail"]
    assert await downloaded(api, first) == first
    assert await downloaded(api, second) == second
    assert await downloaded(api, third) is None
    if stack.endswith("local"):  # no partial file under a final name or left behind
        root = Path(settings.storage_url.removeprefix("file://"))
        assert not (root / sha(third)[:2] / sha(third)).exists()
        assert list((root / ".tmp").iterdir()) == []
        [pack] = (root / PACK_DIR).glob(f"*{PACK_SUFFIX}")  # the two whole members only
        assert pack.stat().st_size == 2 * MEMBER_HEADER.size + len(first) + len(second)
    # Sending the whole bundle again completes it.
    again = (await api.post("/bundles", content=full, headers=BUNDLE)).json()
    assert [r["status"] for r in again["results"]] == ["present", "present", "stored"]
    assert await downloaded(api, third) == third


async def test_bundles_need_a_write_key(api: httpx.AsyncClient, keys: object) -> None:
    content = b"guarded"
    await register(api, content)
    body = bundle([(sha(content), content)])
    read_key = {"X-API-Key": keys.read, **BUNDLE}  # type: ignore[attr-defined]
    assert (await api.post("/bundles", content=body, headers=read_key)).status_code == 403
    no_key = {**BUNDLE, "X-API-Key": ""}
    assert (await api.post("/bundles", content=body, headers=no_key)).status_code == 401
    assert await downloaded(api, content) is None


async def test_each_members_outcome_is_logged_at_debug_level(
    api: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    """The access log shows one POST per bundle; at debug level the server also says what
    each member was."""
    quiet, told = b"sent at info level", b"sent at debug level"
    await register(api, quiet, told)
    with caplog.at_level("INFO", logger="putplace.service"):
        await api.post("/bundles", content=bundle([(sha(quiet), quiet)]), headers=BUNDLE)
    assert not [r for r in caplog.records if "bundle member" in r.getMessage()]
    with caplog.at_level("DEBUG", logger="putplace.service"):
        await api.post("/bundles", content=bundle([(sha(told), told)]), headers=BUNDLE)
    lines = [r.getMessage() for r in caplog.records if "bundle member" in r.getMessage()]
    assert lines == [f"bundle member {sha(told)} ({len(told)} bytes): stored"]


async def test_a_bundles_memory_is_kept_for_the_next_whether_stored_or_cut_short(
    api: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server writes the next bundle over the pages the last one faulted in (see
    ``putplace.service.spare_maps``), so each bundle must give its map back."""
    maps = SpareMaps(bundles.SLICE_BYTES, idle_seconds=60)
    monkeypatch.setattr(bundles, "BUNDLE_MAPS", maps)
    whole, cut = os.urandom(100_000), os.urandom(50_000)
    await register(api, whole, cut)
    stored = await api.post("/bundles", content=bundle([(sha(whole), whole)]), headers=BUNDLE)
    assert stored.status_code == 200, stored.text
    assert maps.kept == 1
    body = bundle([(sha(cut), cut)])
    refused = await api.post("/bundles", content=chunked(body[:-10], 8192), headers=BUNDLE)
    assert refused.status_code == 400
    assert maps.kept == 1  # the same map, taken and given back again
    maps.trim(force=True)


SLICE = 16 * 1024


@pytest.fixture
def small_slices(monkeypatch: pytest.MonkeyPatch) -> None:
    """Slices of 16 KiB, so that a bundle of a few small members takes several."""
    monkeypatch.setattr(bundles, "SLICE_BYTES", SLICE)


def packs_of(settings: Settings) -> list[Path]:
    root = Path(settings.storage_url.removeprefix("file://"))
    return sorted((root / PACK_DIR).glob(f"*{PACK_SUFFIX}"))


@pytest.mark.usefixtures("small_slices")
async def test_a_bundle_of_many_slices_is_one_group_answered_per_member(
    api: httpx.AsyncClient, settings: Settings, stack: str
) -> None:
    """Members are read and verified a slice at a time (a member larger than a slice
    alone); one that fails in a middle slice is refused alone, and the rest are stored
    as one group: on local disk, one pack."""
    contents = [os.urandom(n) for n in (3000, 9000, 40_000, 500, 7000, 12_000, 1)]
    await register(api, *contents)
    members = [(sha(data), data) for data in contents]
    members[3] = (sha(contents[3]), os.urandom(500))  # slice 3 of 4: wrong bytes
    assert len(bundles.slices([bundles.Entry(s, len(d)) for s, d in members], SLICE)) == 4
    response = await api.post("/bundles", content=chunked(bundle(members), 7001), headers=BUNDLE)
    assert response.status_code == 200, response.text
    statuses = [r["status"] for r in response.json()["results"]]
    assert statuses == ["stored"] * 3 + ["refused"] + ["stored"] * 3
    for index, data in enumerate(contents):
        assert await downloaded(api, data) == (None if index == 3 else data)
    if stack.endswith("local"):
        assert len(packs_of(settings)) == 1


@pytest.mark.usefixtures("small_slices")
async def test_a_bundle_of_many_slices_cut_short_keeps_the_slices_that_arrived(
    api: httpx.AsyncClient, settings: Settings, stack: str
) -> None:
    contents = [os.urandom(n) for n in (10_000, 10_000, 10_000, 10_000)]  # a slice each
    await register(api, *contents)
    body = bundle([(sha(data), data) for data in contents])
    response = await api.post("/bundles", content=chunked(body[:-15_000], 4096), headers=BUNDLE)
    assert response.status_code == 400
    assert "ended inside member 2" in response.json()["detail"]
    assert [await downloaded(api, data) for data in contents] == [*contents[:2], None, None]
    if stack.endswith("local"):
        [pack] = packs_of(settings)
        assert pack.stat().st_size == 2 * (MEMBER_HEADER.size + 10_000)


@pytest.mark.usefixtures("small_slices")
async def test_a_bundle_of_many_slices_longer_than_its_header_says_stores_nothing(
    api: httpx.AsyncClient, settings: Settings, stack: str
) -> None:
    """Its first slices were written before the extra bytes came: they are taken back
    (on local disk the pack is removed), and none of it is recorded."""
    contents = [os.urandom(n) for n in (10_000, 10_000, 10_000)]
    await register(api, *contents)
    body = bundle([(sha(data), data) for data in contents]) + b"extra"
    response = await api.post("/bundles", content=chunked(body, 4096), headers=BUNDLE)
    assert response.status_code == 400
    assert "goes on after its last member" in response.json()["detail"]
    assert [await downloaded(api, data) for data in contents] == [None, None, None]
    if stack.endswith("local"):
        assert packs_of(settings) == []
