"""One MetadataStore contract, run unchanged against every backend (SQLite and MongoDB).

Times are whole seconds so that every backend stores them exactly (MongoDB keeps
milliseconds). Records inserted one ``put_file`` after another are in insertion order.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from putplace.metadata.base import MAX_PAGE, DuplicateError, MetadataStore, StoreUnavailableError
from putplace.metadata.mongo import MongoMetadataStore
from putplace.metadata.sqlite import SQLiteMetadataStore
from putplace.models import BlobRecord, BlobState, FileMetadata, FileRecord, Scope
from tests.metadata.conftest import OpenStore

T0 = datetime(2025, 3, 1, 12, 0, 0, tzinfo=UTC)


def at(seconds: int) -> datetime:
    return T0 + timedelta(seconds=seconds)


def sha(label: object) -> str:
    return hashlib.sha256(str(label).encode()).hexdigest()


def meta(hostname: str = "web-01", filepath: str = "/etc/hosts", **extra: Any) -> FileMetadata:
    values: dict[str, Any] = {
        "hostname": hostname, "filepath": filepath, "ip_address": "192.0.2.10",
        "sha256": sha(filepath), "file_size": 42, "file_mode": 0o100644, "file_uid": 1000,
        "file_gid": 1000, "file_mtime": 1_700_000_000.5, "file_atime": 1_700_000_001.25,
        "file_ctime": 1_700_000_002.0,
    }  # fmt: skip
    values.update(extra)
    return FileMetadata(**values)


def blob(label: object, size: int = 10, seconds: int = 0) -> BlobRecord:
    return BlobRecord(sha256=sha(label), size=size, stored_at=at(seconds))


def reported(record: FileMetadata) -> dict[str, Any]:
    """The client-reported part of a record (drops id and timestamps)."""
    return FileMetadata.model_validate(record.model_dump()).model_dump()


async def put_file(store: MetadataStore, sent: FileMetadata, now: datetime) -> FileRecord:
    """Store one record and read it back whole."""
    ((record_id, _),) = await store.put_files([sent], now)
    record = await store.get_file(sent.hostname, sent.filepath)
    assert record is not None
    assert record.id == record_id
    return record


async def count_files(store: MetadataStore) -> int:
    """How many file records there are (every test stores fewer than a page)."""
    return len(await store.list_files(limit=MAX_PAGE))


async def add_key(store: MetadataStore, name: str, seconds: int = 0, scope: Scope = Scope.write):
    return await store.add_api_key(
        key_hash=sha(f"key-{name}"), name=name, description=f"{name} key", scope=scope,
        created_at=at(seconds),
    )  # fmt: skip


# --- files: put, get ------------------------------------------------------------------


async def test_records_written_before_a_stricter_input_rule_stay_readable(
    store: MetadataStore,
) -> None:
    # Earlier releases accepted any string as ip_address; such records must still be read
    # (and searched, and shown in history), never turned into a 500.
    old = meta(filepath="/old").model_copy(update={"ip_address": "not an address"})
    record = await put_file(store, old, at(0))
    assert record.ip_address == "not an address"
    assert [v.ip_address for v in await store.history("web-01", "/old")] == ["not an address"]


async def test_put_file_stores_every_reported_field(store: MetadataStore) -> None:
    sent = meta(is_symlink=True, link_target="/etc/hosts.real", file_size=0)
    record = await put_file(store, sent, at(0))
    assert reported(record) == sent.model_dump()
    assert record.id
    assert record.created_at == record.updated_at == at(0)
    assert await store.get_file("web-01", "/etc/hosts") == record
    assert await count_files(store) == 1


async def test_put_same_location_updates_in_place(store: MetadataStore) -> None:
    first = await put_file(store, meta(), at(0))
    changed = meta(sha256=sha("new content"), file_size=99, file_mtime=1_800_000_000.0)
    second = await put_file(store, changed, at(30))
    assert second.id == first.id
    assert second.created_at == at(0)
    assert second.updated_at == at(30)
    assert reported(second) == changed.model_dump()
    assert await store.get_file("web-01", "/etc/hosts") == second
    assert await count_files(store) == 1


async def test_same_path_on_two_hosts_are_two_records(store: MetadataStore) -> None:
    a = await put_file(store, meta("host-a"), at(0))
    b = await put_file(store, meta("host-b"), at(0))
    assert a.id != b.id
    assert await count_files(store) == 2


async def test_put_files_returns_ids_in_dedupe_order_last_wins(store: MetadataStore) -> None:
    existing = await put_file(store, meta("h", "/b", file_size=1), at(0))  # updated below
    batch = [
        meta("h", "/a", file_size=1),
        meta("h", "/b", file_size=2),
        meta("other", "/a", file_size=3),
        meta("h", "/a", file_size=4),  # same location again: this one wins, moves last
    ]
    ids = [done.id for done in await store.put_files(batch, at(10))]
    stored = [await store.get_file(h, p) for h, p in [("h", "/b"), ("other", "/a"), ("h", "/a")]]
    assert ids == [r.id for r in stored if r is not None]
    assert ids[0] == existing.id
    assert [r.file_size for r in stored if r is not None] == [2, 3, 4]
    assert await count_files(store) == 3
    assert await store.put_files([], at(11)) == []


async def test_put_files_answers_each_contents_blob_record(store: MetadataStore) -> None:
    await store.put_blob(blob("stored"))
    await store.put_blob(blob("rotten"))
    await store.set_blob_state(sha("rotten"), BlobState.quarantined)
    batch = [meta("h", f"/{label}", sha256=sha(label)) for label in ("stored", "new", "rotten")]
    answers = await store.put_files([*batch, meta("h", "/again", sha256=sha("stored"))], at(0))
    assert [done.blob for done in answers] == [
        blob("stored"),
        None,
        blob("rotten").model_copy(update={"state": BlobState.quarantined}),
        blob("stored"),
    ]


async def test_put_files_large_batch(store: MetadataStore, monkeypatch: pytest.MonkeyPatch) -> None:
    # More than one statement or lookup chunk in each backend (SQLite's are made smaller
    # here: mongoeco is slow, so the batch stays small).
    monkeypatch.setattr("putplace.metadata.sqlite._UPSERT_FILE_ROWS", 100)
    monkeypatch.setattr("putplace.metadata.sqlite._SQLITE_VARIABLE_CHUNK", 100)
    n = 260
    batch = [meta("bulk", f"/data/{i:05d}", file_size=i) for i in range(n)]
    ids = [done.id for done in await store.put_files(batch, at(0))]
    assert len(set(ids)) == n
    listed = await store.list_files(limit=MAX_PAGE)
    assert [(r.id, r.filepath) for r in listed] == list(
        zip(ids, [m.filepath for m in batch], strict=True)
    )
    again = await store.put_files([meta("bulk", m.filepath, file_size=7) for m in batch], at(5))
    assert [done.id for done in again] == ids
    assert {r.file_size for r in await store.list_files(limit=MAX_PAGE)} == {7}
    assert await count_files(store) == n


async def test_get_file_returns_only_existing(store: MetadataStore) -> None:
    a = await put_file(store, meta("h1", "/a"), at(0))
    await put_file(store, meta("h2", "/b"), at(1))
    assert await store.get_file("h1", "/a") == a
    assert await store.get_file("h1", "/missing") is None
    assert await store.get_file("h2", "/a") is None  # right path, wrong host


async def test_names_are_stored_exactly(store: MetadataStore) -> None:
    odd = ["/tmp/ünïcödé 名前", "/tmp/with\nnewline", "/tmp/$dollar.field", "/tmp/%2F"]
    for path in odd:
        await put_file(store, meta("h", path), at(0))
    assert sorted(r.filepath for r in await store.list_files()) == sorted(odd)
    for path in odd:
        assert (await store.get_file("h", path)) is not None


# --- files: listing by location and content --------------------------------------------


async def test_list_files_by_content_oldest_first_and_limited(store: MetadataStore) -> None:
    content = sha("shared")
    for i, host in enumerate(["h3", "h1", "h2"]):
        await put_file(store, meta(host, "/same", sha256=content), at(i))
    await put_file(store, meta("h9", "/other"), at(5))
    got = await store.list_files(sha256=content)
    assert [r.hostname for r in got] == ["h3", "h1", "h2"]
    # Updating the oldest does not make it newer.
    await put_file(store, meta("h3", "/same", sha256=content, file_size=1), at(9))
    assert [r.hostname for r in await store.list_files(sha256=content, limit=2)] == ["h3", "h1"]
    assert await store.list_files(sha256=sha("nothing")) == []


async def test_list_files_pages_every_record_once_in_insertion_order(
    store: MetadataStore,
) -> None:
    inserted = []
    for i in range(23):
        host = "even" if i % 2 == 0 else "odd"
        inserted.append((await put_file(store, meta(host, f"/f/{22 - i:02d}"), at(i))).id)
    # An update must neither move nor duplicate a record.
    await put_file(store, meta("even", "/f/22", file_size=1), at(100))

    async def walk(**kwargs: Any) -> list[str]:
        seen: list[str] = []
        after = None
        while True:
            page = await store.list_files(after=after, limit=5, **kwargs)
            assert len(page) <= 5
            if not page:
                return seen
            seen += [r.id for r in page]
            after = page[-1].id

    assert await walk() == inserted
    assert await walk(hostname="odd") == inserted[1::2]
    assert await walk(hostname="nobody") == []
    # Content and host filters page the same way, alone and together.
    shared = sha("shared")
    for i in range(12):
        host = "even" if i % 2 == 0 else "odd"
        inserted.append((await put_file(store, meta(host, f"/s/{i}", sha256=shared), at(i))).id)
    assert await walk(sha256=shared) == inserted[23:]
    assert await walk(sha256=shared, hostname="odd") == inserted[24::2]
    assert await walk(sha256=sha("nothing")) == []
    assert [r.id for r in await store.list_files(limit=MAX_PAGE)] == inserted
    assert [r.id for r in await store.list_files(after=inserted[-1])] == []


@pytest.mark.parametrize("cursor", ["nope", "-1", "1.5", "zz" * 12, "0x10"])
async def test_list_files_rejects_an_invalid_cursor(store: MetadataStore, cursor: str) -> None:
    await put_file(store, meta(), at(0))
    with pytest.raises(ValueError, match="invalid cursor"):
        await store.list_files(after=cursor)


async def test_list_files_limit_bounds(store: MetadataStore) -> None:
    for i in range(3):
        await put_file(store, meta("h", f"/{i}"), at(i))
    assert len(await store.list_files(limit=1)) == 1
    for bad in (0, -1, MAX_PAGE + 1):
        with pytest.raises(ValueError, match="limit must be between"):
            await store.list_files(limit=bad)


# --- blobs ----------------------------------------------------------------------------


async def test_put_blobs_keeps_a_present_record(store: MetadataStore) -> None:
    first = blob("x", size=10, seconds=0)
    assert await store.put_blobs([first, blob("y")]) == [True, True]
    assert await store.put_blobs([blob("x", size=999, seconds=50), blob("z")]) == [False, True]
    assert await store.get_blob(sha("x")) == first  # the first record stands
    assert set(await store.get_blobs([sha("y"), sha("z")])) == {sha("y"), sha("z")}
    assert await store.put_blobs([]) == []


async def test_put_blobs_answers_each_row_of_a_large_batch(
    store: MetadataStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("putplace.metadata.sqlite._SQLITE_VARIABLE_CHUNK", 100)
    await store.put_blob(blob(5))
    batch = [blob(i) for i in range(250)]
    batch.insert(4, blob(3, size=999))  # sent twice, the second time close by
    batch.append(blob(7, size=999))  # and far apart
    answers = await store.put_blobs(batch)
    assert answers == [b.sha256 != sha(5) for b in batch[:4]] + [False] + [
        b.sha256 != sha(5) for b in batch[5:-1]
    ] + [False]
    assert [(await store.get_blob(sha(i))) for i in (3, 7)] == [blob(3), blob(7)]
    assert len(await store.get_blobs([b.sha256 for b in batch])) == 250


async def test_put_blobs_answers_keys_that_are_not_digests(store: MetadataStore) -> None:
    # A key that is not a lowercase hex SHA-256 is its own key: written once, and never
    # mistaken for the digest it spells in capitals.
    odd = BlobRecord(sha256="not-a-digest", size=3, stored_at=at(0))
    assert await store.put_blobs([blob("x"), odd, odd]) == [True, True, False]
    shouted = BlobRecord(sha256=sha("x").upper(), size=10, stored_at=at(0))
    assert await store.put_blobs([odd, shouted, blob("x")]) == [False, True, False]
    assert await store.get_blob("not-a-digest") == odd
    assert await store.get_blob(sha("x")) == blob("x")


async def test_put_blobs_replaces_a_quarantined_record(store: MetadataStore) -> None:
    await store.put_blob(blob("q", seconds=0))
    await store.set_blob_state(sha("q"), BlobState.quarantined)
    assert await store.put_blobs([blob("q", seconds=30), blob("q2")]) == [True, True]
    stored = await store.get_blob(sha("q"))
    assert stored == blob("q", seconds=30)
    assert stored.state is BlobState.present  # type: ignore[union-attr]


async def test_get_blobs_returns_only_existing(store: MetadataStore) -> None:
    for label in ("a", "b"):
        await store.put_blob(blob(label))
    got = await store.get_blobs([sha("a"), sha("b"), sha("c"), sha("a")])
    assert got == {sha("a"): blob("a"), sha("b"): blob("b")}
    assert await store.get_blobs([]) == {}
    assert await store.get_blob(sha("c")) is None
    many = [sha(i) for i in range(1200)]
    assert await store.get_blobs(many) == {}


async def test_set_blob_state_and_delete_blob(store: MetadataStore) -> None:
    await store.put_blob(blob("q"))
    assert await store.set_blob_state(sha("q"), BlobState.quarantined) is True
    assert (await store.get_blob(sha("q"))).state is BlobState.quarantined  # type: ignore[union-attr]
    assert (
        await store.set_blob_state(sha("q"), BlobState.quarantined) is True
    )  # no change: still there
    assert await store.set_blob_state(sha("missing"), BlobState.present) is False
    assert await store.get_blob(sha("missing")) is None
    assert await store.delete_blob(sha("q")) is True
    assert await store.delete_blob(sha("q")) is False
    assert await store.get_blob(sha("q")) is None
    assert await store.put_blob(blob("q")) is True  # can be recorded again


async def test_list_blobs_ordered_by_hash_with_after(store: MetadataStore) -> None:
    hashes = sorted(sha(i) for i in range(12))
    for i in range(12):
        await store.put_blob(blob(i))
    assert [b.sha256 for b in await store.list_blobs()] == hashes
    seen: list[str] = []
    after = None
    while page := await store.list_blobs(after=after, limit=5):
        seen += [b.sha256 for b in page]
        after = page[-1].sha256
    assert seen == hashes
    assert [b.sha256 for b in await store.list_blobs(after=hashes[5], limit=2)] == hashes[6:8]
    assert await store.list_blobs(after=hashes[-1]) == []
    # A prefix of a hash, of odd or even length, as the hex strings sort.
    for prefix in (hashes[5][:1], hashes[5][:3], hashes[5][:4]):
        listed = [b.sha256 for b in await store.list_blobs(after=prefix)]
        assert listed == [h for h in hashes if h > prefix]
    for bad in (0, MAX_PAGE + 1):
        with pytest.raises(ValueError, match="limit must be between"):
            await store.list_blobs(limit=bad)


async def test_a_key_that_is_not_a_lowercase_hex_hash_is_kept_as_given(
    store: MetadataStore,
) -> None:
    """Store-level callers may name contents otherwise (the API checks hashes first):
    such a key matches only itself, as the text it is, and reads back unchanged."""
    odd = [sha("x").upper(), "abc", ""]
    await store.put_blobs(
        [BlobRecord(sha256=k, size=1, stored_at=at(0)) for k in odd], sent_by="ns"
    )
    found = await store.get_blobs([*odd, sha("x")])
    assert sorted(found) == sorted(odd)
    assert all(found[k].sha256 == k for k in odd)
    assert sorted(await store.possessed(["ns"], odd)) == sorted(odd)
    await store.add_possession("other", odd[:1], at(1))
    assert list(await store.possessed(["other"], [*odd, sha("x")])) == odd[:1]
    assert await store.delete_blob(odd[0]) is True
    assert sorted(await store.get_blobs(odd)) == sorted(odd[1:])


async def test_is_referenced_follows_file_records(store: MetadataStore) -> None:
    content = sha("c")
    assert await store.is_referenced(content) is False
    await put_file(store, meta("h", "/a", sha256=content), at(0))
    await put_file(store, meta("h", "/b", sha256=content), at(0))
    assert await store.is_referenced(content) is True
    await put_file(store, meta("h", "/a", sha256=sha("third")), at(1))  # one reference left
    assert await store.is_referenced(content) is True
    await put_file(store, meta("h", "/b", sha256=sha("other")), at(1))  # content changed
    assert await store.is_referenced(content, by_history=False) is False
    assert await store.is_referenced(content) is True  # the past versions hold it
    assert await store.is_referenced(sha("other")) is True


# --- API keys -------------------------------------------------------------------------


async def test_add_and_get_api_key(store: MetadataStore) -> None:
    record = await add_key(store, "fleet", scope=Scope.admin)
    assert record.id
    assert (record.name, record.description, record.scope) == ("fleet", "fleet key", Scope.admin)
    assert record.key_hash == sha("key-fleet")
    assert record.created_at == at(0)
    assert record.last_used_at is None
    assert record.is_active is True
    assert await store.get_api_key(sha("key-fleet")) == record
    assert await store.get_api_key_by_id(record.id) == record
    assert await store.get_api_key(sha("key-other")) is None
    assert await store.count_api_keys() == 1


async def test_api_key_without_description(store: MetadataStore) -> None:
    record = await store.add_api_key(
        key_hash=sha("k"), name="n", description=None, scope=Scope.read, created_at=at(0)
    )
    assert (await store.get_api_key_by_id(record.id)).description is None  # type: ignore[union-attr]


async def test_api_key_hosts_expiry_and_rotation_are_kept(store: MetadataStore) -> None:
    plain = await add_key(store, "plain")
    assert (plain.hosts, plain.expires_at, plain.replaced_by, plain.last_used_ip) == (
        [], None, None, None
    )  # fmt: skip
    bound = await store.add_api_key(
        key_hash=sha("bound"), name="bound", description=None, scope=Scope.write,
        created_at=at(0), hosts=["web-*", "db-01"], expires_at=at(3600),
    )  # fmt: skip
    assert (bound.hosts, bound.expires_at) == (["web-*", "db-01"], at(3600))
    assert await store.get_api_key(sha("bound")) == bound
    assert await store.expire_api_key(bound.id, at(60), replaced_by=plain.id) is True
    expired = await store.get_api_key_by_id(bound.id)
    assert expired is not None
    assert (expired.expires_at, expired.replaced_by, expired.hosts) == (
        at(60), plain.id, ["web-*", "db-01"]
    )  # fmt: skip
    assert (await store.get_api_key_by_id(plain.id)) == plain  # only the one key changed
    await store.delete_api_key(bound.id)
    assert await store.expire_api_key(bound.id, at(60), replaced_by=plain.id) is False


async def test_list_api_keys_oldest_first(store: MetadataStore) -> None:
    assert await store.list_api_keys() == []
    made = [await add_key(store, name, seconds) for seconds, name in enumerate("cab")]
    assert [k.name for k in await store.list_api_keys()] == ["c", "a", "b"]
    assert await store.list_api_keys() == made


async def test_touch_deactivate_delete_api_key(store: MetadataStore) -> None:
    key = await add_key(store, "k")
    other = await add_key(store, "other")
    await store.touch_api_key(key.id, at(60), "2001:db8::7")
    touched = await store.get_api_key_by_id(key.id)
    assert touched is not None
    assert (touched.last_used_at, touched.last_used_ip) == (at(60), "2001:db8::7")
    assert await store.deactivate_api_key(key.id) is True
    assert await store.deactivate_api_key(key.id) is True  # revoking twice is fine
    revoked = await store.get_api_key(key.key_hash)
    assert revoked is not None
    assert revoked.is_active is False
    assert (await store.get_api_key_by_id(other.id)).is_active is True  # type: ignore[union-attr]
    assert await store.delete_api_key(key.id) is True
    assert await store.delete_api_key(key.id) is False
    assert await store.get_api_key_by_id(key.id) is None
    assert await store.get_api_key(key.key_hash) is None
    assert await store.deactivate_api_key(key.id) is False
    assert [k.id for k in await store.list_api_keys()] == [other.id]
    assert await store.count_api_keys() == 1


@pytest.mark.parametrize(
    "key_id", ["", "0", "999999", "nope", "-1", "0" * 24, "f" * 24, "1" * 40, "ünï"]
)
async def test_unknown_api_key_ids(store: MetadataStore, key_id: str) -> None:
    key = await add_key(store, "real")
    assert await store.get_api_key_by_id(key_id) is None
    assert await store.deactivate_api_key(key_id) is False
    assert await store.delete_api_key(key_id) is False
    await store.touch_api_key(key_id, at(5), None)  # no error, no effect
    assert await store.expire_api_key(key_id, at(5), replaced_by=key.id) is False
    assert await store.list_api_keys() == [key]


async def test_duplicate_key_hash_is_rejected(store: MetadataStore) -> None:
    original = await add_key(store, "first")
    with pytest.raises(DuplicateError):
        await store.add_api_key(
            key_hash=original.key_hash, name="second", description=None, scope=Scope.admin,
            created_at=at(9),
        )  # fmt: skip
    assert await store.list_api_keys() == [original]
    assert await store.get_api_key(original.key_hash) == original


# --- concurrency: races resolved by the database ---------------------------------------


async def test_concurrent_first_puts_of_one_location(open_store: OpenStore) -> None:
    stores = [await open_store(), await open_store()]  # as two API processes
    results = await asyncio.gather(
        *(put_file(stores[i % 2], meta("race", "/new", file_size=i), at(i)) for i in range(50))
    )
    assert len({r.id for r in results}) == 1
    assert await count_files(stores[0]) == 1
    stored = await stores[1].get_file("race", "/new")
    assert stored is not None
    assert stored.id == results[0].id
    assert stored.file_size in range(50)


async def test_concurrent_batches_overlapping_locations(open_store: OpenStore) -> None:
    stores = [await open_store(), await open_store()]
    batches = [[meta("race", f"/{(j + i) % 30}") for j in range(10)] for i in range(30)]
    await asyncio.gather(*(stores[i % 2].put_files(b, at(i)) for i, b in enumerate(batches)))
    assert await count_files(stores[0]) == 30
    assert len({r.id for r in await stores[0].list_files()}) == 30


async def test_concurrent_put_blob_of_one_hash(open_store: OpenStore) -> None:
    stores = [await open_store(), await open_store()]
    outcomes = await asyncio.gather(
        *(stores[i % 2].put_blob(blob("same", size=i)) for i in range(50))
    )
    assert outcomes.count(True) == 1
    stored = await stores[0].list_blobs()
    assert len(stored) == 1
    assert stored[0].size == outcomes.index(True)  # the winner's record, untouched


async def test_a_failing_write_among_concurrent_writes_fails_alone(store: MetadataStore) -> None:
    original = await add_key(store, "first")
    duplicate = store.add_api_key(
        key_hash=original.key_hash, name="again", description=None, scope=Scope.read,
        created_at=at(1),
    )  # fmt: skip
    outcomes = await asyncio.gather(
        store.put_files([meta("h", f"/before/{i}") for i in range(300)], at(2)),
        duplicate,
        store.put_blobs([blob(i) for i in range(300)]),
        add_key(store, "second", seconds=3),
        return_exceptions=True,
    )
    assert isinstance(outcomes[1], DuplicateError)
    assert not any(isinstance(o, BaseException) for i, o in enumerate(outcomes) if i != 1)
    assert [k.name for k in await store.list_api_keys()] == ["first", "second"]
    assert await count_files(store) == 300
    assert len(await store.get_blobs([sha(i) for i in range(300)])) == 300


async def test_many_concurrent_distinct_puts(store: MetadataStore) -> None:
    records = await asyncio.gather(
        *(put_file(store, meta(f"h{i % 7}", f"/p/{i}"), at(0)) for i in range(100))
    )
    assert len({r.id for r in records}) == 100
    assert await count_files(store) == 100
    found = await store.list_files(limit=MAX_PAGE)
    assert {(r.hostname, r.filepath) for r in found} == {(r.hostname, r.filepath) for r in records}


async def test_concurrent_puts_each_get_their_own_answers(store: MetadataStore) -> None:
    """Requests written together: each answers its own records, a location two of them
    put keeps both versions, and another namespace's record of a location stays its own."""
    await store.put_blobs([blob("held")])
    sent = [meta("h", f"/c/{i}", sha256=sha("held" if i % 2 else i)) for i in range(40)]
    answers = await asyncio.gather(
        *(store.put_files([m], at(1)) for m in sent),
        store.put_files([meta("h", "/c/0", sha256=sha("again"))], at(2)),
        store.put_files([meta("h", "/c/1", sha256=sha("theirs"))], at(1), namespace="team-b"),
    )
    for m, ((record_id, held),) in zip(sent[1:], answers[1:40], strict=True):
        record = await store.get_file("h", m.filepath)
        assert record is not None
        assert (record.id, record.sha256) == (record_id, m.sha256)
        assert (held is not None) == (m.sha256 == sha("held"))
    versions = await store.history("h", "/c/0")
    assert sorted(v.sha256 for v in versions) == sorted([sha(0), sha("again")])
    assert [v.valid_to is None for v in versions] == [True, False]
    theirs = await store.get_file("h", "/c/1", namespace="team-b")
    ours = await store.get_file("h", "/c/1")
    assert theirs is not None
    assert ours is not None
    assert (theirs.sha256, ours.sha256) == (sha("theirs"), sha("held"))
    assert theirs.id == answers[41][0].id != ours.id
    # The counters count every request of the group, each in its own namespace.
    added: dict[str, int] = {}
    for _, namespace, _, files, *_ in (await store.totals("h", ["default", "team-b"])).growth:
        added[namespace] = added.get(namespace, 0) + files
    assert added == {"default": 40, "team-b": 1}


