"""Server settings: one place, validated at start-up.

Sources, highest priority first: environment variables (``PUTPLACE_*``), a ``.env`` file in
the working directory, a TOML file (``ppserver.toml``, or the path in ``PUTPLACE_CONFIG``),
then the defaults below.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from putplace.digest import NAMESPACE_RE

DEFAULT_CONFIG_FILE = "ppserver.toml"


class LogFormat(StrEnum):
    text = "text"
    json = "json"


@dataclass(frozen=True)
class Quota:
    """A namespace's limits: live file records, and bytes of content it sent."""

    files: int | None = None
    bytes: int | None = None


_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
_QUOTA_ITEM = re.compile(r"(files|bytes)=(\d+)([kmgt]?)", re.IGNORECASE)


def _parse_quotas(value: str) -> dict[str, Quota]:
    quotas: dict[str, Quota] = {}
    for entry in filter(None, (e.strip() for e in value.split(";"))):
        namespace, _, limits = entry.partition(":")
        namespace = namespace.strip()
        if NAMESPACE_RE.fullmatch(namespace) is None:
            raise ValueError(f"not a namespace name: {namespace!r}")
        found: dict[str, int] = {}
        for item in (i.strip() for i in limits.split(",")):
            match = _QUOTA_ITEM.fullmatch(item)
            if match is None:
                raise ValueError(f"not files=N or bytes=SIZE: {item!r} (for {namespace!r})")
            kind, number, unit = match[1].lower(), match[2], match[3].upper()
            if kind == "files" and unit:
                raise ValueError(f"files=N takes a plain count: {item!r}")
            found[kind] = int(number) * _UNITS[unit]
        if namespace in quotas:
            raise ValueError(f"{namespace!r} has two quota entries")
        quotas[namespace] = Quota(**found)
    return quotas


class MetricsAccess(StrEnum):
    key = "key"
    open = "open"
    off = "off"


