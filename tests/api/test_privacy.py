"""Content is stored once for everyone, but no namespace learns what another holds.

A key of namespace B probes content that only namespace A sent (SECRET), and content
nobody ever sent (NEVER), through every endpoint that takes a hash or content. Every
answer must be the same for both, apart from the hash itself (timing aside: a stored
content's bytes are verified and dropped rather than written, which is faster). Then B
proves it holds SECRET by sending its bytes, and from then on is told so.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from putplace.config import Settings
from tests.conftest import Keys, make_settings, seed_keys
from tests.support.payloads import bundle, metadata, put, upload
from tests.support.servers import running_server

SECRET = b"the merger memo, which only team a holds"
NEVER = b"content that no namespace ever sent....."  # the same length
BUNDLE = {"Content-Type": "application/vnd.putplace.bundle"}
#: What differs between any two records: ids, paths and times.
VARYING = ("_id", "filepath", "recorded_at", "created_at", "updated_at")


async def make_key(api: httpx.AsyncClient, keys: Keys, grants: dict[str, str]) -> dict[str, str]:
    made = await api.post("/api_keys", json={"name": "k", "grants": grants},
                          headers={"X-API-Key": keys.admin})  # fmt: skip
    return {"X-API-Key": made.json()["api_key"]}


def same_shape(answer: httpx.Response, sha: str) -> tuple[int, Any]:
    """The answer with the probed hash, record ids and paths taken out, at any depth."""

    def strip(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items() if k not in VARYING}
        if isinstance(value, list):
            return [strip(v) for v in value]
        return value.replace(sha, "<sha>") if isinstance(value, str) else value

    try:
        body = answer.json()
    except ValueError:
        body = answer.text
    return answer.status_code, strip(body)


async def probe(api: httpx.AsyncClient, key: dict[str, str], content: bytes) -> list[Any]:
    """Everything a key without the bytes can ask about *content*'s hash."""
    sha = hashlib.sha256(content).hexdigest()
    record = metadata(content, hostname="b-host", filepath=f"/probe/{sha[:8]}")
    wrong = b"x" * len(content)  # what it sends instead of bytes it does not have
    answers = [
        await put(api, record, headers=key),
        await api.post("/put_files", json={"files": [record]}, headers=key),
        await api.post("/put_files?brief=true", json={"files": [record]}, headers=key),
        await api.get(f"/get_file/{sha}", headers=key),
        await api.get(f"/download/{sha}", headers=key),
        await api.get(f"/content/{sha}/locations?include_past=true", headers=key),
        await api.get("/files", params={"sha256": sha, "has_content": "true"}, headers=key),
        await api.put(f"/blobs/{sha}", content=wrong, headers=key),
        await api.post("/bundles", content=bundle([(sha, wrong)]), headers={**key, **BUNDLE}),
        await upload(api, record, wrong, headers=key),
    ]
    stats = (await api.get("/stats", headers=key)).json()  # content held, by count and size
    return [*(same_shape(a, sha) for a in answers),
            (stats["distinct_contents"], stats["bytes_stored"])]  # fmt: skip


async def test_no_endpoint_tells_another_namespace_what_is_stored(
    api: httpx.AsyncClient, keys: Keys
) -> None:
    team_a = await make_key(api, keys, {"team-a": "write"})
    team_b = await make_key(api, keys, {"team-b": "write"})
    record = metadata(SECRET, hostname="a-host", filepath="/memo")
    assert (await put(api, record, headers=team_a)).json()["upload_required"] is True
    assert (await upload(api, record, SECRET, headers=team_a)).status_code == 200
    assert (await put(api, record, headers=team_a)).json()["upload_required"] is False

    assert await probe(api, team_b, SECRET) == await probe(api, team_b, NEVER)
    # Another namespace's scan is not found, as a scan that never was.
    theirs = await api.post("/scans", json={"hostname": "a-host", "root": "/"}, headers=team_a)
    for scan_id in (theirs.json()["scan_id"], "999999"):
        assert (await api.get(f"/scans/{scan_id}", headers=team_b)).status_code == 404

    # /stats counts what B's namespaces sent: not A's content.
    assert (await api.get("/stats", headers=team_b)).json()["distinct_contents"] == 0

    # Proof of possession: B sends the bytes; they are verified (and dropped: stored once),
    # and answered as any upload is.
    mine = metadata(SECRET, hostname="b-host", filepath="/my-memo")
    answer = await put(api, mine, headers=team_b)
    assert answer.json()["upload_required"] is True
    sent = await api.put(f"/blobs/{mine['sha256']}", content=SECRET, headers=team_b)
    assert sent.status_code == 201
    again = (await put(api, mine, headers=team_b)).json()
    assert (again["upload_required"], again["has_file_content"]) == (False, True)
    # Uploaded when B sent it, not when A did.
    a_time = (await put(api, record, headers=team_a)).json()["file_uploaded_at"]
    # As times: a time on a whole second is written without its fraction.
    assert datetime.fromisoformat(again["file_uploaded_at"]) > datetime.fromisoformat(a_time)
    assert (await api.get("/stats", headers=team_b)).json()["distinct_contents"] == 1
    downloaded = await api.get(f"/download/{mine['sha256']}", headers=team_b)
    assert downloaded.content == SECRET
    stats = (await api.get("/stats", headers={"X-API-Key": keys.admin})).json()
    assert stats["distinct_contents"] == 1  # still stored once


@pytest.fixture
def shared(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, Keys]]:
    settings = make_settings(request, "sqlite-local", tmp_path, trust_domains="team-a,team-b")
    keys = asyncio.run(seed_keys(settings))
    with running_server(settings) as url:
        yield url, keys


async def test_one_trust_domain_shares_answers_and_content(shared: tuple[str, Keys]) -> None:
    url, keys = shared
    async with httpx.AsyncClient(base_url=url, headers={"X-API-Key": keys.write}) as api:
        team_a = await make_key(api, keys, {"team-a": "write"})
        team_b = await make_key(api, keys, {"team-b": "write"})
        outsider = await make_key(api, keys, {"lab": "write"})
        record = metadata(SECRET, hostname="a-host", filepath="/memo")
        await put(api, record, headers=team_a)
        assert (await upload(api, record, SECRET, headers=team_a)).status_code == 200
        theirs = await put(api, metadata(SECRET, filepath="/b-copy"), headers=team_b)
        assert theirs.json()["upload_required"] is False  # the same trust domain
        assert (await api.get(f"/download/{record['sha256']}", headers=team_b)).content == SECRET
        found = await api.get("/files", params={"has_content": "true"}, headers=team_b)
        assert [f["filepath"] for f in found.json()] == ["/b-copy"]
        other = await put(api, metadata(SECRET, filepath="/lab-copy"), headers=outsider)
        assert other.json()["upload_required"] is True  # another domain must send it


def test_a_namespace_is_in_one_trust_domain_at_most() -> None:
    # In two groups, trust would run one way: c could learn what a sent, through b.
    with pytest.raises(ValueError, match="'b' is in more than one trust domain"):
        Settings(trust_domains="a,b;b,c")
    assert Settings(trust_domains="a, b; c").trust_domain("b") == ("a", "b")
