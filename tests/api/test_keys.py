"""API keys: authentication on every endpoint, scopes, and ``/api_keys`` management."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from putplace.auth import generate_key, hash_key, utcnow
from putplace.config import Settings
from putplace.models import Scope
from putplace.service.stores import open_metadata
from tests.conftest import Keys, make_settings, seed_keys
from tests.support.payloads import bundle, metadata, put, store
from tests.support.servers import running_server

CONTENT = b"matrix content"
SHA = hashlib.sha256(CONTENT).hexdigest()
HOST = "db-01"  # the bound key may write web-* only


@dataclass(frozen=True)
class Call:
    """One endpoint, called with a valid request, so that any refusal is the key's."""

    method: str
    path: str
    needed: str  # scope
    names_host: bool = False  # writes records of HOST
    kwargs: dict[str, Any] = field(default_factory=dict)


def calls(scan_id: str, key_id: str, upload_id: str) -> list[Call]:
    record = metadata(CONTENT, hostname=HOST, filepath="/m")
    scan = f"/scans/{scan_id}"
    tus = {"Tus-Resumable": "1.0.0"}
    patch = {**tus, "Upload-Offset": "0", "Content-Type": "application/offset+octet-stream"}
    sha = base64.b64encode(SHA.encode()).decode()
    create = {**tus, "Upload-Length": str(len(CONTENT)), "Upload-Metadata": f"sha256 {sha}"}
    return [
        Call("POST", "/tus/", "write", False, {"headers": create}),
        Call("HEAD", f"/tus/{upload_id}", "write", False, {"headers": tus}),
        Call("PATCH", f"/tus/{upload_id}", "write", False,
             {"headers": patch, "content": CONTENT}),
        Call("DELETE", f"/tus/{upload_id}", "write", False, {"headers": tus}),
        Call("POST", "/put_file", "write", True, {"json": record}),
        Call("POST", "/put_files", "write", True, {"json": {"files": [record]}}),
        Call("POST", f"/upload_file/{SHA}?hostname={HOST}&filepath=/m", "write", True,
             {"files": {"file": CONTENT}}),
        Call("POST", "/scans", "write", True, {"json": {"hostname": HOST, "root": "/"}}),
        Call("GET", scan, "write", True),
        Call("POST", f"{scan}/seen", "write", True, {"json": {"filepaths": ["/m"]}}),
        Call("POST", f"{scan}/abandon", "write", True),
        Call("POST", f"{scan}/complete", "write", True),
        Call("PUT", f"/blobs/{SHA}", "write", False, {"content": CONTENT}),
        Call("POST", "/bundles", "write", False,
             {"content": bundle([(SHA, CONTENT)]),
              "headers": {"Content-Type": "application/vnd.putplace.bundle"}}),
        Call("GET", f"/get_file/{SHA}", "read"),
        Call("GET", f"/download/{SHA}", "read"),
        Call("GET", "/files", "read"),
        Call("GET", f"/history?hostname={HOST}&filepath=/m", "read"),
        Call("GET", f"/content/{SHA}/locations", "read"),
        Call("GET", "/stats", "read"),
        Call("GET", "/metrics", "read"),
        Call("GET", "/api_keys", "admin"),
        Call("POST", "/api_keys", "admin", False, {"json": {"name": "made"}}),
        Call("POST", f"/api_keys/{key_id}/rotate", "admin"),
        Call("PUT", f"/api_keys/{key_id}/revoke", "admin"),
        Call("DELETE", f"/api_keys/{key_id}", "admin"),
    ]  # fmt: skip


RANK = {"read": 0, "write": 1, "admin": 2}


async def _more_keys(settings: Settings) -> dict[str, str]:
    """Keys of the kinds the fixture does not make: expired, rotated out (the overlap
    over), and bound to web-* hosts."""
    made: dict[str, str] = {}
    async with open_metadata(settings) as store:
        past = utcnow() - timedelta(seconds=1)
        for name, hosts, expires_at, grants in (
            ("expired", [], past, {}), ("rotated", [], None, {}),
            ("bound", ["web-*"], None, {}), ("successor", [], None, {}),
            ("elsewhere", [], None, {"team-x": Scope.write, "team-y": Scope.read}),
        ):  # fmt: skip
            key = generate_key()
            scope = Scope.write if hosts or grants else Scope.admin  # admin: never bound
            record = await store.add_api_key(
                key_hash=hash_key(key), name=name, description=None, scope=scope,
                created_at=utcnow(), hosts=hosts, expires_at=expires_at, grants=grants,
            )  # fmt: skip
            made[name] = key
            made[f"{name}_id"] = record.id
        await store.expire_api_key(made["rotated_id"], past, replaced_by=made["successor_id"])
    return made