# --- availability ---------------------------------------------------------------------


async def test_ping(open_store: OpenStore) -> None:
    store = await open_store()
    assert await store.ping() is True
    await store.close()
    assert await store.ping() is False


def unreachable_store(backend: str, tmp_path: Path) -> MetadataStore:
    if backend == "sqlite":
        (tmp_path / "not-a-dir").write_text("x")
        return SQLiteMetadataStore(tmp_path / "not-a-dir" / "putplace.db")
    return MongoMetadataStore("mongodb://127.0.0.1:1/", database="pp_x", timeout_ms=300)


async def test_unreachable_store(backend: str, tmp_path: Path) -> None:
    store = unreachable_store(backend, tmp_path)
    started = time.monotonic()
    with pytest.raises(StoreUnavailableError):
        await store.open()
    assert time.monotonic() - started < 10
    try:
        assert await store.ping() is False
        with pytest.raises(StoreUnavailableError):
            await store.list_files()
        with pytest.raises(StoreUnavailableError):
            await put_file(store, meta(), at(0))
    finally:
        await store.close()


async def test_reopen_keeps_data_and_indexes(open_store: OpenStore) -> None:
    first = await open_store()
    record = await put_file(first, meta(), at(0))
    await first.close()
    second = await open_store()  # open() again on existing data: idempotent
    assert await second.get_file("web-01", "/etc/hosts") == record
    assert await put_file(second, meta(file_size=1), at(1)) is not None
    assert await count_files(second) == 1


