"""API keys: their lifecycle (create, rotate, revoke, delete, expiry), authenticating
requests, and what a key may do (its scope, and the hosts it is bound to)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Sequence
from datetime import UTC, datetime, timedelta
from fnmatch import fnmatchcase

from putplace import telemetry
from putplace.auth import KeyCache, generate_key, hash_key, key_matches, looks_like_key, utcnow
from putplace.coordination import Coordinator
from putplace.metadata import MetadataStore
from putplace.models import (
    DEFAULT_NAMESPACE,
    ApiKeyCreate,
    ApiKeyCreated,
    ApiKeyInfo,
    ApiKeyRecord,
    KeyStatus,
    Scope,
)
from putplace.service.errors import (
    ConflictError,
    ForbiddenError,
    InvalidInputError,
    NotFoundError,
    RateLimitedError,
    UnauthenticatedError,
)

#: ``last_used_at`` (and the address) is written at most this often per key, not on every
#: request.
LAST_USED_RESOLUTION = timedelta(seconds=60)
#: Tells every process caching keys that the key with this hash changed (revoked, rotated
#: or deleted): this process at once, others at once with Redis, else within the cache TTL.
Announce = Callable[[str], Awaitable[None]]
#: A grant on every namespace.
EVERY_NAMESPACE = "*"
_RANK = (Scope.read, Scope.write, Scope.admin)


def _created(record: ApiKeyRecord, key: str, now: datetime) -> ApiKeyCreated:
    info = ApiKeyInfo.from_record(record, now)
    return ApiKeyCreated(**info.model_dump(), api_key=key)


async def _add(
    store: MetadataStore,
    template: ApiKeyCreate | ApiKeyRecord,
    expires_at: datetime | None,
    now: datetime,
) -> ApiKeyCreated:
    if expires_at is not None and expires_at <= now:
        raise InvalidInputError("expires_at must be in the future")
    if template.hosts and template.scope is Scope.admin:
        # An admin key makes keys: bound, it could make itself an unbound one.
        raise InvalidInputError("an admin key cannot be bound to hosts")
    grants = dict(template.grants)
    if Scope.admin in grants.values():
        raise InvalidInputError("a grant is read or write; admin is a scope of the whole key")
    scope = template.scope
    if grants and scope is not Scope.admin:  # the widest grant: what the routes check first
        scope = max(grants.values(), key=_RANK.index)
    key = generate_key()
    record = await store.add_api_key(
        key_hash=hash_key(key),
        name=template.name,
        description=template.description,
        scope=scope,
        created_at=now,
        # Stored lower-case: hosts are matched without regard to case.
        hosts=sorted({pattern.lower() for pattern in template.hosts}),
        expires_at=expires_at,
        grants=grants,
    )
    return _created(record, key, now)


async def create_key(store: MetadataStore, request: ApiKeyCreate) -> ApiKeyCreated:
    """Make a key, store its hash, and return the key itself (the only time it is shown)."""
    return await _add(store, request, request.expires_at, utcnow())


async def rotate_key(
    store: MetadataStore,
    key_id: str,
    overlap: timedelta,
    announce: Announce | None = None,
    expires_at: datetime | None = None,
) -> ApiKeyCreated:
    """A new key with the same name, scope and hosts; the old one keeps working for
    *overlap* more (never longer than it would have), so clients can switch without an
    outage. The new key expires at *expires_at*, or, when the old one had an expiry, after
    the same lifetime from now."""
    old = await _existing(store, key_id)
    now = utcnow()
    if (status := old.status(now)) is not KeyStatus.active:
        raise ConflictError(f"the key is {status.value}; only an active key can be rotated")
    if old.replaced_by is not None:
        raise ConflictError(f"the key was rotated already: rotate key {old.replaced_by}")
    if expires_at is None and old.expires_at is not None:
        try:
            expires_at = now + (old.expires_at - old.created_at)
        except OverflowError:
            expires_at = datetime.max.replace(tzinfo=UTC)
    created = await _add(store, old, expires_at, now)
    # Written after the new key exists, and only if the old one is still active and not
    # rotated by a concurrent request; otherwise the new key is withdrawn.
    ends = now + overlap
    if old.expires_at is not None:
        ends = min(ends, old.expires_at)
    if not await store.expire_api_key(old.id, ends, replaced_by=created.id):
        await store.delete_api_key(created.id)
        raise ConflictError("the key was revoked or rotated meanwhile")
    if announce is not None:
        await announce(old.key_hash)
    return created


async def list_keys(store: MetadataStore) -> list[ApiKeyInfo]:
    now = utcnow()
    return [ApiKeyInfo.from_record(r, now) for r in await store.list_api_keys()]


async def _existing(store: MetadataStore, key_id: str) -> ApiKeyRecord:
    record = await store.get_api_key_by_id(key_id)
    if record is None:
        raise NotFoundError("API key not found")
    return record


async def revoke_key(store: MetadataStore, key_id: str, announce: Announce | None = None) -> None:
    record = await _existing(store, key_id)
    await store.deactivate_api_key(record.id)
    if announce is not None:  # after the store says so: a cache then re-reads "revoked"
        await announce(record.key_hash)


async def delete_key(store: MetadataStore, key_id: str, announce: Announce | None = None) -> None:
    record = await _existing(store, key_id)
    await store.delete_api_key(record.id)
    if announce is not None:
        await announce(record.key_hash)


async def authenticate(
    store: MetadataStore, cache: KeyCache, key: str | None, client_ip: str | None = None
) -> ApiKeyRecord:
    """The active, unexpired key record for *key*, else :class:`UnauthenticatedError`.
    Notes when (and from which address) the key was last used."""
    if not key:
        raise UnauthenticatedError("Missing API key. Send it in the X-API-Key header.")
    if not looks_like_key(key):
        raise UnauthenticatedError("Invalid API key")
    key_hash = hash_key(key)
    record = cache.get(key_hash)
    (telemetry.KEY_CACHE_MISS if record is None else telemetry.KEY_CACHE_HIT).inc()
    if record is None:
        generation = cache.generation
        record = await store.get_api_key(key_hash)
        if record is None or not key_matches(key, record):
            raise UnauthenticatedError("Invalid API key")
        if record.is_active:
            cache.put(record, generation)
    now = utcnow()
    status = record.status(now)
    if status is KeyStatus.revoked:
        raise UnauthenticatedError("API key has been revoked")
    if status is KeyStatus.expired:
        assert record.expires_at is not None
        ended = record.expires_at.isoformat(timespec="seconds")
        if record.replaced_by is not None:
            raise UnauthenticatedError(
                f"API key was rotated: use its replacement (key {record.replaced_by}); "
                f"the old key stopped working at {ended}"
            )
        raise UnauthenticatedError(f"API key expired at {ended}")
    if record.last_used_at is None or now - record.last_used_at >= LAST_USED_RESOLUTION:
        # Awaited (once a minute per key at most) so the time is stored when we answer.
        await store.touch_api_key(record.id, now, client_ip)
        record = record.model_copy(update={"last_used_at": now, "last_used_ip": client_ip})
        cache.update(record)
    return record


async def within_rate(
    coordination: Coordinator, record: ApiKeyRecord, per_second: float, burst: int
) -> None:
    """:class:`RateLimitedError` (with the seconds to wait) when *record*'s key is over
    its rate: one bucket per key, shared by every instance that shares *coordination*."""
    wait = await coordination.take(f"key:{record.id}", per_second, burst)
    if wait:
        raise RateLimitedError("Rate limit exceeded for this API key", wait)


def authorize(record: ApiKeyRecord, needed: Scope) -> None:
    if not record.scope.allows(needed):
        raise ForbiddenError(f"This API key has '{record.scope}' scope; '{needed}' is required.")


def may_write_host(record: ApiKeyRecord, hostname: str) -> bool:
    """Whether *record* may write records of *hostname* (any host when it is not bound)."""
    if not record.hosts:
        return True
    name = hostname.lower()
    return any(fnmatchcase(name, pattern) for pattern in record.hosts)


def authorize_hosts(record: ApiKeyRecord, hostnames: Iterable[str]) -> None:
    """:class:`ForbiddenError` unless *record* may write records of every one of
    *hostnames*; checked before anything is written, so a refusal changes nothing."""
    if not record.hosts:
        return
    denied = sorted({h for h in hostnames if not may_write_host(record, h)})
    if denied:
        raise ForbiddenError(
            f"This API key may write records only for hosts matching "
            f"{', '.join(record.hosts)}; not for {denied[0]!r}"
            + (f" (and {len(denied) - 1} more)" if len(denied) > 1 else "")
        )


# -- namespaces ---------------------------------------------------------------------------


def _grants(record: ApiKeyRecord) -> dict[str, Scope]:
    """What the key may do where: its grants, or (a key made before namespaces, or
    without grants) its scope in the default namespace."""
    return record.grants or {DEFAULT_NAMESPACE: record.scope}


def scope_in(record: ApiKeyRecord, namespace: str) -> Scope | None:
    if record.scope is Scope.admin:
        return Scope.admin
    grants = _grants(record)
    return grants.get(namespace, grants.get(EVERY_NAMESPACE))


def may_use(record: ApiKeyRecord, namespace: str, needed: Scope) -> bool:
    scope = scope_in(record, namespace)
    return scope is not None and scope.allows(needed)


def authorize_namespace(record: ApiKeyRecord, namespace: str, needed: Scope) -> None:
    if not may_use(record, namespace, needed):
        raise ForbiddenError(f"This API key may not {_VERBS[needed]} namespace {namespace!r}")


_VERBS = {Scope.read: "read", Scope.write: "write to", Scope.admin: "manage"}


def home_namespace(record: ApiKeyRecord, needed: Scope, requested: str | None) -> str:
    """The one namespace a request acts on: *requested*, else the key's only namespace
    with *needed*, else ``default``; :class:`ForbiddenError` unless the key may."""
    if requested is None:
        usable = [
            n for n, s in _grants(record).items() if n != EVERY_NAMESPACE and s.allows(needed)
        ]
        only = len(usable) == 1 and record.scope is not Scope.admin
        if len(usable) > 1 and not may_use(record, DEFAULT_NAMESPACE, needed):
            raise InvalidInputError(
                f"this API key uses {len(usable)} namespaces: name one with ?namespace="
            )
        requested = usable[0] if only else DEFAULT_NAMESPACE
    authorize_namespace(record, requested, needed)
    return requested


def read_namespaces(record: ApiKeyRecord, requested: Sequence[str]) -> tuple[str, ...]:
    """The namespaces a read may see: *requested* (each of which the key must read), or
    all the key reads. Empty means every namespace (an admin key, or a ``*`` grant)."""
    if requested:
        for namespace in requested:
            authorize_namespace(record, namespace, Scope.read)
        return tuple(dict.fromkeys(requested))
    if scope_in(record, "\x00") is not None:  # a name no namespace has: only "*" or admin
        return ()
    return tuple(n for n, s in _grants(record).items() if s.allows(Scope.read))
