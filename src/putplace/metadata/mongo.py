"""MongoDB metadata store on PyMongo's native async API (``pymongo.AsyncMongoClient``).

Collections and indexes (created idempotently by :meth:`MongoMetadataStore.open`):

``files``
    ``_id`` ObjectId (server-generated on upsert; the list cursor), unique
    ``(hostname, filepath)``, ``(sha256, _id)`` for "who has this content, oldest first"
    and reference checks, ``(hostname, _id)`` for per-host listing in id order.
``blobs``
    ``_id`` is the SHA-256 itself. The ``_id`` index is unique and exists on every
    collection, so there is no second index to keep, ``list_blobs`` walks it in hash
    order, and a hashed ``_id`` shard key routes one hash to one shard (MongoDB cannot
    enforce a separate unique index under a hashed shard key).
``api_keys``
    ``_id`` ObjectId, unique ``key_hash``, ``is_active``.

Races are resolved by the database: files are upserts on the unique location index,
blobs and keys are inserts whose duplicate-key error means "already there".
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any
from urllib.parse import unquote, urlsplit

from bson import ObjectId
from pymongo import ASCENDING, AsyncMongoClient, IndexModel, ReadPreference, UpdateOne
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import (
    BulkWriteError,
    ConnectionFailure,
    DuplicateKeyError,
    ExecutionTimeout,
    PyMongoError,
    WTimeoutError,
)

from putplace.metadata.base import (
    FILE_FIELDS,
    DuplicateError,
    MetadataStore,
    StoredFile,
    StoreUnavailableError,
    check_limit,
    dedupe_by_location,
)
from putplace.models import ApiKeyRecord, BlobRecord, BlobState, FileMetadata, FileRecord, Scope
from putplace.sequences import chunked

Document = dict[str, Any]

DUPLICATE_KEY = 11000
#: Most values in one ``$in``: far below the 16 MiB query limit, and within the
#: expression-size limit of mongoeco (the test server), which refuses ~500.
_IN_CHUNK = 250
#: Errors that mean "the database is not reachable right now", not "you asked wrongly".
_TRANSIENT = (ConnectionFailure, ExecutionTimeout, WTimeoutError)
_UPDATED_FIELDS = tuple(f for f in FILE_FIELDS if f not in ("hostname", "filepath"))

FILE_INDEXES = [
    IndexModel([("hostname", ASCENDING), ("filepath", ASCENDING)], name="location", unique=True),
    IndexModel([("sha256", ASCENDING), ("_id", ASCENDING)], name="sha256"),
    IndexModel([("hostname", ASCENDING), ("_id", ASCENDING)], name="hostname_id"),
]
API_KEY_INDEXES = [
    IndexModel([("key_hash", ASCENDING)], name="key_hash", unique=True),
    IndexModel([("is_active", ASCENDING)], name="is_active"),
]


def _object_id(value: str) -> ObjectId | None:
    return ObjectId(value) if ObjectId.is_valid(value) else None


def _file(doc: Mapping[str, Any]) -> FileRecord:
    data = {name: doc.get(name) for name in FILE_FIELDS}
    data.update(id=str(doc["_id"]), created_at=doc["created_at"], updated_at=doc["updated_at"])
    return FileRecord.model_validate(data)


def _blob(doc: Mapping[str, Any]) -> BlobRecord:
    return BlobRecord(
        sha256=doc["_id"], size=doc["size"], state=BlobState(doc["state"]),
        stored_at=doc["stored_at"],
    )  # fmt: skip


def _key(doc: Mapping[str, Any]) -> ApiKeyRecord:
    data = {k: v for k, v in doc.items() if k != "_id"}
    return ApiKeyRecord.model_validate({**data, "id": str(doc["_id"])})


def _duplicate_indexes(exc: BulkWriteError) -> set[int]:
    """Indexes of the operations an unordered bulk write lost to the unique index; the
    error itself when anything else failed (another write error, the write concern)."""
    errors: list[Mapping[str, Any]] = exc.details.get("writeErrors", [])
    if exc.details.get("writeConcernErrors") or any(e.get("code") != DUPLICATE_KEY for e in errors):
        raise exc
    return {int(e["index"]) for e in errors}


def describe_url(url: str) -> dict[str, Any]:
    """Hosts and database named by a MongoDB URL, without credentials or options."""
    parts = urlsplit(url)
    netloc = parts.netloc.rpartition("@")[2]  # drop user:password
    hosts = [host for host in netloc.split(",") if host]
    return {"scheme": parts.scheme, "hosts": hosts, "url_database": unquote(parts.path[1:])}


class MongoMetadataStore(MetadataStore):
    kind = "mongodb"

    def __init__(
        self,
        url: str,
        *,
        database: str = "putplace",
        max_pool_size: int = 100,
        timeout_ms: int = 5000,
    ) -> None:
        self._url = url
        self._database_name = database
        self._max_pool_size = max_pool_size
        self._timeout_ms = timeout_ms
        self._client: AsyncMongoClient[Document] | None = None
        self._db: AsyncDatabase[Document] | None = None

    # -- lifecycle -------------------------------------------------------------------
    async def open(self) -> None:
        try:
            client: AsyncMongoClient[Document] = AsyncMongoClient(
                self._url,
                maxPoolSize=self._max_pool_size,
                serverSelectionTimeoutMS=self._timeout_ms,
                connectTimeoutMS=self._timeout_ms,
                tz_aware=True,
                uuidRepresentation="standard",
                appname="putplace",
            )
        except PyMongoError as exc:  # bad URL / options: not transient, but unusable
            raise StoreUnavailableError(f"cannot use MongoDB URL: {exc}") from exc
        db = client[self._database_name]
        try:
            with self._guard("create indexes"):
                await db["files"].create_indexes(FILE_INDEXES)
                await db["api_keys"].create_indexes(API_KEY_INDEXES)
                # blobs: _id is the hash; its built-in unique index is all it needs.
        except BaseException:
            await client.close()
            raise
        self._client, self._db = client, db

    async def close(self) -> None:
        client, self._client, self._db = self._client, None, None
        if client is not None:
            await client.close()

    async def ping(self) -> bool:
        if self._client is None:
            return False
        try:
            reply = await self._client.admin.command("ping")
        except PyMongoError:
            return False
        return bool(reply.get("ok"))

    def describe(self) -> dict[str, Any]:
        info = describe_url(self._url)
        return {
            "type": self.kind,
            "hosts": info["hosts"],
            "database": self._database_name,
        }

    # -- plumbing --------------------------------------------------------------------
    @contextmanager
    def _guard(self, what: str) -> Iterator[None]:
        """Turn "cannot reach MongoDB" errors into :class:`StoreUnavailableError`."""
        try:
            yield
        except _TRANSIENT as exc:
            raise StoreUnavailableError(f"MongoDB {what} failed: {exc}") from exc

    def _coll(self, name: str) -> AsyncCollection[Document]:
        if self._db is None:
            raise StoreUnavailableError("MongoDB store is not open")
        return self._db[name]

    @property
    def _files(self) -> AsyncCollection[Document]:
        return self._coll("files")

    @property
    def _blobs(self) -> AsyncCollection[Document]:
        return self._coll("blobs")

    @property
    def _keys(self) -> AsyncCollection[Document]:
        return self._coll("api_keys")

    # -- files -----------------------------------------------------------------------
    async def put_files(self, files: Sequence[FileMetadata], now: datetime) -> list[StoredFile]:
        unique = dedupe_by_location(files)
        if not unique:
            return []
        ops = [
            UpdateOne(
                {"hostname": meta.hostname, "filepath": meta.filepath},
                {
                    "$set": {
                        **{name: getattr(meta, name) for name in _UPDATED_FIELDS},
                        "updated_at": now,
                    },
                    "$setOnInsert": {"created_at": now},
                },
                upsert=True,
            )
            for meta in unique
        ]
        with self._guard("put_files"):
            await self._upsert(ops)
            ids, blobs = await asyncio.gather(
                self._ids_of([(m.hostname, m.filepath) for m in unique]),
                self.get_blobs({m.sha256 for m in unique}),
            )
        missing = [
            f"{h}:{p}" for h, p in ((m.hostname, m.filepath) for m in unique) if (h, p) not in ids
        ]
        if missing:  # deleted by another request between upsert and read
            raise StoreUnavailableError(f"{missing[0]} was deleted while being stored")
        return [StoredFile(ids[(m.hostname, m.filepath)], blobs.get(m.sha256)) for m in unique]

    async def _upsert(self, ops: list[UpdateOne]) -> None:
        """One unordered bulk write; upserts that lost a first-insert race are retried.

        Two concurrent upserts of a new ``(hostname, filepath)`` may both try to insert;
        the unique index lets one win and fails the other with E11000. Retrying turns
        the loser into an update of the winner's document.
        """
        try:
            await self._files.bulk_write(ops, ordered=False)
        except BulkWriteError as exc:
            lost = _duplicate_indexes(exc)
            await self._files.bulk_write([ops[i] for i in sorted(lost)], ordered=False)

    async def _ids_of(self, locations: Sequence[tuple[str, str]]) -> dict[tuple[str, str], str]:
        """Ids of the records at *locations*, read from the primary (our own writes)."""
        files = self._files.with_options(read_preference=ReadPreference.PRIMARY)
        by_host: defaultdict[str, list[str]] = defaultdict(list)
        for hostname, filepath in dict.fromkeys(locations):
            by_host[hostname].append(filepath)
        found: dict[tuple[str, str], str] = {}
        projection = {"_id": 1, "hostname": 1, "filepath": 1}
        for hostname, paths in by_host.items():
            for chunk in chunked(paths, _IN_CHUNK):
                query = {"hostname": hostname, "filepath": {"$in": list(chunk)}}
                async for doc in files.find(query, projection=projection):
                    found[(doc["hostname"], doc["filepath"])] = str(doc["_id"])
        return found

    async def get_file(self, hostname: str, filepath: str) -> FileRecord | None:
        with self._guard("get_file"):
            doc = await self._files.find_one({"hostname": hostname, "filepath": filepath})
        return None if doc is None else _file(doc)

    async def registered_sizes(self, sha256s: Collection[str]) -> dict[str, int]:
        hashes = list(dict.fromkeys(sha256s))
        found: dict[str, int] = {}
        with self._guard("registered_sizes"):
            for chunk in chunked(hashes, _IN_CHUNK):
                pipeline: list[Document] = [
                    {"$match": {"sha256": {"$in": list(chunk)}}},
                    {"$sort": {"sha256": 1, "_id": 1}},  # the (sha256, _id) index
                    {"$group": {"_id": "$sha256", "size": {"$first": "$file_size"}}},
                ]
                async for doc in await self._files.aggregate(pipeline):
                    found[doc["_id"]] = doc["size"]
        return found

    async def list_files(
        self,
        *,
        hostname: str | None = None,
        sha256: str | None = None,
        after: str | None = None,
        limit: int = 100,
    ) -> list[FileRecord]:
        check_limit(limit)
        query: Document = {}
        if after:
            start = _object_id(after)
            if start is None:
                raise ValueError(f"invalid cursor: {after!r}")
            query["_id"] = {"$gt": start}
        # Served by the (sha256, _id) or (hostname, _id) index, or _id alone.
        if hostname is not None:
            query["hostname"] = hostname
        if sha256 is not None:
            query["sha256"] = sha256
        with self._guard("list_files"):
            cursor = self._files.find(query).sort("_id", ASCENDING).limit(limit)
            return [_file(doc) async for doc in cursor]

    # -- blobs -----------------------------------------------------------------------
    async def get_blobs(self, sha256s: Collection[str]) -> dict[str, BlobRecord]:
        hashes = list(dict.fromkeys(sha256s))
        found: dict[str, BlobRecord] = {}
        with self._guard("get_blobs"):
            for chunk in chunked(hashes, _IN_CHUNK):
                async for doc in self._blobs.find({"_id": {"$in": list(chunk)}}):
                    found[doc["_id"]] = _blob(doc)
        return found

    async def put_blobs(self, blobs: Sequence[BlobRecord]) -> list[bool]:
        """One unordered bulk write of conditional upserts.

        The filter matches only a record that is not present, so a quarantined record is
        updated; for a present one the upsert tries an insert of the same ``_id`` and the
        unique index refuses it (E11000): that blob's answer is False, the rest stand.
        """
        if not blobs:
            return []
        ops = [
            UpdateOne(
                {"_id": b.sha256, "state": {"$ne": BlobState.present.value}},
                {"$set": {"size": b.size, "state": b.state.value, "stored_at": b.stored_at}},
                upsert=True,
            )
            for b in blobs
        ]
        refused: set[int] = set()
        with self._guard("put_blobs"):
            try:
                await self._blobs.bulk_write(ops, ordered=False)
            except BulkWriteError as exc:
                refused = _duplicate_indexes(exc)
        return [i not in refused for i in range(len(blobs))]

    async def set_blob_state(self, sha256: str, state: BlobState) -> bool:
        with self._guard("set_blob_state"):
            result = await self._blobs.update_one({"_id": sha256}, {"$set": {"state": state.value}})
        return result.matched_count > 0

    async def delete_blob(self, sha256: str) -> bool:
        with self._guard("delete_blob"):
            result = await self._blobs.delete_one({"_id": sha256})
        return result.deleted_count > 0

    async def list_blobs(self, *, after: str | None = None, limit: int = 1000) -> list[BlobRecord]:
        check_limit(limit)
        with self._guard("list_blobs"):
            cursor = (
                self._blobs.find({"_id": {"$gt": after or ""}}).sort("_id", ASCENDING).limit(limit)
            )
            return [_blob(doc) async for doc in cursor]

    async def is_referenced(self, sha256: str) -> bool:
        with self._guard("is_referenced"):
            doc = await self._files.find_one({"sha256": sha256}, projection={"_id": 1})
        return doc is not None

    # -- API keys --------------------------------------------------------------------
    async def add_api_key(
        self,
        *,
        key_hash: str,
        name: str,
        description: str | None,
        scope: Scope,
        created_at: datetime,
    ) -> ApiKeyRecord:
        doc: Document = {
            "key_hash": key_hash, "name": name, "description": description,
            "scope": scope.value, "created_at": created_at, "last_used_at": None,
            "is_active": True,
        }  # fmt: skip
        with self._guard("add_api_key"):
            try:
                result = await self._keys.insert_one(doc)
            except DuplicateKeyError as exc:
                raise DuplicateError("an API key with this hash exists") from exc
            stored = await self._keys.with_options(read_preference=ReadPreference.PRIMARY).find_one(
                {"_id": result.inserted_id}
            )
        if stored is None:
            raise StoreUnavailableError("API key was deleted while being created")
        return _key(stored)

    async def get_api_key(self, key_hash: str) -> ApiKeyRecord | None:
        with self._guard("get_api_key"):
            doc = await self._keys.find_one({"key_hash": key_hash})
        return None if doc is None else _key(doc)

    async def get_api_key_by_id(self, key_id: str) -> ApiKeyRecord | None:
        oid = _object_id(key_id)
        if oid is None:
            return None
        with self._guard("get_api_key_by_id"):
            doc = await self._keys.find_one({"_id": oid})
        return None if doc is None else _key(doc)

    async def list_api_keys(self) -> list[ApiKeyRecord]:
        with self._guard("list_api_keys"):
            cursor = self._keys.find().sort([("created_at", ASCENDING), ("_id", ASCENDING)])
            return [_key(doc) async for doc in cursor]

    async def touch_api_key(self, key_id: str, when: datetime) -> None:
        oid = _object_id(key_id)
        if oid is not None:
            with self._guard("touch_api_key"):
                await self._keys.update_one({"_id": oid}, {"$set": {"last_used_at": when}})

    async def deactivate_api_key(self, key_id: str) -> bool:
        oid = _object_id(key_id)
        if oid is None:
            return False
        with self._guard("deactivate_api_key"):
            result = await self._keys.update_one({"_id": oid}, {"$set": {"is_active": False}})
        return result.matched_count > 0

    async def delete_api_key(self, key_id: str) -> bool:
        oid = _object_id(key_id)
        if oid is None:
            return False
        with self._guard("delete_api_key"):
            result = await self._keys.delete_one({"_id": oid})
        return result.deleted_count > 0

    async def count_api_keys(self) -> int:
        with self._guard("count_api_keys"):
            return await self._keys.count_documents({})