def expected(kind: str, call: Call) -> int | None:
    """The refusal *kind* of key gets for *call*, or None when it is allowed. The
    "elsewhere" key is granted other namespaces than the default one every call acts on."""
    if kind in ("none", "empty", "malformed", "unknown", "revoked", "expired", "rotated"):
        return 401
    if kind == "elsewhere" and call.path == "/metrics":
        return None  # server-wide counts, no namespace's names: any read-scope key
    if kind == "elsewhere":
        # Another namespace's scan is not found (its existence is not the key's to know).
        hidden = call.path.startswith("/scans/") or (
            call.path.startswith("/tus/") and call.method != "POST"
        )
        return 404 if hidden else 403
    scope = "write" if kind == "bound" else kind
    if RANK[scope] < RANK[call.needed] or (kind == "bound" and call.names_host):
        return 403
    return None


async def _state(client: httpx.AsyncClient, admin: str) -> Any:
    headers = {"X-API-Key": admin}
    files = (await client.get("/files", params={"state": "all"}, headers=headers)).json()
    api_keys = (await client.get("/api_keys", headers=headers)).json()
    for key in api_keys:
        key.pop("last_used_at")
        key.pop("last_used_ip")
    stats = (await client.get("/stats", headers=headers)).json()
    return files, api_keys, stats


async def test_permission_matrix_every_endpoint_every_kind_of_key(
    server_url: str, keys: Keys, settings: Settings
) -> None:
    more = await _more_keys(settings)
    presented = {
        "none": None, "empty": "", "malformed": "not-a-key", "unknown": "f" * 64,
        "revoked": keys.revoked, "expired": more["expired"], "rotated": more["rotated"],
        "read": keys.read, "write": keys.write, "admin": keys.admin, "bound": more["bound"],
        "elsewhere": more["elsewhere"],
    }  # fmt: skip
    async with httpx.AsyncClient(base_url=server_url, timeout=60) as client:
        opened = await client.post("/scans", json={"hostname": HOST, "root": "/"},
                                   headers={"X-API-Key": keys.write})  # fmt: skip
        victim = more["successor_id"]  # the key the admin endpoints act on
        # An upload of the default namespace: the "elsewhere" key is told it does not exist.
        writer = {"X-API-Key": keys.write}
        await client.post("/put_file", json=metadata(CONTENT, filepath="/u"), headers=writer)
        created = await client.post("/tus/", headers={
            **writer, "Tus-Resumable": "1.0.0", "Upload-Length": str(len(CONTENT)),
            "Upload-Metadata": "sha256 " + base64.b64encode(SHA.encode()).decode(),
        })  # fmt: skip
        upload_id = created.headers["Location"].rsplit("/", 1)[1]
        matrix = calls(opened.json()["scan_id"], victim, upload_id)
        assert {(c.method, c.path.split("?")[0]) for c in matrix} >= {
            (m.upper(), p.replace("{sha256}", SHA).replace("{scan_id}", opened.json()["scan_id"])
             .replace("{key_id}", victim).replace("{upload_id}", upload_id))
            for p, methods in (await client.get("/openapi.json")).json()["paths"].items()
            for m in methods if p not in ("/", "/health") and m != "options"
        }, "an endpoint is missing from the matrix"  # fmt: skip

        async def send(kind: str, call: Call) -> int:
            key = presented[kind]
            headers = dict(call.kwargs.get("headers", {}))
            if key is not None:
                headers["X-API-Key"] = key
            # Every call acts on the default namespace, named (else the "elsewhere" key
            # would act on its own).
            url = call.path + ("&" if "?" in call.path else "?") + "namespace=default"
            kwargs = {**call.kwargs, "headers": headers}
            return (await client.request(call.method, url, **kwargs)).status_code

        before = await _state(client, keys.admin)
        wrong = []
        for call in matrix:
            for kind in presented:
                refusal = expected(kind, call)
                if refusal is not None and (got := await send(kind, call)) != refusal:
                    wrong.append((call.method, call.path, kind, got, refusal))
        assert wrong == []
        assert await _state(client, keys.admin) == before, "a refused request changed state"

        # And each kind of key that may call an endpoint is let through.
        for call in matrix:
            for kind in ("read", "write", "admin", "bound", "elsewhere"):
                if expected(kind, call) is None:
                    assert await send(kind, call) not in (401, 403), (call.path, kind)


async def test_revoked_key_message(api: httpx.AsyncClient, keys: Keys) -> None:
    response = await api.get("/files", headers={"X-API-Key": keys.revoked})
    assert response.status_code == 401
    assert response.json() == {"detail": "API key has been revoked"}


