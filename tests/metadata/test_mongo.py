"""MongoDB-only behaviour: what /health shows, outages mid-life, the lost-upsert-race retry."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import BulkWriteError

from putplace.metadata.base import StoreUnavailableError
from putplace.metadata.mongo import MongoMetadataStore
from tests.metadata.test_conformance import count_files, meta, put_file

NOW = datetime(2025, 3, 1, tzinfo=UTC)


@pytest.mark.parametrize(
    ("url", "hosts"),
    [
        (
            "mongodb://alice:s3cr%40t@db1:27017,db2:27018/admin?replicaSet=rs0&authSource=admin",
            ["db1:27017", "db2:27018"],
        ),
        (
            "mongodb+srv://alice:s3cret@cluster0.example.net/?retryWrites=true",
            ["cluster0.example.net"],
        ),
        ("mongodb://localhost", ["localhost"]),
    ],
)
def test_describe_shows_hosts_and_database_never_credentials(url: str, hosts: list[str]) -> None:
    info = MongoMetadataStore(url, database="fleet").describe()
    assert info == {"type": "mongodb", "hosts": hosts, "database": "fleet"}
    assert "alice" not in str(info)
    assert "s3cr" not in str(info)


class Forwarder:
    """A TCP relay in front of the test MongoDB that can be cut and restored."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        for writer in list(self._writers):
            writer.close()
        await self._server.wait_closed()

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self.target)
        self._writers |= {writer, up_writer}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))


@pytest.fixture
async def relayed_store(mongo_uri: str) -> AsyncIterator[tuple[MongoMetadataStore, Forwarder]]:
    parts = urlsplit(mongo_uri)
    userinfo, _, hostport = parts.netloc.rpartition("@")
    if parts.scheme != "mongodb" or "," in hostport or parts.port is None:
        pytest.skip("outage test relays one host: give a single-host mongodb:// URI")
    relay = Forwarder((parts.hostname or "127.0.0.1", parts.port))
    await relay.start()
    netloc = f"{userinfo}@" * bool(userinfo) + f"127.0.0.1:{relay.port}"
    options = [o for o in parts.query.split("&") if o and not o.startswith("directConnection=")]
    query = "&".join([*options, "directConnection=true"])
    url = urlunsplit(("mongodb", netloc, parts.path or "/", query, ""))
    store = MongoMetadataStore(url, database=f"pp_{uuid.uuid4().hex[:16]}", timeout_ms=500)
    await store.open()
    try:
        yield store, relay
    finally:
        await store.close()
        await relay.stop()


async def test_outage_then_recovery(relayed_store: tuple[MongoMetadataStore, Forwarder]) -> None:
    store, relay = relayed_store
    await put_file(store, meta(), NOW)
    assert await store.ping() is True

    await relay.stop()  # the database goes away under a running server
    assert await store.ping() is False
    with pytest.raises(StoreUnavailableError):
        await store.list_files()
    with pytest.raises(StoreUnavailableError):
        await put_file(store, meta(file_size=1), NOW)

    await relay.start()  # same port: it comes back
    for _ in range(50):
        if await store.ping():
            break
        await asyncio.sleep(0.1)
    assert await count_files(store) == 1
    assert (await put_file(store, meta(file_size=2), NOW)).file_size == 2


@pytest.fixture
async def mongo_store(mongo_uri: str) -> AsyncIterator[MongoMetadataStore]:
    store = MongoMetadataStore(mongo_uri, database=f"pp_{uuid.uuid4().hex[:16]}")
    await store.open()
    try:
        yield store
    finally:
        await store.close()


