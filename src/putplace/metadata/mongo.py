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
``file_history``
    past versions: ``(hostname, filepath, valid_from)``, ``sha256``, ``valid_to``.
``scans``, ``scan_seen``
    scans, and what each open one saw (names per directory): ``(scan, dir)``.
``growth``, ``counters``, ``meta``
    files and bytes added/deleted per (day, host); blob totals; the schema version.

Races are resolved by the database: files are upserts on the unique location index,
blobs and keys are inserts whose duplicate-key error means "already there".
"""

from __future__ import annotations

import asyncio
import random
from collections import defaultdict
from collections.abc import AsyncIterator, Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote, urlsplit

from bson import ObjectId
from pymongo import (
    ASCENDING,
    AsyncMongoClient,
    IndexModel,
    ReadPreference,
    UpdateOne,
)
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
    MaintenanceRun,
    MetadataStore,
    StoredFile,
    StoreUnavailableError,
    check_limit,
    dedupe_by_location,
)
from putplace.metadata.inventory import (
    CURRENT,
    HISTORY,
    SORT_FIELDS,
    Cursor,
    DuplicateGroup,
    FileQuery,
    FileState,
    Found,
    Growth,
    Listed,
    PastVersion,
    Totals,
    WritePlan,
    by_directory,
    current_version,
    plan_deletes,
    plan_puts,
    prefix_range,
    replaced_at,
    split_path,
    tie_rule,
)
from putplace.metadata.uploads import PROGRESS_FIELDS, Upload, upload_from_row, upload_to_row
from putplace.models import (
    DEFAULT_NAMESPACE,
    STORED,
    ApiKeyRecord,
    BlobRecord,
    BlobState,
    FileMetadata,
    FileRecord,
    FileVersion,
    Location,
    ScanRecord,
    ScanState,
    Scope,
)
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
    IndexModel(
        # Host and path first: searches by host and path prefix in every namespace use it.
        [("hostname", ASCENDING), ("filepath", ASCENDING), ("namespace", ASCENDING)],
        name="ns_location",
        unique=True,
    ),
    IndexModel([("sha256", ASCENDING), ("_id", ASCENDING)], name="sha256"),
    IndexModel([("hostname", ASCENDING), ("_id", ASCENDING)], name="hostname_id"),
    IndexModel([("file_size", ASCENDING), ("_id", ASCENDING)], name="size"),
    IndexModel([("recorded_at", ASCENDING), ("_id", ASCENDING)], name="recorded"),
]
POSSESSION_INDEXES = [
    IndexModel([("sha256", ASCENDING), ("namespace", ASCENDING)], name="sha256_namespace",
               unique=True),
]  # fmt: skip
UPLOAD_INDEXES = [IndexModel([("expires_at", ASCENDING)], name="expires_at")]
SCAN_INDEXES = [IndexModel([("state", ASCENDING)], name="state")]
SEEN_INDEXES = [IndexModel([("scan", ASCENDING), ("dir", ASCENDING)], name="scan_dir")]
HISTORY_INDEXES = [
    IndexModel(
        [
            ("hostname", ASCENDING),
            ("filepath", ASCENDING),
            ("namespace", ASCENDING),
            ("valid_from", ASCENDING),
        ],
        name="ns_location",
    ),
    IndexModel([("sha256", ASCENDING)], name="sha256"),
    IndexModel([("valid_to", ASCENDING)], name="valid_to"),
]
#: Schema changes applied at open, counted in the ``meta`` collection's ``schema`` document.
SCHEMA_VERSION = 2
_SEARCH_FIELDS = {CURRENT: {}, HISTORY: {"recorded_at": "valid_from"}}
API_KEY_INDEXES = [
    IndexModel([("key_hash", ASCENDING)], name="key_hash", unique=True),
    IndexModel([("is_active", ASCENDING)], name="is_active"),
]


def _object_id(value: str) -> ObjectId | None:
    return ObjectId(value) if ObjectId.is_valid(value) else None


def _file(doc: Mapping[str, Any]) -> FileRecord:
    data = {name: doc.get(name) for name in FILE_FIELDS}
    data.update(
        id=str(doc["_id"]), created_at=doc["created_at"], updated_at=doc["updated_at"],
        recorded_at=doc.get("recorded_at", doc["updated_at"]), deleted_at=doc.get("deleted_at"),
        namespace=doc.get("namespace", DEFAULT_NAMESPACE),
    )  # fmt: skip
    return FileRecord.model_validate(data, context=STORED)


def _version(doc: Mapping[str, Any]) -> FileVersion:
    data = {name: doc.get(name) for name in FILE_FIELDS}
    data.update(valid_from=doc["valid_from"], valid_to=doc["valid_to"], deleted=doc["deleted"])
    return FileVersion.model_validate(data, context=STORED)


def _history_doc(version: PastVersion) -> Document:
    fields = version.record.__dict__
    return {
        "file_id": ObjectId(version.file_id), **{name: fields[name] for name in FILE_FIELDS},
        "valid_from": version.valid_from, "valid_to": version.valid_to,
        "deleted": version.deleted, "namespace": version.record.namespace,
    }  # fmt: skip


def _growth_ops(growth: Growth) -> list[UpdateOne]:
    names = ("files_added", "bytes_added", "files_deleted", "bytes_deleted")
    return [
        UpdateOne({"_id": {"day": d, "namespace": n, "hostname": h}},
                  {"$inc": dict(zip(names, v, strict=True))}, upsert=True)
        for d, n, h, *v in growth.rows()
    ]  # fmt: skip


def _scan(doc: Mapping[str, Any]) -> ScanRecord:
    return ScanRecord.model_validate({**doc, "id": str(doc["_id"])})


def _prefix(root: str) -> Document:
    exact, low, high = prefix_range(root)
    return {"$or": [{"filepath": exact}, {"filepath": {"$gte": low, "$lt": high}}]}


def _blob(doc: Mapping[str, Any]) -> BlobRecord:
    return BlobRecord(
        sha256=doc["_id"], size=doc["size"], state=BlobState(doc["state"]),
        stored_at=doc["stored_at"],
    )  # fmt: skip


def _key(doc: Mapping[str, Any]) -> ApiKeyRecord:
    data = {k: v for k, v in doc.items() if k != "_id"}
    data["grants"] = dict(data.get("grants", []))
    return ApiKeyRecord.model_validate({**data, "id": str(doc["_id"])})


async def _upsert_ignoring_races(
    collection: AsyncCollection[Document], ops: list[UpdateOne]
) -> None:
    """Unordered upserts where a unique index turning one away (another process wrote the
    same document first) is success."""
    if not ops:
        return
    try:
        await collection.bulk_write(ops, ordered=False)
    except BulkWriteError as exc:
        if any(e.get("code") != DUPLICATE_KEY for e in exc.details["writeErrors"]):
            raise


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


#: Rounds of "compare again" for records another request overtook. Each round at least
#: one of the contenders for a location wins, so this bounds the contenders, not the load.
_VERSION_RETRIES = 100


def _filters(query: FileQuery, source: int, renamed: Mapping[str, str]) -> list[Document]:
    def name(field: str) -> str:
        return renamed.get(field, field)

    clauses: list[Document] = []
    if query.as_of is not None:
        if source == CURRENT:
            clauses += [{"recorded_at": {"$lte": query.as_of}}, {"deleted_at": None}]
        else:
            clauses += [{"valid_from": {"$lte": query.as_of}},
                        {"valid_to": {"$gt": query.as_of}}, {"deleted": False}]  # fmt: skip
    elif query.state is FileState.live:
        clauses.append({"deleted_at": None})
    elif query.state is FileState.deleted:
        clauses.append({"deleted_at": {"$ne": None}})
    if query.namespaces:
        clauses.append({"namespace": {"$in": list(query.namespaces)}})
    if query.hostnames:
        clauses.append({"hostname": {"$in": list(query.hostnames)}})
    if query.path_prefix is not None:
        clauses.append(_prefix(query.path_prefix))
    if (regex := query.path_regex) is not None:
        clauses.append({"filepath": {"$regex": regex}})
    for field, operator, value in (
        ("sha256", "$eq", query.sha256),
        ("file_size", "$gte", query.min_size),
        ("file_size", "$lte", query.max_size),
        ("file_mtime", "$gte", query.mtime_after),
        ("file_mtime", "$lt", query.mtime_before),
        ("recorded_at", "$gte", query.recorded_after),
        ("recorded_at", "$lt", query.recorded_before),
    ):
        if value is not None:
            clauses.append({name(field): {operator: value}})
    return clauses


def _blob_stages(query: FileQuery) -> list[Document]:
    """A record "has content" when its content is stored and its own namespace sent it
    (``possession``): what the stored blob alone says is not the namespace's to know."""
    lookup = {"$lookup": {"from": "blobs", "localField": "sha256", "foreignField": "_id",
                          "as": "_blob"}}  # fmt: skip
    # Uploaded: when the record's own namespace sent it.
    since: Document = {}
    if query.uploaded_after is not None:
        since["$gte"] = query.uploaded_after
    if query.uploaded_before is not None:
        since["$lt"] = query.uploaded_before
    sent = {"$lookup": {
        "from": "possession", "let": {"s": "$sha256", "n": "$namespace"},
        "pipeline": [{"$match": {"$expr": {"$and": [{"$eq": ["$sha256", "$$s"]},
                                                    {"$eq": ["$namespace", "$$n"]}]}}},
                     *([{"$match": {"since": since}}] if since else [])],
        "as": "_sent",
    }}  # fmt: skip
    drop = {"$project": {"_blob": 0, "_sent": 0}}
    if query.has_content is False:
        absent = {"$or": [{"_blob.state": {"$ne": BlobState.present.value}}, {"_sent": []}]}
        return [lookup, sent, {"$match": absent}, drop]
    held = {"_blob": {"$elemMatch": {"state": BlobState.present.value}}, "_sent": {"$ne": []}}
    return [lookup, sent, {"$match": held}, drop]