def _usable_cpus() -> int:
    """CPUs this process may run on: its affinity (a container's or a taskset's limit)
    where the system has one, else the machine's."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def default_workers() -> int:
    """``ppserver serve``'s worker processes unless set: one where the server may use only
    one CPU, else three. A first ingest keeps three threads of a worker busy (the event
    loop, the SQLite writer, the blob writer), which share one interpreter lock: a third
    process lets a core whose process waits for its lock run another's Python. Measured
    on the 2-core development machine (first ingests of 100,000 small files, client on
    the same machine, 20 alternated pairs): medians of 8.43 s with three workers against
    8.62 s with two, three faster in 13 pairs, and a slowest of 8.90 s against 9.61 s. Each
    worker takes about 64 MiB at rest, and holds up to its own memory budget of request
    bodies (see :mod:`putplace.service.memory`)."""
    return 1 if _usable_cpus() == 1 else 3


class Settings(BaseSettings):
    """Every server setting. Names map to ``PUTPLACE_<NAME>`` environment variables."""

    model_config = SettingsConfigDict(
        env_prefix="PUTPLACE_",
        env_file=".env",
        env_file_encoding="utf-8",
        extra="forbid",
        frozen=True,
    )

    host: str = Field("127.0.0.1", description="Address `ppserver serve` binds to.")
    port: Annotated[int, Field(ge=1, le=65535)] = Field(8000, description="TCP port to serve on.")
    workers: Annotated[int, Field(ge=1, le=256)] = Field(
        default_factory=default_workers,
        description="uvicorn worker processes for `ppserver serve` (default 3, 1 where it "
        "may use only one CPU). Without `redis_url` they share the rate limit, quota "
        "reservations and key revocations through a file `ppserver serve` makes for them.",
    )
    database_url: str = Field(
        "sqlite:///putplace-data/putplace.db",
        description="Metadata store: `sqlite:///path` or `mongodb://...` / `mongodb+srv://...`.",
    )
    database_name: str = Field("putplace", description="MongoDB database name.")
    mongo_max_pool_size: Annotated[int, Field(ge=1, le=10000)] = Field(
        100, description="MongoDB connection pool size per server process."
    )
    mongo_timeout_ms: Annotated[int, Field(ge=100, le=600_000)] = Field(
        5000, description="MongoDB server-selection and connect timeout, milliseconds."
    )
    storage_url: str = Field(
        "file://putplace-data/blobs",
        description="Blob store: `file:///abs/path`, `file://relative/path` or `s3://bucket/prefix`.",
    )
    s3_endpoint_url: str | None = Field(
        None, description="S3-compatible endpoint (MinIO, Ceph RGW, R2...). Unset for AWS."
    )
    s3_region: str | None = Field(None, description="S3 region; unset uses the AWS chain.")
    s3_sse: str | None = Field(
        None, description="Server-side encryption: `AES256` or `aws:kms`; unset for none."
    )
    s3_sse_kms_key_id: str | None = Field(None, description="KMS key id when s3_sse=aws:kms.")
    s3_allow_http: bool = Field(False, description="Allow plain-HTTP S3 endpoints (testing).")
    fsync: bool = Field(
        True, description="fsync blobs and their directory before recording them present."
    )
    max_upload_bytes: Annotated[int, Field(ge=0)] = Field(
        1 << 40, description="Largest accepted upload, bytes (default 1 TiB)."
    )
    max_batch_records: Annotated[int, Field(ge=1, le=100_000)] = Field(
        2000, description="Most records accepted by one POST /put_files."
    )
    max_bundle_files: Annotated[int, Field(ge=1, le=100_000)] = Field(
        10_000, description="Most contents accepted by one POST /bundles."
    )
    max_bundle_bytes: Annotated[int, Field(ge=1024, le=1 << 30)] = Field(
        32 * 1024 * 1024,
        description="Largest total of contents in one POST /bundles, bytes (read, verified "
        "and written 4 MiB of members at a time, a larger member alone).",
    )
    request_memory_bytes: Annotated[int, Field(ge=1024, le=1 << 40)] = Field(
        128 * 1024 * 1024,
        description="Bytes each server process holds at once for the request bodies it is "
        "handling: a bundle counts two of its largest slice of members (4 MiB, or its "
        "largest member), at most its size (before they are read; given back if they take "
        "over 10 s to arrive), a "
        "JSON body of 64 KiB or more 16 times its length (once "
        "read: what parsing and validating it takes), at most the whole budget. A request "
        "waits for room, first come first served, and gets 503 with Retry-After if none "
        "comes within 10 s. At least max_bundle_bytes.",
    )
    history_keep_versions: Annotated[int, Field(ge=0)] = Field(
        0,
        description="Past versions kept per file location by `ppserver gc --delete`, newest "
        "first; 0 keeps all.",
    )
    history_keep_days: Annotated[float, Field(ge=0)] = Field(
        0.0,
        description="`ppserver gc --delete` drops past versions that ended more than this "
        "many days ago; 0 keeps them forever.",
    )
    history_keeps_content: bool = Field(
        True,
        description="Content held only by past versions or deleted records stays stored "
        "(restorable as of a time). Off: `gc` collects content no live record holds.",
    )
    stats_cache_seconds: Annotated[float, Field(ge=0, le=86400)] = Field(
        60.0,
        description="How long GET /stats reuses the largest duplicate groups it grouped from "
        "every record (about a second per million records on SQLite), per process. 0: "
        "group them on every request.",
    )
    trust_domains: str = Field(
        "",
        description='Namespaces that share "you need not upload this" answers and '
        "downloads of each other's content: groups separated by `;`, namespaces in a group "
        "by `,` (`team-a,team-b;lab,lab-archive`). Every other namespace is its own domain: "
        "it must send content it has not sent before, even when the server holds it.",
    )
    quotas: str = Field(
        "",
        description="Limits per namespace: `NAMESPACE:files=N,bytes=SIZE` separated by `;` "
        "(`lab:files=1000000,bytes=500G;archive:bytes=2T`; SIZE in bytes or with K, M, G, "
        "T: binary units). `files`: live file records; `bytes`: content the namespace sent. "
        "A namespace not named has no limit.",
    )
    key_cache_seconds: Annotated[float, Field(ge=0, le=300)] = Field(
        5.0,
        description="How long a verified API key is cached per process. A revoked key "
        "stops working within this many seconds (at once everywhere with `redis_url`). "
        "0 disables the cache.",
    )
    redis_url: str = Field(
        "",
        description="Redis shared by every server instance (`redis://host:6379/0`): the "
        "rate limit and quota reservations hold across all instances, and a revoked key is "
        "refused by every instance at once. Empty: each process keeps its own limits. While "
        "Redis does not answer, processes fall back to their own limits (see `/health`).",
    )
    max_json_bytes: Annotated[int, Field(ge=1024)] = Field(
        64 * 1024 * 1024, description="Largest JSON request body, bytes; larger gets 413."
    )
    rate_limit_per_second: Annotated[float, Field(ge=0)] = Field(
        0.0,
        description="Requests per second allowed per API key (token bucket): in each "
        "server process, or across all of them with `redis_url`; over it, 429 with "
        "Retry-After. 0 disables the limit.",
    )
    rate_limit_burst: Annotated[int, Field(ge=1)] = Field(
        100, description="Requests a key may make at once before the rate limit applies."
    )
    upload_idle_timeout_seconds: Annotated[float, Field(gt=0)] = Field(
        60.0,
        description="An upload that sends no bytes for this long is aborted (408); nothing "
        "is stored.",
    )
    upload_expiry_seconds: Annotated[float, Field(gt=0)] = Field(
        86400.0,
        description="A resumable (tus) upload that receives no bytes for this long expires "
        "(410, then 404); its space is freed at each start of the server, every 10 "
        "minutes while it runs, and by `ppserver gc --delete`.",
    )
    metrics: MetricsAccess = Field(
        MetricsAccess.key,
        description="`GET /metrics` (Prometheus): `key` for any key with read scope, `open` "
        "for anyone (a scraper on a private network), `off` to serve none.",
    )
    cors_origins: str = Field(
        "",
        description="Comma-separated origins a browser may call the API from (tus-js-client "
        "and the like), or `*`; empty sends no CORS headers.",
    )
    keepalive_timeout_seconds: Annotated[int, Field(ge=1, le=3600)] = Field(
        5, description="Idle keep-alive connections are closed after this many seconds."
    )
    tls_cert_file: Path | None = Field(
        None, description="PEM certificate (chain) to serve HTTPS with; needs tls_key_file."
    )
    tls_key_file: Path | None = Field(None, description="PEM private key for tls_cert_file.")
    log_level: str = Field("info", description="debug, info, warning or error.")
    log_format: LogFormat = Field(
        LogFormat.text, description="`text` or `json` (one object a line)."
    )

    @model_validator(mode="after")
    def _check_request_memory(self) -> Settings:
        if self.request_memory_bytes < self.max_bundle_bytes:
            raise ValueError(
                f"request_memory_bytes ({self.request_memory_bytes}) must be at least "
                f"max_bundle_bytes ({self.max_bundle_bytes}): a bundle of the largest size "
                "accepted would never fit"
            )
        return self

    @model_validator(mode="after")
    def _check_tls(self) -> Settings:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("tls_cert_file and tls_key_file must be set together")
        for path in (self.tls_cert_file, self.tls_key_file):
            if path is not None and not path.is_file():
                raise ValueError(f"TLS file not found: {path}")
        return self

    @field_validator("database_url")
    @classmethod
    def _check_database_url(cls, value: str) -> str:
        scheme = urlsplit(value).scheme
        if scheme not in {"sqlite", "mongodb", "mongodb+srv"}:
            raise ValueError("must start with sqlite:///, mongodb:// or mongodb+srv://")
        if scheme == "sqlite" and not sqlite_path(value):
            raise ValueError(
                "sqlite URL needs a file path, e.g. sqlite:///putplace-data/putplace.db"
            )
        return value

    @field_validator("storage_url")
    @classmethod
    def _check_storage_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in {"file", "s3"}:
            raise ValueError("must start with file:// or s3://")
        if parts.scheme == "s3" and not parts.netloc:
            raise ValueError("s3 URL needs a bucket, e.g. s3://my-bucket/putplace/")
        if parts.scheme == "file" and not (parts.netloc + parts.path):
            raise ValueError("file URL needs a directory, e.g. file:///var/lib/putplace/blobs")
        return value

    @field_validator("trust_domains")
    @classmethod
    def _check_trust_domains(cls, value: str) -> str:
        grouped: set[str] = set()
        for group in value.split(";"):
            for name in filter(None, (n.strip() for n in group.split(","))):
                if NAMESPACE_RE.fullmatch(name) is None:
                    raise ValueError(f"not a namespace name: {name!r}")
                if name in grouped:  # in two groups, trust would run one way only
                    raise ValueError(f"{name!r} is in more than one trust domain")
                grouped.add(name)
        return value

    @field_validator("quotas")
    @classmethod
    def _check_quotas(cls, value: str) -> str:
        _parse_quotas(value)
        return value

    def quota(self, namespace: str) -> Quota:
        """The limits of *namespace* (none when it is not named)."""
        return self.all_quotas().get(namespace, Quota())

    def all_quotas(self) -> dict[str, Quota]:
        return _parse_quotas(self.quotas)

    def trust_domain(self, namespace: str) -> tuple[str, ...]:
        """The namespaces whose proven content *namespace* may count as its own."""
        for group in self.trust_domains.split(";"):
            names = tuple(n.strip() for n in group.split(",") if n.strip())
            if namespace in names:
                return names
        return (namespace,)

    @field_validator("log_level")
    @classmethod
    def _check_log_level(cls, value: str) -> str:
        if value.lower() not in {"debug", "info", "warning", "error"}:
            raise ValueError("must be one of debug, info, warning, error")
        return value.lower()

    @field_validator("s3_sse")
    @classmethod
    def _check_sse(cls, value: str | None) -> str | None:
        if value is not None and value not in {"AES256", "aws:kms"}:
            raise ValueError("must be AES256 or aws:kms")
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        toml_file = Path(os.environ.get("PUTPLACE_CONFIG", DEFAULT_CONFIG_FILE))
        return (
            init_settings,
            env_settings,
            dotenv_settings,
            TomlConfigSettingsSource(settings_cls, toml_file=toml_file),
        )


def sqlite_path(database_url: str) -> str:
    """The file path in ``sqlite:///relative`` or ``sqlite:////absolute``."""
    return database_url.removeprefix("sqlite://").removeprefix("/")


def file_storage_path(storage_url: str) -> Path:
    """The directory of a ``file://`` storage URL (``file:///abs`` or ``file://relative``)."""
    rest = storage_url.removeprefix("file://")
    return Path(rest)


class SettingsError(Exception):
    """A setting failed validation; the message is one line naming the setting."""


def load_settings(**overrides: Any) -> Settings:
    """Load and validate settings, turning a validation failure into a one-line error."""
    toml_file = Path(os.environ.get("PUTPLACE_CONFIG", DEFAULT_CONFIG_FILE))
    if "PUTPLACE_CONFIG" in os.environ and not toml_file.is_file():
        raise SettingsError(f"PUTPLACE_CONFIG: file not found: {toml_file}")
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        first = exc.errors()[0]
        name = ".".join(str(part) for part in first["loc"])
        if not name:  # a rule across settings
            raise SettingsError(f"invalid settings: {first['msg']}") from None
        raise SettingsError(
            f"invalid setting PUTPLACE_{name.upper()} ({name}): {first['msg']}"
        ) from None
    except ValueError as exc:  # e.g. a TOML syntax error
        raise SettingsError(f"cannot read settings: {exc}") from None