async def test_upsert_that_lost_a_first_insert_race_is_retried(
    mongo_store: MongoMetadataStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A real server hands one of two racing first upserts an E11000; it must still land.

    The race cannot be timed against a real server, so the first bulk write reports
    that E11000 for its second operation (after applying only the first), as MongoDB does.
    """
    real = AsyncCollection.bulk_write
    calls: list[int] = []

    async def racing(self: AsyncCollection[Any], requests: list[Any], **kw: Any) -> Any:
        if self.name != "files":  # the counters' writes
            return await real(self, requests, **kw)
        calls.append(len(requests))
        if len(calls) == 1:
            await real(self, requests[:1], **kw)
            raise BulkWriteError(
                {"writeErrors": [{"index": 1, "code": 11000, "errmsg": "E11000 duplicate key"}],
                 "writeConcernErrors": [], "nUpserted": 1}
            )  # fmt: skip
        return await real(self, requests, **kw)

    monkeypatch.setattr(AsyncCollection, "bulk_write", racing)
    ids = [done.id for done in await mongo_store.put_files([meta("h", "/a"), meta("h", "/b")], NOW)]
    assert calls == [2, 1]  # the loser alone was retried
    stored = [await mongo_store.get_file("h", path) for path in ("/a", "/b")]
    assert ids == [r.id for r in stored if r is not None]
    assert await count_files(mongo_store) == 2


async def test_other_write_errors_are_not_swallowed(
    mongo_store: MongoMetadataStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def failing(self: AsyncCollection[Any], requests: list[Any], **kw: Any) -> Any:
        raise BulkWriteError(
            {"writeErrors": [{"index": 0, "code": 121, "errmsg": "Document failed validation"}],
             "writeConcernErrors": []}
        )  # fmt: skip

    monkeypatch.setattr(AsyncCollection, "bulk_write", failing)
    with pytest.raises(BulkWriteError):
        await mongo_store.put_files([meta("h", "/a")], NOW)


async def test_a_scan_an_earlier_release_opened_is_taken_to_have_had_records(
    mongo_store: MongoMetadataStore,
) -> None:
    """Its document has no ``had_records``: its completion looks for what the walk
    missed, as the release that opened it would have."""
    scans = mongo_store._coll("scans")
    inserted = await scans.insert_one(
        {"namespace": "default", "hostname": "h", "root": "/srv", "excludes": [],
         "started_at": NOW, "finished_at": None, "state": "open", "deleted": 0}
    )  # fmt: skip
    scan = await mongo_store.get_scan(str(inserted.inserted_id))
    assert scan is not None
    assert scan.had_records is True


async def test_a_database_of_the_previous_release_is_migrated(mongo_uri: str) -> None:
    """Schema 1 (before namespaces): records, history, scans and counters without a
    namespace, and the old unique location index. Opening moves them to ``default``."""
    from pymongo import ASCENDING, AsyncMongoClient

    from tests.support.mongo import drop_database

    name = f"pp_{uuid.uuid4().hex[:16]}"
    async with AsyncMongoClient(mongo_uri, tz_aware=True) as client:
        db = client[name]
        await db["files"].create_index(
            [("hostname", ASCENDING), ("filepath", ASCENDING)], name="location", unique=True
        )
        fields = meta("h", "/a").model_dump()
        await db["files"].insert_one(
            {**fields, "created_at": NOW, "updated_at": NOW, "recorded_at": NOW,
             "deleted_at": None}
        )  # fmt: skip
        await db["growth"].insert_one(
            {"_id": {"day": "2025-03-01", "hostname": "h"}, "files_added": 1,
             "bytes_added": 42, "files_deleted": 0, "bytes_deleted": 0}
        )  # fmt: skip
        await db["blobs"].insert_one(
            {"_id": fields["sha256"], "size": 42, "state": "present", "stored_at": NOW}
        )
        await db["meta"].insert_one({"_id": "schema", "version": 1})
    store = MongoMetadataStore(mongo_uri, database=name)
    try:
        await store.open()
        old = await store.get_file("h", "/a")
        assert old is not None
        assert old.namespace == "default"
        (totals,) = (await store.totals(None)).growth
        assert totals == ("2025-03-01", "default", "h", 1, 42, 0, 0)
        # All content stored before counts as sent by the default namespace, then.
        assert await store.possessed(["default"], [old.sha256]) == {old.sha256: NOW}
        # The same location in another namespace is another record.
        await store.put_files([meta("h", "/a", file_size=7)], NOW, namespace="team-b")
        theirs = await store.get_file("h", "/a", "team-b")
        assert theirs is not None
        assert (theirs.file_size, theirs.id != old.id) == (7, True)
        await store.close()
        await store.open()  # a second open migrates nothing twice
        assert len((await store.totals(None)).growth) == 2
    finally:
        await store.close()
        drop_database(mongo_uri, name)
