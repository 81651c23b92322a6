"""API and domain models (Pydantic v2). Field names follow the PutPlace wire protocol."""

from __future__ import annotations

import functools
import ipaddress
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, Final, Literal, Self

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationInfo, model_validator

from putplace.digest import NAMESPACE_PATTERN, SHA256_PATTERN

MAX_PATH_LENGTH = 4096
MAX_NAME_LENGTH = 255
#: Largest file size accepted (2^62 bytes): every backend stores it as a 64-bit integer.
MAX_FILE_SIZE: Final = 1 << 62


def no_nul(value: str) -> str:
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    return value


Sha256Hex = Annotated[
    str,
    Field(
        pattern=SHA256_PATTERN,
        description="Lowercase hex SHA-256 of the content (64 characters).",
        examples=["e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"],
    ),
]
#: The namespace of data written before namespaces existed, and of clients that name none.
DEFAULT_NAMESPACE: Final = "default"
#: A namespace: a separate inventory (records, scans, history) that keys are granted.
Namespace = Annotated[
    str,
    Field(pattern=NAMESPACE_PATTERN, examples=["default", "team-a"],
          description="Lowercase letters, digits, `.`, `_` and `-`; at most 63."),
]  # fmt: skip
FilePath = Annotated[
    str,
    Field(min_length=1, max_length=MAX_PATH_LENGTH, examples=["/etc/hosts"]),
    AfterValidator(no_nul),
]
HostName = Annotated[
    str,
    Field(min_length=1, max_length=MAX_NAME_LENGTH, examples=["web-01"]),
    AfterValidator(no_nul),
]


def _to_utc(when: datetime) -> datetime:
    """*when* in UTC (UTC when it names no offset); ValueError when UTC has no such time
    (``9999-12-31T23:59-01:00``): MongoDB cannot store it and the search would fail."""
    if when.tzinfo is None:
        return when.replace(tzinfo=UTC)
    try:
        return when.astimezone(UTC)
    except OverflowError:
        raise ValueError("must be within years 1 to 9999 in UTC") from None


#: A time in a request: ISO 8601 or Unix seconds, UTC when no offset is given.
UtcTime = Annotated[datetime, AfterValidator(_to_utc)]
UnixTime = Annotated[float, Field(strict=True, allow_inf_nan=False, examples=[1732435200.0])]


#: Strict: JSON ``true`` or ``"12"`` is refused, not read as 1 or 12.
def _count(le: int, example: int) -> Any:
    return Field(strict=True, ge=0, le=le, examples=[example])


#: Times a datetime can show (years 1 to 9999), so every stored time can be displayed,
#: compared and applied by ``ppclient restore``.
MIN_UNIX_TIME: Final = -62_135_596_800.0
MAX_UNIX_TIME: Final = 253_402_300_799.0

#: Validation context of records read back from a store. Rules added for input after a
#: record was written (an IP address that is not one) must not make that record unreadable.
STORED: Final = {"stored": True}


@functools.lru_cache(maxsize=1024)
def _canonical_ip(value: str) -> str:
    """Empty, or an IPv4/IPv6 address in its canonical form. Cached: every record of a
    batch carries the same address, and parsing it cost a fifth of validating a record."""
    if not value:
        return value
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        raise ValueError("must be an IPv4 or IPv6 address (or empty)") from None


def _ip_address(value: str, info: ValidationInfo) -> str:
    return value if info.context is STORED else _canonical_ip(value)