async def test_registered_sizes_from_the_oldest_record(store: MetadataStore) -> None:
    a, b = sha("a"), sha("b")
    await put_file(store, meta("h1", "/a", sha256=a, file_size=10), at(0))
    await put_file(store, meta("h2", "/a", sha256=a, file_size=99), at(1))  # a later liar
    await put_file(store, meta("h1", "/b", sha256=b, file_size=7), at(2))
    many = [sha(i) for i in range(600)]  # more than one lookup chunk
    assert await store.registered_sizes([a, b, sha("none"), a, *many]) == {a: 10, b: 7}
    assert await store.registered_sizes([]) == {}
    # Only the namespace asked about: another's records of a content register nothing.
    theirs = sha("theirs")
    await store.put_files([meta("h1", "/t", sha256=theirs, file_size=5)], at(3), namespace="x")
    assert await store.registered_sizes([a, theirs]) == {a: 10}
    assert await store.registered_sizes([a, theirs], "x") == {theirs: 5}


async def test_put_blobs_records_who_sent_them_in_the_same_write(store: MetadataStore) -> None:
    first, second = blob("sent-1", seconds=5), blob("sent-2", seconds=6)
    assert await store.put_blobs([first, second], sent_by="lab") == [True, True]
    assert await store.possessed(["lab"], [first.sha256, second.sha256]) == {
        first.sha256: at(5), second.sha256: at(6)
    }  # fmt: skip
    # Already stored: the record stands, and the namespace is recorded as a sender too.
    assert await store.put_blobs([first], sent_by="archive") == [False]
    assert set(await store.possessed(["archive"], [first.sha256])) == {first.sha256}
    assert await store.possessed(["other"], [first.sha256]) == {}


