"""FastAPI dependencies: the per-process state, API-key authentication by scope, and the
one validated content-hash path parameter."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Path, Query, Request, Security
from fastapi.security import APIKeyHeader

from putplace.digest import SHA256_PATTERN
from putplace.models import ApiKeyRecord, Namespace, Scope
from putplace.server.state import AppState
from putplace.service import keys
from putplace.service.files import checked_sha256

api_key_header = APIKeyHeader(
    name="X-API-Key",
    auto_error=False,
    description="An API key from `ppserver keys create` or `POST /api_keys`.",
)


# Dependencies are ``async def`` even where they never await: FastAPI runs a plain ``def``
# dependency in a worker thread, a hop that cost more than the rest of a /put_file.
async def get_state(request: Request) -> AppState:
    state: AppState = request.app.state.putplace
    return state


State = Annotated[AppState, Depends(get_state)]


async def _sha256_path(
    sha256: Annotated[
        str,
        Path(
            description="Lowercase hex SHA-256 of the content.",
            # Documented only: a mismatch is a 400 from checked_sha256 (as existing clients
            # expect), not FastAPI's 422.
            json_schema_extra={"pattern": SHA256_PATTERN},
            examples=["e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"],
        ),
    ],
) -> str:
    return checked_sha256(sha256)


#: A content hash in the path, refused with 400 unless it is 64 lowercase hex digits.
Sha256Path = Annotated[str, Depends(_sha256_path)]


@dataclass(frozen=True)
class Caller:
    """Who is asking (an authenticated key with the scope the route needs) and the
    process state to answer with: one dependency, because each one FastAPI solves costs
    about as much per request as storing a record does."""

    state: AppState
    key: ApiKeyRecord

    def namespace(self, needed: Scope, requested: str | None) -> str:
        """The one namespace the request acts on (403 unless the key may)."""
        return keys.home_namespace(self.key, needed, requested)

    def readable(self, requested: list[str] | None) -> tuple[str, ...]:
        """The namespaces a read may see (403 for a requested one the key may not read);
        empty: every namespace."""
        return keys.read_namespaces(self.key, requested or ())


async def authorized(request: Request, key: str | None, scope: Scope) -> Caller:
    """The caller presenting *key*, with a scope that includes *scope*, else 401/403/429.
    What every authenticated route runs, as a dependency (:func:`require`) or called."""
    state: AppState = request.app.state.putplace
    client_ip = request.client.host if request.client else None
    record = await keys.authenticate(state.stores.metadata, state.key_cache, key, client_ip)
    request.state.api_key_id = record.id  # for the access log; never the key itself
    settings = state.settings
    await keys.within_rate(
        state.stores.coordination,
        record,
        settings.rate_limit_per_second,
        settings.rate_limit_burst,
    )
    keys.authorize(record, scope)
    return Caller(state, record)


def require(scope: Scope) -> Callable[..., Awaitable[Caller]]:
    """Dependency: the caller, with a key whose scope includes *scope*, else 401/403/429."""

    async def dependency(
        request: Request, key: Annotated[str | None, Security(api_key_header)]
    ) -> Caller:
        return await authorized(request, key, scope)

    dependency.__name__ = f"require_{scope.value}"
    return dependency


NAMESPACE_DESCRIPTION = (
    "The namespace to act on. Default: the key's only namespace, else `default`."
)
#: The namespace a request acts on; default: the key's only one, else ``default``.
NamespaceParam = Annotated[Namespace | None, Query(description=NAMESPACE_DESCRIPTION)]
#: The namespaces a read may see; default: every namespace the key reads.
NamespacesParam = Annotated[
    list[Namespace] | None,
    Query(max_length=100, description="Only these namespaces (repeatable). Default: every "
          "namespace the key may read."),
]  # fmt: skip

Reader = Annotated[Caller, Depends(require(Scope.read))]
Writer = Annotated[Caller, Depends(require(Scope.write))]
Admin = Annotated[Caller, Depends(require(Scope.admin))]