class FileMetadata(BaseModel):
    """What a client reports about one file: ``POST /put_file`` body."""

    model_config = ConfigDict(extra="ignore")

    filepath: FilePath
    hostname: HostName
    ip_address: Annotated[
        str, Field(max_length=64, description="IPv4 or IPv6 address, or empty.",
                   examples=["192.0.2.10"]),
        AfterValidator(_ip_address),
    ] = ""  # fmt: skip
    sha256: Sha256Hex
    file_size: Annotated[int, _count(MAX_FILE_SIZE, 1024)]
    file_mode: Annotated[int, _count(0o7777777, 0o100644)]
    file_uid: Annotated[int, _count((1 << 32) - 1, 1000)]
    file_gid: Annotated[int, _count((1 << 32) - 1, 1000)]
    file_mtime: UnixTime
    file_atime: UnixTime
    file_ctime: UnixTime
    is_symlink: Annotated[bool, Field(strict=True)] = False
    link_target: Annotated[str | None, Field(max_length=MAX_PATH_LENGTH)] = None

    @model_validator(mode="after")
    def _input_rules(self, info: ValidationInfo) -> Self:
        # One call per record (not one per field): /put_files validates thousands.
        if info.context is STORED:
            return self
        for name in ("file_mtime", "file_atime", "file_ctime"):
            if not MIN_UNIX_TIME <= getattr(self, name) <= MAX_UNIX_TIME:
                raise ValueError(f"{name} must be between {MIN_UNIX_TIME:.0f} and "
                                 f"{MAX_UNIX_TIME:.0f} (years 1 to 9999)")  # fmt: skip
        if self.link_target is not None and "\x00" in self.link_target:
            raise ValueError("link_target must not contain NUL characters")
        return self


#: No NUL character, as a pattern pydantic's core checks without calling Python.
_NO_NUL = r"^[^\x00]*$"
_InputTime = Annotated[UnixTime, Field(ge=MIN_UNIX_TIME, le=MAX_UNIX_TIME)]


class ConstrainedFileMetadata(FileMetadata):
    """:class:`FileMetadata` with every input rule a field constraint, which pydantic
    checks in its core without calling Python: a ``POST /put_files`` batch valid whole
    took 6.7 us a record against 8.7 (2,000 records, in process). It accepts no record
    that FileMetadata refuses and reads each as FileMetadata does, but for
    ``ip_address``, which it takes as sent: the caller checks that the address is one in
    its canonical form (:func:`is_canonical_ip`, cached: a batch has one), and validates
    as FileMetadata otherwise. A refused record is validated again as FileMetadata for
    its error messages (a pattern's is no message for a person)."""

    filepath: Annotated[str, Field(min_length=1, max_length=MAX_PATH_LENGTH, pattern=_NO_NUL)]
    hostname: Annotated[str, Field(min_length=1, max_length=MAX_NAME_LENGTH, pattern=_NO_NUL)]
    ip_address: Annotated[str, Field(max_length=64)] = ""
    file_mtime: _InputTime
    file_atime: _InputTime
    file_ctime: _InputTime
    link_target: Annotated[str | None, Field(max_length=MAX_PATH_LENGTH, pattern=_NO_NUL)] = None

    @model_validator(mode="after")
    def _input_rules(self, info: ValidationInfo) -> Self:
        return self  # replaces FileMetadata's: the fields' constraints are the rules


def is_canonical_ip(value: str) -> bool:
    """Is *value* what FileMetadata keeps of it: empty, or an IP address in its canonical
    form?"""
    try:
        return _canonical_ip(value) == value
    except ValueError:
        return False


class FileRecord(FileMetadata):
    """A stored file location: one per ``(hostname, filepath)``, live or deleted.

    ``created_at``: first recorded at this location; ``updated_at``: last reported;
    ``recorded_at``: when this version (content and metadata as held now) began;
    ``deleted_at``: when a completed scan found it gone (None while live).
    """

    id: str
    created_at: datetime
    updated_at: datetime
    recorded_at: datetime
    deleted_at: datetime | None = None
    namespace: str = DEFAULT_NAMESPACE


class FileVersion(FileMetadata):
    """One state of a location over ``[valid_from, valid_to)``; ``valid_to`` is None for
    the current state. A deletion is a version with ``deleted`` set (its fields are those
    of the last live version)."""

    valid_from: datetime
    valid_to: datetime | None = None
    deleted: bool = False