async def test_first_and_later_senders_each_hold_a_content_from_their_own_time(
    store: MetadataStore,
) -> None:
    name = sha("shared")
    assert await store.put_blobs([blob("shared", size=7, seconds=10)], sent_by="lab") == [True]
    assert await store.put_blobs([blob("shared", size=7, seconds=20)], sent_by="archive") == [False]
    # Sent again by either: neither first time moves.
    await store.put_blobs([blob("shared", size=7, seconds=30)], sent_by="lab")
    await store.put_blobs([blob("shared", size=7, seconds=30)], sent_by="archive")
    assert await store.possessed(["lab"], [name]) == {name: at(10)}
    assert await store.possessed(["archive"], [name]) == {name: at(20)}
    assert await store.possessed(["archive", "lab"], [name]) == {name: at(10)}
    for holders in (["lab"], ["archive"], ["lab", "archive"]):
        assert await store.held_totals(holders) == (1, 7)  # once, however many hold it
    assert await store.held_totals(["other"]) == (0, 0)
    # Deleted, then sent first by the namespace that was second: only it holds it now.
    assert await store.delete_blob(name)
    assert await store.possessed(["lab", "archive"], [name]) == {}
    assert await store.put_blobs([blob("shared", size=7, seconds=50)], sent_by="archive") == [True]
    assert await store.possessed(["lab", "archive"], [name]) == {name: at(50)}
    assert await store.held_totals(["lab"]) == (0, 0)