def _after(query: FileQuery, cursor: Cursor, source: int, renamed: Mapping[str, str]) -> Document:
    """Records of *source* that come after *cursor* in the query's order."""
    row_id = _object_id(cursor.id)
    if row_id is None:
        raise ValueError(f"invalid cursor: {cursor.id!r}")
    beyond = "$lt" if query.descending else "$gt"
    include, after_id = tie_rule(cursor, source, query.descending)
    tie: Document = (
        {"_id": {"$exists": False}} if not include
        else {} if after_id is None
        else {"_id": {beyond: row_id}}
    )  # fmt: skip
    field = SORT_FIELDS[query.sort]
    if field is None:
        return tie
    column = renamed.get(field, field)
    value: Any = cursor.value
    if field == "recorded_at":
        if not isinstance(value, str):
            raise ValueError("invalid cursor")
        value = datetime.fromisoformat(value)
    return {"$or": [{column: {beyond: value}}, {column: value, **tie}]}


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
                await db["file_history"].create_indexes(HISTORY_INDEXES)
                await db["scan_seen"].create_indexes(SEEN_INDEXES)
                await db["possession"].create_indexes(POSSESSION_INDEXES)
                await db["api_keys"].create_indexes(API_KEY_INDEXES)
                await db["uploads"].create_indexes(UPLOAD_INDEXES)
                await db["scans"].create_indexes(SCAN_INDEXES)
                # After the indexes: the steps' writes use them (and the unique ones keep
                # two processes migrating at once from writing anything twice).
                await self._migrate(db)
                # blobs: _id is the hash; its built-in unique index is all it needs.
        except BaseException:
            await client.close()
            raise
        self._client, self._db = client, db

    @staticmethod
    async def _migrate(db: AsyncDatabase[Document]) -> None:
        """Bring data written by an older version up to :data:`SCHEMA_VERSION`: each step
        only fills in what is missing, so one interrupted is simply run again."""
        meta = await db["meta"].find_one({"_id": "schema"})
        version = 0 if meta is None else int(meta.get("version", 0))
        if version >= SCHEMA_VERSION:
            return
        # A new database has nothing to bring up to date.
        fresh = meta is None and await db["files"].find_one({}, projection={"_id": 1}) is None
        if version < 1 and not fresh:
            await MongoMetadataStore._migrate_inventory(db)
        if version < 2 and not fresh:
            await MongoMetadataStore._migrate_namespaces(db)
        await db["meta"].update_one(
            {"_id": "schema"}, {"$set": {"version": SCHEMA_VERSION}}, upsert=True
        )

    @staticmethod
    async def _migrate_namespaces(db: AsyncDatabase[Document]) -> None:
        """Everything written before namespaces is in the default one, and all content
        stored so far counts as sent by it; a location is unique within its namespace
        (the new unique index exists; the old one, across namespaces, goes)."""
        for name in ("files", "file_history"):
            if "location" in await db[name].index_information():
                await db[name].drop_index("location")
        for name in ("files", "file_history", "scans"):
            await db[name].update_many(
                {"namespace": {"$exists": False}}, {"$set": {"namespace": DEFAULT_NAMESPACE}}
            )
        blobs = db["blobs"].find({"state": "present"}, projection={"stored_at": 1})
        batch: list[UpdateOne] = []
        async for blob in blobs:
            batch.append(
                UpdateOne(
                    {"sha256": blob["_id"], "namespace": DEFAULT_NAMESPACE},
                    {"$setOnInsert": {"since": blob["stored_at"]}},
                    upsert=True,
                )
            )
            if len(batch) == 1000:
                await _upsert_ignoring_races(db["possession"], batch)
                batch = []
        await _upsert_ignoring_races(db["possession"], batch)
        growth = db["growth"]
        async for row in growth.find({"_id.namespace": {"$exists": False}}):
            key = {"day": row["_id"]["day"], "namespace": DEFAULT_NAMESPACE,
                   "hostname": row["_id"]["hostname"]}  # fmt: skip
            counts = {k: v for k, v in row.items() if k != "_id"}
            # $inc: a process that migrated first may have counted on this row already.
            await growth.update_one({"_id": key}, {"$inc": counts}, upsert=True)
            await growth.delete_one({"_id": row["_id"]})

    @staticmethod
    async def _migrate_inventory(db: AsyncDatabase[Document]) -> None:
        files = db["files"]
        await files.update_many(
            {"recorded_at": {"$exists": False}}, [{"$set": {"recorded_at": "$updated_at"}}]
        )
        if await db["growth"].count_documents({}) == 0:
            by_day: list[Document] = [
                {"$match": {"deleted_at": None}},
                {"$group": {
                    "_id": {"day": {"$dateToString": {"format": "%Y-%m-%d",
                                                      "date": "$recorded_at"}},
                            "hostname": "$hostname"},
                    "files_added": {"$sum": 1}, "bytes_added": {"$sum": "$file_size"},
                }},
            ]  # fmt: skip
            async for row in await files.aggregate(by_day):
                await db["growth"].update_one(
                    {"_id": row["_id"]},
                    {"$set": {"files_added": row["files_added"], "bytes_added": row["bytes_added"],
                              "files_deleted": 0, "bytes_deleted": 0}},
                    upsert=True,
                )  # fmt: skip
        count, size = 0, 0
        async for row in await db["blobs"].aggregate(
            [{"$group": {"_id": None, "n": {"$sum": 1}, "bytes": {"$sum": "$size"}}}]
        ):
            count, size = row["n"], row["bytes"]
        await db["counters"].update_one(
            {"_id": "blobs"}, {"$set": {"count": count, "bytes": size}}, upsert=True
        )

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
    async def put_files(
        self,
        files: Sequence[FileMetadata],
        now: datetime,
        *,
        namespace: str = DEFAULT_NAMESPACE,
        scan_id: str | None = None,
    ) -> list[StoredFile]:
        unique = dedupe_by_location(files)
        if not unique:
            return []
        scan = None if scan_id is None else _object_id(scan_id)
        if scan_id is not None and scan is None:
            raise ValueError(f"unknown scan: {scan_id!r}")
        pending = unique
        ids: dict[tuple[str, str], str] = {}
        with self._guard("put_files"):
            # No multi-document transaction: each record is written only if it is still
            # the version compared (its updated_at), and one written meanwhile by another
            # request is compared again, so no version is lost or recorded twice.
            for attempt in range(_VERSION_RETRIES):
                if attempt:  # spread the contenders out
                    await asyncio.sleep(random.uniform(0, 0.001 * min(attempt, 20)))
                current = await self._current(
                    namespace, [(m.hostname, m.filepath) for m in pending]
                )
                plan = plan_puts(pending, current, now, namespace)
                ops = [
                    self._put_op(
                        namespace, meta, recorded, current.get((meta.hostname, meta.filepath)), now
                    )
                    for meta, recorded in plan.records
                ]
                lost = await self._write_lost(ops)
                done = [m for i, m in enumerate(pending) if i not in lost]
                plan = plan_puts(done, current, now, namespace) if lost else plan
                await self._record_history(plan)
                ids.update((loc, rec.id) for loc, rec in current.items())
                pending = [pending[i] for i in sorted(lost)]
                if not pending:
                    break
            else:
                raise StoreUnavailableError("records kept changing while being stored; retry")
            if scan is not None:
                await self._add_seen(scan, [m.filepath for m in unique])
            new = [(m.hostname, m.filepath) for m in unique if (m.hostname, m.filepath) not in ids]
            found, blobs = await asyncio.gather(
                self._ids_of(namespace, new), self.get_blobs({m.sha256 for m in unique})
            )
        ids.update(found)
        missing = [
            f"{h}:{p}" for h, p in ((m.hostname, m.filepath) for m in unique) if (h, p) not in ids
        ]
        if missing:  # deleted by another request between upsert and read
            raise StoreUnavailableError(f"{missing[0]} was deleted while being stored")
        return [StoredFile(ids[(m.hostname, m.filepath)], blobs.get(m.sha256)) for m in unique]

    @staticmethod
    def _put_op(
        namespace: str,
        meta: FileMetadata,
        recorded: datetime,
        old: FileRecord | None,
        now: datetime,
    ) -> UpdateOne:
        fields = meta.__dict__
        update: Document = {
            **{name: fields[name] for name in _UPDATED_FIELDS},
            "updated_at": now, "recorded_at": recorded, "deleted_at": None,
        }  # fmt: skip
        where: Document = {
            "namespace": namespace, "hostname": meta.hostname, "filepath": meta.filepath
        }  # fmt: skip
        # No match means another request wrote it first: the upsert then collides with
        # the unique location index (E11000) and the record is compared again.
        where["updated_at"] = {"$exists": False} if old is None else old.updated_at
        return UpdateOne(where, {"$set": update, "$setOnInsert": {"created_at": now}}, upsert=True)

    async def _write_lost(self, ops: list[UpdateOne]) -> set[int]:
        """One unordered bulk write; the indexes of the writes another request overtook."""
        try:
            await self._files.bulk_write(ops, ordered=False)
        except BulkWriteError as exc:
            return _duplicate_indexes(exc)
        return set()

    async def _record_history(self, plan: WritePlan) -> None:
        """The history and counter half of a write (the records are the caller's)."""
        if plan.history:
            await self._coll("file_history").insert_many(
                [_history_doc(v) for v in plan.history], ordered=False
            )
        if ops := _growth_ops(plan.growth):
            await self._coll("growth").bulk_write(ops, ordered=False)

    async def _at(
        self,
        namespace: str,
        locations: Sequence[tuple[str, str]],
        projection: Document | None = None,
    ) -> AsyncIterator[Document]:
        """The records at *locations* of *namespace*, read from the primary (our own
        writes), a host and a bounded ``$in`` at a time."""
        files = self._files.with_options(read_preference=ReadPreference.PRIMARY)
        by_host: defaultdict[str, list[str]] = defaultdict(list)
        for hostname, filepath in dict.fromkeys(locations):
            by_host[hostname].append(filepath)
        for hostname, paths in by_host.items():
            for chunk in chunked(paths, _IN_CHUNK):
                query = {
                    "namespace": namespace, "hostname": hostname,
                    "filepath": {"$in": list(chunk)},
                }  # fmt: skip
                async for doc in files.find(query, projection=projection):
                    yield doc

    async def _current(
        self, namespace: str, locations: Sequence[tuple[str, str]]
    ) -> dict[tuple[str, str], FileRecord]:
        return {
            (d["hostname"], d["filepath"]): _file(d) async for d in self._at(namespace, locations)
        }

    async def _ids_of(
        self, namespace: str, locations: Sequence[tuple[str, str]]
    ) -> dict[tuple[str, str], str]:
        projection = {"_id": 1, "hostname": 1, "filepath": 1}
        return {
            (d["hostname"], d["filepath"]): str(d["_id"])
            async for d in self._at(namespace, locations, projection)
        }

    async def get_file(
        self, hostname: str, filepath: str, namespace: str = DEFAULT_NAMESPACE
    ) -> FileRecord | None:
        with self._guard("get_file"):
            doc = await self._files.find_one(
                {"namespace": namespace, "hostname": hostname, "filepath": filepath}
            )
        return None if doc is None else _file(doc)

    async def registered_sizes(
        self, sha256s: Collection[str], namespace: str = DEFAULT_NAMESPACE
    ) -> dict[str, int]:
        hashes = list(dict.fromkeys(sha256s))
        found: dict[str, int] = {}
        with self._guard("registered_sizes"):
            for chunk in chunked(hashes, _IN_CHUNK):
                pipeline: list[Document] = [
                    {"$match": {"sha256": {"$in": list(chunk)}, "namespace": namespace}},
                    {"$sort": {"sha256": 1, "_id": 1}},  # the (sha256, _id) index
                    {"$group": {"_id": "$sha256", "size": {"$first": "$file_size"}}},
                ]
                async for doc in await self._files.aggregate(pipeline):
                    found[doc["_id"]] = doc["size"]
        return found

    async def search_files(self, query: FileQuery, after: Cursor | None, limit: int) -> list[Found]:
        check_limit(limit)
        field = SORT_FIELDS[query.sort]
        pipeline = self._branch(query, after, CURRENT)
        if query.as_of is not None:
            branch = self._branch(query, after, HISTORY)
            pipeline.append({"$unionWith": {"coll": "file_history", "pipeline": branch}})
        direction = -1 if query.descending else 1
        order = {field: direction} if field else {}
        pipeline += [
            {"$sort": {**order, "source": direction, "row_id": direction}},
            {"$limit": limit},
        ]
        found: list[Found] = []
        with self._guard("search_files"):
            async for doc in await self._files.aggregate(pipeline):
                value = None if field is None else doc[field]
                if isinstance(value, datetime):
                    value = value.isoformat()
                cursor = Cursor(value, doc["source"], str(doc["row_id"]))
                found.append(Found(_file(doc), cursor))
        return found

    def _branch(self, query: FileQuery, after: Cursor | None, source: int) -> list[Document]:
        """The pipeline of one source: its filters, the blob join when asked, the cursor."""
        renamed = _SEARCH_FIELDS[source]
        clauses = _filters(query, source, renamed)
        if after is not None:
            clauses.append(_after(query, after, source, renamed))
        stages: list[Document] = [{"$match": {"$and": clauses}}] if clauses else []
        if query.needs_blob:
            stages += _blob_stages(query)
        shape: Document = {"source": source, "row_id": "$_id"}
        if source == HISTORY:
            shape.update(_id="$file_id", recorded_at="$valid_from", created_at="$valid_from",
                         updated_at="$valid_from", deleted_at=None)  # fmt: skip
        return [*stages, {"$addFields": shape}]

    # -- scans, deletions and history -------------------------------------------------
    async def create_scan(
        self,
        hostname: str,
        root: str,
        excludes: Sequence[str],
        now: datetime,
        namespace: str = DEFAULT_NAMESPACE,
    ) -> ScanRecord:
        live = {"namespace": namespace, "hostname": hostname, **_prefix(root), "deleted_at": None}
        with self._guard("create_scan"):
            # Before the scan exists. A record committed meanwhile is kept by the
            # completion until the next scan (see ScanRecord.had_records).
            had_records = await self._files.find_one(live, {"_id": 1}) is not None
            doc: Document = {
                "namespace": namespace, "hostname": hostname, "root": root,
                "excludes": list(excludes), "started_at": now, "finished_at": None,
                "state": ScanState.open.value, "deleted": 0, "had_records": had_records,
            }  # fmt: skip
            result = await self._coll("scans").insert_one(doc)
        return _scan({**doc, "_id": result.inserted_id})

    async def get_scan(self, scan_id: str) -> ScanRecord | None:
        oid = _object_id(scan_id)
        if oid is None:
            return None
        with self._guard("get_scan"):
            doc = await self._coll("scans").find_one({"_id": oid})
        return None if doc is None else _scan(doc)

    async def finish_scan(
        self, scan_id: str, state: ScanState, deleted: int, now: datetime
    ) -> bool:
        oid = _object_id(scan_id)
        if oid is None:
            return False
        with self._guard("finish_scan"):
            await self._coll("scan_seen").delete_many({"scan": oid})
            result = await self._coll("scans").update_one(
                {"_id": oid, "state": ScanState.open.value},
                {"$set": {"state": state.value, "deleted": deleted, "finished_at": now}},
            )
        return result.matched_count > 0

    async def mark_seen(self, scan: ScanRecord, filepaths: Sequence[str]) -> int:
        oid = _object_id(scan.id)
        if oid is None:
            raise ValueError(f"unknown scan: {scan.id!r}")
        paths = list(dict.fromkeys(filepaths))
        live = 0
        with self._guard("mark_seen"):
            await self._add_seen(oid, paths)
            for chunk in chunked(paths, _IN_CHUNK):
                live += await self._files.count_documents(
                    {
                        "namespace": scan.namespace,
                        "hostname": scan.hostname,
                        "filepath": {"$in": list(chunk)},
                        "deleted_at": None,
                    }
                )
        return live

    async def _add_seen(self, scan: ObjectId, filepaths: Sequence[str]) -> None:
        rows = [{"scan": scan, "dir": d, "names": names}
                for d, names in by_directory(filepaths).items()]  # fmt: skip
        if rows:
            await self._coll("scan_seen").insert_many(rows, ordered=False)

    async def unseen_under(self, scan: ScanRecord, after: str, limit: int) -> list[Listed]:
        # Records in path order, a page at a time, less the names the scan saw in their
        # directories (one query per page for those).
        oid = _object_id(scan.id)
        unseen: list[Listed] = []
        with self._guard("unseen_under"):
            while len(unseen) < limit:
                query = {
                    "$and": [{"namespace": scan.namespace, "hostname": scan.hostname},
                             _prefix(scan.root), {"filepath": {"$gt": after}},
                             {"deleted_at": None}]
                }  # fmt: skip
                cursor = self._files.find(
                    query, projection={"_id": 1, "filepath": 1, "updated_at": 1}
                ).sort("filepath", ASCENDING)
                page = [
                    Listed(str(d["_id"]), d["filepath"], d["updated_at"])
                    async for d in cursor.limit(limit)
                ]
                if not page:
                    break
                after = page[-1].filepath
                places = [split_path(r.filepath) for r in page]
                seen = await self._seen_names(oid, {directory for directory, _ in places})
                unseen.extend(
                    record
                    for record, (directory, name) in zip(page, places, strict=True)
                    if name not in seen.get(directory, ())
                )
        return unseen[:limit]

    async def _seen_names(
        self, scan: ObjectId | None, directories: Collection[str]
    ) -> dict[str, set[str]]:
        seen: dict[str, set[str]] = {}
        for chunk in chunked(list(directories), _IN_CHUNK):
            async for doc in self._coll("scan_seen").find(
                {"scan": scan, "dir": {"$in": list(chunk)}}
            ):
                seen.setdefault(doc["dir"], set()).update(doc["names"])
        return seen

    async def delete_files(self, records: Sequence[Listed | FileRecord], now: datetime) -> int:
        async def delete(record: FileRecord) -> bool:
            # Only a record still as read: one reported again since stays live.
            result = await self._files.update_one(
                {"_id": ObjectId(record.id), "updated_at": record.updated_at,
                 "deleted_at": None},
                {"$set": {"deleted_at": (at := replaced_at(record, now)), "recorded_at": at}},
            )  # fmt: skip
            return result.modified_count > 0

        deleted: list[FileRecord] = []
        listed = {r.id: r.updated_at for r in records}
        with self._guard("delete_files"):
            # The whole records, for their past versions; those reported since stay.
            whole = [
                record
                for chunk in chunked([ObjectId(i) for i in listed], _IN_CHUNK)
                async for record in self._records({"_id": {"$in": list(chunk)},
                                                   "deleted_at": None})
                if record.updated_at == listed[record.id]
            ]  # fmt: skip
            for chunk in chunked(whole, 100):
                outcomes = await asyncio.gather(*(delete(r) for r in chunk))
                deleted += [r for r, done in zip(chunk, outcomes, strict=True) if done]
            await self._record_history(plan_deletes(deleted, now))
        return len(deleted)

    async def _records(self, query: Document) -> AsyncIterator[FileRecord]:
        async for doc in self._files.find(query):
            yield _file(doc)

    async def history(
        self, hostname: str, filepath: str, namespace: str = DEFAULT_NAMESPACE
    ) -> list[FileVersion]:
        where = {"namespace": namespace, "hostname": hostname, "filepath": filepath}
        with self._guard("history"):
            doc = await self._files.find_one(where)
            if doc is None:
                return []
            current = _file(doc)
            cursor = self._coll("file_history").find(where).sort([("valid_from", -1), ("_id", -1)])
            past = [_version(d) async for d in cursor]
        return [current_version(current), *past]

    async def locations(
        self, sha256: str, *, include_past: bool, namespaces: Sequence[str] = ()
    ) -> list[Location]:
        within: Document = {"namespace": {"$in": list(namespaces)}} if namespaces else {}
        query: Document = {"sha256": sha256, **within}
        if not include_past:
            query["deleted_at"] = None
        with self._guard("locations"):
            found = [
                Location(namespace=d["namespace"], hostname=d["hostname"],
                         filepath=d["filepath"],
                         recorded_at=d["recorded_at"],
                         deleted_at=d.get("deleted_at"))
                async for d in self._files.find(query)
            ]  # fmt: skip
            if include_past:
                found += [
                    Location(namespace=d["namespace"], hostname=d["hostname"],
                             filepath=d["filepath"], recorded_at=d["valid_from"],
                             valid_to=d["valid_to"])
                    async for d in self._coll("file_history").find(
                        {"sha256": sha256, "deleted": False, **within}
                    )
                ]  # fmt: skip
        return sorted(found, key=lambda x: (x.namespace, x.hostname, x.filepath, x.recorded_at))

    async def totals(self, hostname: str | None, namespaces: Sequence[str] = ()) -> Totals:
        names = ("files_added", "bytes_added", "files_deleted", "bytes_deleted")
        growth_filter: Document = {} if hostname is None else {"_id.hostname": hostname}
        if namespaces:
            growth_filter["_id.namespace"] = {"$in": list(namespaces)}
        with self._guard("totals"):
            growth = [
                (
                    d["_id"]["day"],
                    d["_id"]["namespace"],
                    d["_id"]["hostname"],
                    *(int(d.get(n, 0)) for n in names),
                )
                async for d in self._coll("growth").find(growth_filter)
            ]
            counters = await self._coll("counters").find_one({"_id": "blobs"}) or {}
        return Totals(
            growth=sorted(growth),
            blob_count=int(counters.get("count", 0)),
            blob_bytes=int(counters.get("bytes", 0)),
        )

    async def duplicate_groups(
        self, hostname: str | None, top: int, namespaces: Sequence[str] = ()
    ) -> list[DuplicateGroup]:
        host: Document = {} if hostname is None else {"hostname": hostname}
        if namespaces:
            host["namespace"] = {"$in": list(namespaces)}
        groups: list[Document] = [
            {"$match": {"deleted_at": None, **host}},
            {"$group": {"_id": "$sha256", "n": {"$sum": 1}, "size": {"$max": "$file_size"}}},
            {"$match": {"n": {"$gt": 1}}},
            {"$addFields": {"wasted": {"$multiply": [{"$subtract": ["$n", 1]}, "$size"]}}},
            {"$sort": {"wasted": -1, "_id": 1}},
            {"$limit": top},
        ]
        with self._guard("duplicate_groups"):
            return [
                DuplicateGroup(d["_id"], d["n"], d["size"])
                async for d in await self._files.aggregate(groups)
            ]

    async def prune_history(self, keep_versions: int, ended_before: datetime | None) -> int:
        history = self._coll("file_history")
        dropped = 0
        with self._guard("prune_history"):
            if ended_before is not None:
                dropped += (
                    await history.delete_many({"valid_to": {"$lt": ended_before}})
                ).deleted_count
            if keep_versions > 0:
                beyond: list[Document] = [
                    {"$setWindowFields": {
                        "partitionBy": {"n": "$namespace", "h": "$hostname", "f": "$filepath"},
                        "sortBy": {"valid_to": -1, "_id": -1},
                        "output": {"n": {"$documentNumber": {}}},
                    }},
                    {"$match": {"n": {"$gt": keep_versions}}},
                    {"$project": {"_id": 1}},
                ]  # fmt: skip
                ids = [d["_id"] async for d in await history.aggregate(beyond)]
                for chunk in chunked(ids, _IN_CHUNK):
                    result = await history.delete_many({"_id": {"$in": list(chunk)}})
                    dropped += result.deleted_count
        return dropped

    # -- blobs -----------------------------------------------------------------------
    async def get_blobs(self, sha256s: Collection[str]) -> dict[str, BlobRecord]:
        hashes = list(dict.fromkeys(sha256s))
        found: dict[str, BlobRecord] = {}
        with self._guard("get_blobs"):
            for chunk in chunked(hashes, _IN_CHUNK):
                async for doc in self._blobs.find({"_id": {"$in": list(chunk)}}):
                    found[doc["_id"]] = _blob(doc)
        return found

    async def put_blobs(
        self, blobs: Sequence[BlobRecord], *, sent_by: str | None = None
    ) -> list[bool]:
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
                inserted = set(
                    (await self._blobs.bulk_write(ops, ordered=False)).upserted_ids or {}
                )
            except BulkWriteError as exc:
                refused = _duplicate_indexes(exc)
                inserted = {int(u["index"]) for u in exc.details.get("upserted", [])}
            if inserted:
                await self._count_blobs(len(inserted), sum(blobs[i].size for i in inserted))
            if sent_by is not None:
                sent = [
                    UpdateOne({"sha256": b.sha256, "namespace": sent_by},
                              {"$setOnInsert": {"since": b.stored_at}}, upsert=True)
                    for b in blobs
                ]  # fmt: skip
                await _upsert_ignoring_races(self._coll("possession"), sent)
        return [i not in refused for i in range(len(blobs))]

    async def _count_blobs(self, count: int, size: int) -> None:
        await self._coll("counters").update_one(
            {"_id": "blobs"}, {"$inc": {"count": count, "bytes": size}}, upsert=True
        )

    async def set_blob_state(self, sha256: str, state: BlobState) -> bool:
        with self._guard("set_blob_state"):
            result = await self._blobs.update_one({"_id": sha256}, {"$set": {"state": state.value}})
        return result.matched_count > 0

    async def delete_blob(self, sha256: str) -> bool:
        with self._guard("delete_blob"):
            await self._coll("possession").delete_many({"sha256": sha256})
            doc = await self._blobs.find_one_and_delete({"_id": sha256})
            if doc is not None:
                await self._count_blobs(-1, -int(doc["size"]))
        return doc is not None

    async def delete_unreferenced_blob(self, sha256: str, *, by_history: bool = True) -> bool:
        # No transaction spans the collections: checked, deleted, checked again, and put
        # back whole (sender and possession) if a file recorded the content meanwhile.
        if await self.is_referenced(sha256, by_history=by_history):
            return False
        with self._guard("delete_unreferenced_blob"):
            held = [doc async for doc in self._coll("possession").find({"sha256": sha256})]
            doc = await self._blobs.find_one({"_id": sha256})
        if doc is None or not await self.delete_blob(sha256):
            return False
        if not await self.is_referenced(sha256, by_history=by_history):
            return True
        with self._guard("delete_unreferenced_blob"):
            try:
                await self._blobs.insert_one(doc)
            except DuplicateKeyError:  # recorded afresh meanwhile: that record stands
                pass
            else:
                await self._count_blobs(1, int(doc["size"]))
            await _upsert_ignoring_races(self._coll("possession"), [
                UpdateOne({"sha256": d["sha256"], "namespace": d["namespace"]},
                          {"$setOnInsert": {"since": d["since"]}}, upsert=True)
                for d in held
            ])  # fmt: skip
        return False

    async def count_live(self, namespace: str, locations: Collection[tuple[str, str]]) -> int:
        projection = {"deleted_at": 1}
        with self._guard("count_live"):
            return sum(
                [d.get("deleted_at") is None async for d in
                 self._at(namespace, list(dict.fromkeys(locations)), projection)]
            )  # fmt: skip

    async def add_possession(self, namespace: str, sha256s: Collection[str], now: datetime) -> None:
        ops = [
            UpdateOne({"sha256": sha, "namespace": namespace},
                      {"$setOnInsert": {"since": now}}, upsert=True)
            for sha in dict.fromkeys(sha256s)
        ]  # fmt: skip
        with self._guard("add_possession"):
            await _upsert_ignoring_races(self._coll("possession"), ops)

    async def possessed(
        self, namespaces: Sequence[str], sha256s: Collection[str]
    ) -> dict[str, datetime]:
        hashes = list(dict.fromkeys(sha256s))
        found: dict[str, datetime] = {}
        if not hashes or not namespaces:
            return found
        with self._guard("possessed"):
            for chunk in chunked(hashes, _IN_CHUNK):
                query = {"sha256": {"$in": list(chunk)}, "namespace": {"$in": list(namespaces)}}
                async for doc in self._coll("possession").find(query):
                    since = found.get(doc["sha256"])
                    found[doc["sha256"]] = (
                        doc["since"] if since is None else min(since, doc["since"])
                    )
        return found

    async def held_totals(self, namespaces: Sequence[str]) -> tuple[int, int]:
        hashes: set[str] = set()
        with self._guard("held_totals"):
            query = {"namespace": {"$in": list(namespaces)}}
            async for doc in self._coll("possession").find(query, projection={"sha256": 1}):
                hashes.add(doc["sha256"])
            count, size = 0, 0
            for blob in (await self.get_blobs(hashes)).values():
                if blob.state is BlobState.present:
                    count, size = count + 1, size + blob.size
        return count, size

    async def list_blobs(self, *, after: str | None = None, limit: int = 1000) -> list[BlobRecord]:
        check_limit(limit)
        with self._guard("list_blobs"):
            cursor = (
                self._blobs.find({"_id": {"$gt": after or ""}}).sort("_id", ASCENDING).limit(limit)
            )
            return [_blob(doc) async for doc in cursor]

    async def is_referenced(
        self, sha256: str, *, by_history: bool = True, namespaces: Sequence[str] = ()
    ) -> bool:
        live: Document = {} if by_history else {"deleted_at": None}
        within: Document = {"namespace": {"$in": list(namespaces)}} if namespaces else {}
        where = {"sha256": sha256, **within}
        with self._guard("is_referenced"):
            if await self._files.find_one({**where, **live}, projection={"_id": 1}):
                return True
            return by_history and bool(
                await self._coll("file_history").find_one(where, projection={"_id": 1})
            )

    # -- API keys --------------------------------------------------------------------
    async def add_api_key(
        self,
        *,
        key_hash: str,
        name: str,
        description: str | None,
        scope: Scope,
        created_at: datetime,
        hosts: Sequence[str] = (),
        expires_at: datetime | None = None,
        grants: Mapping[str, Scope] | None = None,
    ) -> ApiKeyRecord:
        doc: Document = {
            "key_hash": key_hash, "name": name, "description": description,
            "scope": scope.value, "created_at": created_at, "last_used_at": None,
            "is_active": True, "hosts": list(hosts), "expires_at": expires_at,
            # Pairs, not a document: a namespace may hold a "." (a path in a field name).
            "grants": [[k, v.value] for k, v in (grants or {}).items()],
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

    async def touch_api_key(self, key_id: str, when: datetime, ip: str | None) -> None:
        oid = _object_id(key_id)
        if oid is not None:
            with self._guard("touch_api_key"):
                await self._keys.update_one(
                    {"_id": oid}, {"$set": {"last_used_at": when, "last_used_ip": ip}}
                )

    async def expire_api_key(self, key_id: str, when: datetime, *, replaced_by: str) -> bool:
        oid = _object_id(key_id)
        if oid is None:
            return False
        with self._guard("expire_api_key"):
            result = await self._keys.update_one(
                {"_id": oid, "is_active": True, "replaced_by": None},
                {"$set": {"expires_at": when, "replaced_by": replaced_by}},
            )
        return result.matched_count > 0

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

    # -- resumable uploads -------------------------------------------------------------
    async def create_upload(self, upload: Upload) -> None:
        doc = _upload_doc(upload)
        with self._guard("create_upload"):
            await self._coll("uploads").insert_one(doc)

    async def get_upload(self, upload_id: str) -> Upload | None:
        with self._guard("get_upload"):
            doc = await self._coll("uploads").find_one({"_id": upload_id})
        return None if doc is None else _upload(doc)

    async def advance_upload(
        self, upload_id: str, from_offset: int, upload: Upload, token: str | None = None
    ) -> bool:
        doc = _upload_doc(upload)
        changes = {name: doc[name] for name in PROGRESS_FIELDS}
        selector: Document = {"_id": upload_id, "offset": from_offset, "completed_at": None}
        if token is not None:
            selector["lease_token"] = token
        with self._guard("advance_upload"):
            result = await self._coll("uploads").update_one(selector, {"$set": changes})
        return result.matched_count > 0

    async def claim_upload(
        self, upload_id: str, token: str, now: datetime, until: datetime
    ) -> bool:
        free = [{"lease_until": None}, {"lease_until": {"$lte": now}}, {"lease_token": token}]
        selector = {"_id": upload_id, "$or": free}
        lease = {"$set": {"lease_token": token, "lease_until": until}}
        with self._guard("claim_upload"):
            result = await self._coll("uploads").update_one(selector, lease)
        return result.matched_count > 0

    async def release_upload(self, upload_id: str, token: str) -> None:
        lease = {"$set": {"lease_token": None, "lease_until": None}}
        with self._guard("release_upload"):
            await self._coll("uploads").update_one({"_id": upload_id, "lease_token": token}, lease)

    async def delete_uploads(self, upload_ids: Collection[str]) -> int:
        if not upload_ids:
            return 0
        with self._guard("delete_uploads"):
            result = await self._coll("uploads").delete_many({"_id": {"$in": list(upload_ids)}})
        return result.deleted_count

    async def expired_uploads(self, now: datetime, limit: int = 1000) -> list[Upload]:
        query = {"expires_at": {"$lte": now}}
        with self._guard("expired_uploads"):
            cursor = self._coll("uploads").find(query).sort("expires_at", ASCENDING)
            docs = await cursor.limit(check_limit(limit)).to_list()
        return [_upload(doc) for doc in docs]

    async def count_uploads(self) -> int:
        with self._guard("count_uploads"):
            return await self._coll("uploads").count_documents({"completed_at": None})

    # -- operations -------------------------------------------------------------------
    async def count_open_scans(self) -> int:
        with self._guard("count_open_scans"):
            return await self._coll("scans").count_documents({"state": ScanState.open.value})

    async def record_maintenance(self, run: MaintenanceRun) -> None:
        doc = {"finished_at": run.finished_at, "problems": dict(run.problems)}
        with self._guard("record_maintenance"):
            await self._coll("maintenance_runs").replace_one({"_id": run.task}, doc, upsert=True)

    async def maintenance_runs(self) -> list[MaintenanceRun]:
        with self._guard("maintenance_runs"):
            docs = await self._coll("maintenance_runs").find().sort("_id", ASCENDING).to_list()
        return [
            MaintenanceRun(doc["_id"], doc["finished_at"].astimezone(UTC), doc["problems"])
            for doc in docs
        ]


def _upload_doc(upload: Upload) -> Document:
    doc: Document = upload_to_row(upload)
    doc["_id"] = doc.pop("id")
    return doc


def _upload(doc: Document) -> Upload:
    return upload_from_row({**doc, "id": doc["_id"]}, lambda when: when.astimezone(UTC))