class Location(BaseModel):
    """Where a content lives (or lived): ``GET /content/{sha256}/locations``."""

    namespace: str = DEFAULT_NAMESPACE
    hostname: str
    filepath: str
    recorded_at: datetime = Field(description="When this location began holding the content.")
    deleted_at: datetime | None = Field(default=None, description="When the file was deleted.")
    valid_to: datetime | None = Field(
        default=None,
        description="When the location went on to hold other content (a past version).",
    )


class ScanState(StrEnum):
    open = "open"
    completed = "completed"
    abandoned = "abandoned"


class ScanRecord(BaseModel):
    """One client run over one root of one host."""

    model_config = ConfigDict(populate_by_name=True, serialize_by_alias=True)

    id: str = Field(alias="scan_id")
    namespace: str = DEFAULT_NAMESPACE
    hostname: str
    root: str
    excludes: list[str]
    started_at: datetime
    finished_at: datetime | None = None
    state: ScanState = ScanState.open
    deleted: int = Field(0, description="Records this scan marked deleted when completed.")
    # Read as the scan opens, not in the same transaction as it: a record committed
    # meanwhile, stamped before the scan began, and not seen by the walk, is kept (not
    # marked deleted) until the next scan of the root. Never the other way round.
    had_records: bool = Field(
        True,
        description="Whether the host had live records under the root when the scan opened. "
        "Completing a scan that found none marks nothing deleted, without looking.",
    )


class BlobState(StrEnum):
    present = "present"
    quarantined = "quarantined"


class BlobRecord(BaseModel):
    """One stored content, keyed by its hash."""

    sha256: str
    size: int
    state: BlobState = BlobState.present
    stored_at: datetime


class FileResponse(FileMetadata):
    """``POST /put_file`` and ``GET /get_file`` answer: metadata plus content status."""

    model_config = ConfigDict(populate_by_name=True, serialize_by_alias=True)

    id: str = Field(alias="_id")
    has_file_content: bool
    file_uploaded_at: datetime | None = None
    upload_required: bool
    upload_url: str | None = None


class UploadResponse(BaseModel):
    message: str = Field(examples=["File content uploaded successfully"])
    sha256: str
    file_size: int
    hostname: str
    filepath: str


class Scope(StrEnum):
    """What a key may do. Each scope includes the ones before it."""

    read = "read"
    write = "write"
    admin = "admin"

    def allows(self, needed: Scope) -> bool:
        order = (Scope.read, Scope.write, Scope.admin)
        return order.index(self) >= order.index(needed)


#: Hostname patterns a key may be bound to: shell-style (``web-*``, ``db-0?``), matched
#: without regard to case, as DNS names are.
HostPattern = Annotated[
    str,
    Field(min_length=1, max_length=MAX_NAME_LENGTH, pattern=r"^[^\x00-\x20\x7f]+$",
          examples=["web-*"]),
]  # fmt: skip
MAX_KEY_HOSTS: Final = 100


class KeyStatus(StrEnum):
    active = "active"
    revoked = "revoked"
    expired = "expired"


class ApiKeyRecord(BaseModel):
    """A stored key. The key itself is never stored, only its SHA-256.

    ``hosts``: the hostname patterns whose records the key may write (empty: any host).
    ``expires_at``: when it stops working (None: never). ``replaced_by``: the key a
    rotation made in its place. ``last_used_ip``: the client address of that last use.
    """

    id: str
    key_hash: str
    name: str
    description: str | None = None
    scope: Scope
    created_at: datetime
    last_used_at: datetime | None = None
    last_used_ip: str | None = None
    is_active: bool = True
    hosts: list[str] = Field(default_factory=list)
    expires_at: datetime | None = None
    replaced_by: str | None = None
    grants: dict[str, Scope] = Field(default_factory=dict)

    def status(self, now: datetime) -> KeyStatus:
        if not self.is_active:
            return KeyStatus.revoked
        if self.expires_at is not None and now >= self.expires_at:
            return KeyStatus.expired
        return KeyStatus.active