async def test_create_list_revoke_delete(api: httpx.AsyncClient, keys: Keys) -> None:
    admin = {"X-API-Key": keys.admin}
    created = await api.post(
        "/api_keys", json={"name": "ci", "description": "for CI", "scope": "read"}, headers=admin
    )
    assert created.status_code == 201
    new = created.json()
    assert re.fullmatch(r"[0-9a-f]{64}", new["api_key"])
    assert new["scope"] == "read"
    assert new["is_active"] is True

    listed = await api.get("/api_keys", headers=admin)
    assert listed.status_code == 200
    assert new["api_key"] not in listed.text
    assert "key_hash" not in listed.text
    assert [k["name"] for k in listed.json()] == ["read", "write", "admin", "revoked", "ci"]

    use = {"X-API-Key": new["api_key"]}
    assert (await api.get("/files", headers=use)).status_code == 200
    assert (await api.get("/files", headers=use)).status_code == 200
    used = {k["_id"]: k for k in (await api.get("/api_keys", headers=admin)).json()}
    assert used[new["_id"]]["last_used_at"] is not None

    revoked = await api.put(f"/api_keys/{new['_id']}/revoke", headers=admin)
    assert revoked.status_code == 200
    assert (await api.get("/files", headers=use)).status_code == 401

    deleted = await api.delete(f"/api_keys/{new['_id']}", headers=admin)
    assert deleted.status_code == 200
    assert (await api.get("/files", headers=use)).status_code == 401
    assert (await api.delete(f"/api_keys/{new['_id']}", headers=admin)).status_code == 404
    names = [k["name"] for k in (await api.get("/api_keys", headers=admin)).json()]
    assert "ci" not in names


async def test_key_management_rejects_bad_input(api: httpx.AsyncClient, keys: Keys) -> None:
    admin = {"X-API-Key": keys.admin}
    for bad in ({}, {"name": ""}, {"name": "x" * 300}, {"name": "x", "scope": "root"}):
        assert (await api.post("/api_keys", json=bad, headers=admin)).status_code == 422
    for missing in ("999999", "000000000000000000000000", "../etc", "x" * 40):
        assert (await api.put(f"/api_keys/{missing}/revoke", headers=admin)).status_code == 404
        assert (await api.delete(f"/api_keys/{missing}", headers=admin)).status_code == 404
    assert len((await api.get("/api_keys", headers=admin)).json()) == 4


async def test_read_key_reads(api: httpx.AsyncClient, keys: Keys) -> None:
    body = await store(api, b"readable")
    read = {"X-API-Key": keys.read}
    assert (await api.get(f"/get_file/{body['sha256']}", headers=read)).status_code == 200
    assert (await api.get(f"/download/{body['sha256']}", headers=read)).content == b"readable"
    assert (await api.post("/put_file", json=metadata(b"y"), headers=read)).status_code == 403