async def test_a_content_stored_without_a_sender_is_held_once_a_namespace_sends_it(
    store: MetadataStore,
) -> None:
    name = sha("unsent")
    assert await store.put_blobs([blob("unsent", seconds=5)]) == [True]
    assert await store.possessed(["lab"], [name]) == {}
    assert await store.put_blobs([blob("unsent", seconds=8)], sent_by="lab") == [False]
    assert await store.possessed(["lab"], [name]) == {name: at(8)}
    assert await store.held_totals(["lab"]) == (1, 10)


async def test_only_a_blob_record_nothing_references_is_deleted(store: MetadataStore) -> None:
    """What gc goes through: a record a file refers to stays whole, with who sent it."""
    await store.put_blobs([blob("free"), blob("used")], sent_by="lab")
    await store.add_possession("team", [sha("used")], at(1))
    used = await put_file(store, meta("h", "/used", sha256=sha("used")), at(2))
    assert await store.delete_unreferenced_blob(sha("free")) is True
    assert await store.get_blob(sha("free")) is None
    assert await store.delete_unreferenced_blob(sha("used")) is False
    assert await store.get_blob(sha("used")) == blob("used")
    for namespace in ("lab", "team"):
        assert sha("used") in await store.possessed([namespace], [sha("used")])
    # A deleted record holds content only while history keeps it.
    assert await store.delete_files([used], at(3)) == 1
    assert await store.delete_unreferenced_blob(sha("used"), by_history=True) is False
    assert await store.delete_unreferenced_blob(sha("used"), by_history=False) is True
    assert await store.possessed(["lab", "team"], [sha("used")]) == {}


@pytest.mark.parametrize("backend", ["mongodb"])  # SQLite checks and deletes in one transaction
async def test_a_blob_referenced_while_being_deleted_is_put_back_whole(
    store: MetadataStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """MongoDB has no transaction across its collections: a file recorded between the
    check and the deletion must find the record back with who sent it."""
    await store.put_blobs([blob("raced")], sent_by="lab")
    await store.add_possession("team", [sha("raced")], at(1))
    answers = iter([False, True])  # unreferenced when checked; recorded just after

    async def is_referenced(sha256: str, **_: Any) -> bool:
        return next(answers)

    monkeypatch.setattr(store, "is_referenced", is_referenced)
    assert await store.delete_unreferenced_blob(sha("raced")) is False
    assert await store.get_blob(sha("raced")) == blob("raced")
    for namespace in ("lab", "team"):
        assert sha("raced") in await store.possessed([namespace], [sha("raced")])
    assert (await store.totals(None)).blob_count == 1  # counted once, as before