class ApiKeyCreate(BaseModel):
    name: Annotated[
        str,
        Field(min_length=1, max_length=MAX_NAME_LENGTH, examples=["web-fleet"]),
        AfterValidator(no_nul),
    ]
    description: Annotated[str, Field(max_length=1000), AfterValidator(no_nul)] | None = None
    scope: Scope = Field(Scope.write, description="read, write or admin.")
    hosts: list[HostPattern] = Field(
        default_factory=list,
        max_length=MAX_KEY_HOSTS,
        description="Bind the key to these hostnames: it may then write records only for "
        "hosts matching one of them (`*`, `?` and `[...]` as in the shell; case does not "
        "matter). Empty: any host.",
    )
    expires_at: UtcTime | None = Field(
        default=None, description="When the key stops working (UTC when no offset is given)."
    )
    grants: dict[Namespace | Literal["*"], Scope] = Field(
        default_factory=dict,
        max_length=MAX_KEY_HOSTS,
        description="The namespaces the key may use and its scope in each (`*`: every "
        "namespace). Empty: `scope` in the `default` namespace. Admin keys use all.",
    )


class ApiKeyRotate(BaseModel):
    overlap_seconds: int = Field(
        default=86400,
        strict=True,
        ge=0,
        le=365 * 86400,
        description="How long the old key keeps working beside the new one (default a day).",
    )
    expires_at: UtcTime | None = Field(
        default=None,
        description="When the new key stops working; default: when the old key had an "
        "expiry, the same lifetime from now, else never.",
    )


class ApiKeyInfo(BaseModel):
    """A key as listed: everything but the key and its hash."""

    id: str = Field(alias="_id")
    model_config = ConfigDict(populate_by_name=True, serialize_by_alias=True)

    name: str
    description: str | None
    scope: Scope
    hosts: list[str]
    grants: dict[str, Scope]
    created_at: datetime
    expires_at: datetime | None
    last_used_at: datetime | None
    last_used_ip: str | None
    is_active: bool
    status: KeyStatus
    replaced_by: str | None

    @classmethod
    def from_record(cls, record: ApiKeyRecord, now: datetime) -> ApiKeyInfo:
        data = record.model_dump(exclude={"key_hash"})
        return cls.model_validate({**data, "status": record.status(now)})


class ApiKeyCreated(ApiKeyInfo):
    api_key: str = Field(description="The key. Shown once; store it now.")


class HealthResponse(BaseModel):
    status: str = Field(examples=["healthy"])
    database: dict[str, Any]
    storage: dict[str, Any]
    limits: dict[str, Any] = Field(
        default_factory=dict,
        description="Where rate limits, quota reservations and key revocations are shared: "
        "`process` (each process alone) or `redis`. Redis not answering is reported here "
        "(`shared: false`) but is not `degraded`: the API serves with per-process limits.",
    )


class BriefFileResponse(BaseModel):
    """``POST /put_files?brief=true``: what a client needs of each stored record."""

    model_config = ConfigDict(populate_by_name=True, serialize_by_alias=True)

    id: str = Field(alias="_id")
    upload_required: bool


class BatchItemResult(BaseModel):
    """One record's outcome in ``POST /put_files``: the /put_file answer (brief with
    ``brief=true``), or its errors."""

    index: int = Field(description="Position of the record in the request.")
    ok: bool
    file: FileResponse | BriefFileResponse | None = None
    errors: list[dict[str, Any]] | None = None


class BatchResponse(BaseModel):
    stored: int = Field(description="Records stored (inserted or updated).")
    rejected: int = Field(description="Records refused; see their `errors`.")
    results: list[BatchItemResult]


class BundleStatus(StrEnum):
    stored = "stored"
    present = "present"
    refused = "refused"


class BundleMemberResult(BaseModel):
    """One content's outcome in ``POST /bundles``."""

    sha256: str
    status: BundleStatus = Field(
        description="`stored`: verified and durable now; `present`: already stored, bytes "
        "discarded; `refused`: not stored, see `detail`."
    )
    detail: str | None = None


class BundleResponse(BaseModel):
    stored: int
    present: int
    refused: int
    results: list[BundleMemberResult] = Field(description="`results[i]` answers entry `i`.")