async def test_key_cache_honours_revocation_within_its_ttl(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    settings = make_settings(request, "sqlite-local", tmp_path, key_cache_seconds=1.0)
    keys = await seed_keys(settings)
    with running_server(settings) as url:
        async with httpx.AsyncClient(base_url=url) as client:
            use = {"X-API-Key": keys.write}
            assert (await client.get("/files", headers=use)).status_code == 200
            # Revoked behind the server's back (another process, or `ppserver keys revoke`).
            async with open_metadata(settings) as store:
                (record,) = [k for k in await store.list_api_keys() if k.name == "write"]
                await store.deactivate_api_key(record.id)
            assert (await client.get("/files", headers=use)).status_code == 200  # cached
            await asyncio.sleep(1.1)
            assert (await client.get("/files", headers=use)).status_code == 401

            # Revoked through this server's API: forgotten at once.
            reader = {"X-API-Key": keys.read}
            assert (await client.get("/files", headers=reader)).status_code == 200
            listed = (await client.get("/api_keys", headers={"X-API-Key": keys.admin})).json()
            (read_id,) = [k["_id"] for k in listed if k["name"] == "read"]
            revoke = await client.put(
                f"/api_keys/{read_id}/revoke", headers={"X-API-Key": keys.admin}
            )
            assert revoke.status_code == 200
            assert (await client.get("/files", headers=reader)).status_code == 401


async def test_host_bound_key_writes_only_its_hosts(api: httpx.AsyncClient, keys: Keys) -> None:
    admin = {"X-API-Key": keys.admin}
    made = await api.post("/api_keys", headers=admin,
                          json={"name": "web", "hosts": ["web-*", "Mail"]})  # fmt: skip
    assert made.status_code == 201
    assert made.json()["hosts"] == ["mail", "web-*"]
    bound = {"X-API-Key": made.json()["api_key"]}
    for host in ("web-01", "WEB-02", "mail"):
        assert (await put(api, metadata(b"ok", hostname=host), headers=bound)).status_code == 201
    refused = await put(api, metadata(b"no", hostname="db-01"), headers=bound)
    assert refused.status_code == 403
    assert refused.json()["detail"] == (
        "This API key may write records only for hosts matching mail, web-*; not for 'db-01'"
    )
    # A batch with one foreign record is refused whole: nothing of it is stored.
    batch = [metadata(b"a", hostname="web-03"), metadata(b"b", hostname="db-01")]
    assert (await api.post("/put_files", json={"files": batch}, headers=bound)).status_code == 403
    hosts = {f["hostname"] for f in (await api.get("/files", headers=admin)).json()}
    assert hosts == {"web-01", "WEB-02", "mail"}
    # Reading is not bound: the key reads what its scope allows.
    assert (await api.get("/files", params={"hostname": "web-01"}, headers=bound)).json()


async def test_expiry_and_rotation(api: httpx.AsyncClient, keys: Keys) -> None:
    admin = {"X-API-Key": keys.admin}
    soon = datetime.now(UTC) + timedelta(seconds=1.5)
    past = (await api.post("/api_keys", headers=admin,
                           json={"name": "p", "expires_at": "2000-01-01T00:00:00Z"}))  # fmt: skip
    assert past.status_code == 400
    made = (await api.post("/api_keys", headers=admin,
                           json={"name": "ci", "scope": "read", "hosts": ["ci-*"],
                                 "expires_at": soon.isoformat()})).json()  # fmt: skip
    old = {"X-API-Key": made["api_key"]}
    assert (await api.get("/files", headers=old)).status_code == 200
    lapsing_body = {"name": "l", "expires_at": soon.isoformat()}
    lapsing = (await api.post("/api_keys", headers=admin, json=lapsing_body)).json()

    # Rotation with an overlap: both keys work; the new one has the same grants and, as the
    # old one had an expiry, the same lifetime from now.
    rotated = await api.post(f"/api_keys/{made['_id']}/rotate", headers=admin,
                             json={"overlap_seconds": 3600})  # fmt: skip
    assert rotated.status_code == 201
    new = rotated.json()
    assert (new["name"], new["scope"], new["hosts"]) == ("ci", "read", ["ci-*"])
    assert new["api_key"] != made["api_key"]
    assert new["expires_at"] is not None
    assert (await api.get("/files", headers=old)).status_code == 200
    assert (await api.get("/files", headers={"X-API-Key": new["api_key"]})).status_code == 200
    listed = {k["_id"]: k for k in (await api.get("/api_keys", headers=admin)).json()}
    assert listed[made["_id"]]["replaced_by"] == new["_id"]
    assert listed[made["_id"]]["last_used_ip"] == "127.0.0.1"
    # The overlap never outlives the old key's own expiry.
    assert listed[made["_id"]]["expires_at"] == made["expires_at"]

    await asyncio.sleep(max(0.0, (soon - datetime.now(UTC)).total_seconds()) + 0.1)
    expired = await api.get("/files", headers=old)
    assert expired.status_code == 401
    assert expired.json()["detail"].startswith(
        f"API key was rotated: use its replacement (key {new['_id']})"
    )
    plain = await api.get("/files", headers={"X-API-Key": lapsing["api_key"]})
    assert plain.status_code == 401
    assert plain.json()["detail"].startswith("API key expired at ")

    listed = {k["_id"]: k for k in (await api.get("/api_keys", headers=admin)).json()}
    assert listed[made["_id"]]["status"] == "expired"
    conflict = await api.post(f"/api_keys/{made['_id']}/rotate", headers=admin)
    assert conflict.status_code == 409

    # Without an overlap the old key stops at once.
    now_key = (await api.post("/api_keys", headers=admin, json={"name": "n"})).json()
    swapped = await api.post(f"/api_keys/{now_key['_id']}/rotate", headers=admin,
                             json={"overlap_seconds": 0})  # fmt: skip
    assert swapped.json()["expires_at"] is None
    gone = await api.get("/files", headers={"X-API-Key": now_key["api_key"]})
    assert gone.status_code == 401
    assert gone.json()["detail"].startswith(
        f"API key was rotated: use its replacement (key {swapped.json()['_id']})"
    )
    for bad in ({"overlap_seconds": -1}, {"overlap_seconds": "1"}, {"overlap_seconds": 1e9}):
        answer = await api.post(f"/api_keys/{swapped.json()['_id']}/rotate", headers=admin,
                                json=bad)  # fmt: skip
        assert answer.status_code == 422
