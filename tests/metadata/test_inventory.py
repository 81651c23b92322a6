"""The inventory contract (versions, scans and deletions, search, counters), run unchanged
against every backend."""

from __future__ import annotations

import asyncio
import itertools
from datetime import timedelta
from typing import Any

import pytest

from putplace.metadata.base import MetadataStore
from putplace.metadata.inventory import Cursor, FileQuery, FileState, SortKey
from putplace.models import FileRecord, ScanState
from tests.metadata.conftest import OpenStore
from tests.metadata.test_conformance import at, blob, meta, put_file, sha


async def search(store: MetadataStore, page: int = 1000, **filters: Any) -> list[FileRecord]:
    """Every record the query finds, following cursors *page* records at a time."""
    query = FileQuery(**filters)
    found: list[FileRecord] = []
    cursor: Cursor | None = None
    for _ in range(100):  # every test stores far fewer records: a cursor that repeats
        batch = await store.search_files(query, cursor, page)
        assert len(batch) <= page
        found += [f.record for f in batch]
        if len(batch) < page:
            return found
        # Cursors survive their text form, as the API hands them out.
        cursor = Cursor.decode(batch[-1].cursor.encode(query.order), query.order)
    raise AssertionError(f"paging never ended: {paths(found)[:10]}...")


def paths(records: list[FileRecord]) -> list[str]:
    return [r.filepath for r in records]


# --- versions ---------------------------------------------------------------------------


async def test_a_change_keeps_the_previous_version(store: MetadataStore) -> None:
    await put_file(store, meta("h", "/a", sha256=sha(1), file_size=1), at(0))
    await put_file(store, meta("h", "/a", sha256=sha(1), file_size=1), at(5))  # unchanged
    await put_file(store, meta("h", "/a", sha256=sha(2), file_size=2), at(10))  # content
    await put_file(store, meta("h", "/a", sha256=sha(2), file_size=2, file_mode=0o100600), at(20))
    versions = await store.history("h", "/a")
    assert [(v.sha256, v.file_mode, v.valid_from, v.valid_to) for v in versions] == [
        (sha(2), 0o100600, at(20), None),
        (sha(2), 0o100644, at(10), at(20)),
        (sha(1), 0o100644, at(0), at(10)),
    ]
    assert not any(v.deleted for v in versions)
    record = await store.get_file("h", "/a")
    assert record is not None
    assert record.recorded_at == at(20)
    assert record.updated_at == at(20)


async def test_a_write_timed_before_the_version_it_replaces_never_ends_it_early(
    store: MetadataStore,
) -> None:
    """Two server processes: the one whose request came first may write second (it
    waited for the other's lock), with a time before the version it replaces began."""
    await put_file(store, meta("h", "/a", sha256=sha(1), file_size=1), at(10))
    await put_file(store, meta("h", "/a", sha256=sha(2), file_size=2), at(5))  # late
    versions = await store.history("h", "/a")
    assert [(v.sha256, v.valid_from, v.valid_to) for v in versions] == [
        (sha(2), at(10), None),
        (sha(1), at(10), at(10)),  # ended as it began, not before
    ]
    as_of = await search(store, as_of=at(10))
    assert [(r.filepath, r.sha256) for r in as_of] == [("/a", sha(2))]  # one record
    # A deletion timed before the version it ends (a completion in a lagging process).
    await put_file(store, meta("h", "/b", sha256=sha(1), file_size=1), at(10))
    record = await store.get_file("h", "/b")
    assert record is not None
    assert await store.delete_files([record], at(5)) == 1
    versions = await store.history("h", "/b")
    assert [(v.valid_from, v.valid_to, v.deleted) for v in versions] == [
        (at(10), None, True),
        (at(10), at(10), False),
    ]


async def test_access_time_and_address_alone_make_no_version(store: MetadataStore) -> None:
    await put_file(store, meta("h", "/a"), at(0))
    await put_file(store, meta("h", "/a", file_atime=1.0, ip_address="192.0.2.99"), at(5))
    versions = await store.history("h", "/a")
    assert len(versions) == 1
    assert versions[0].valid_from == at(0)
    assert versions[0].file_atime == 1.0  # the record still holds what was reported last


async def test_history_of_an_unknown_location_is_empty(store: MetadataStore) -> None:
    assert await store.history("h", "/never") == []


# --- scans and deletions ----------------------------------------------------------------


async def test_a_scan_lifecycle_finishes_once(store: MetadataStore) -> None:
    scan = await store.create_scan("h", "/srv", ["*.tmp"], at(0))
    assert (scan.state, scan.excludes, scan.started_at) == (ScanState.open, ["*.tmp"], at(0))
    assert await store.get_scan(scan.id) == scan
    assert await store.finish_scan(scan.id, ScanState.completed, 3, at(9)) is True
    assert await store.finish_scan(scan.id, ScanState.abandoned, 0, at(10)) is False
    done = await store.get_scan(scan.id)
    assert done is not None
    assert (done.state, done.deleted, done.finished_at) == (ScanState.completed, 3, at(9))
    assert await store.get_scan("nope") is None


async def test_a_scan_knows_whether_its_root_held_live_records(store: MetadataStore) -> None:
    """Only a live record of the scan's host and namespace, at or under its root, counts."""
    for host, path in [("h", "/srvx/a"), ("h", "/other"), ("g", "/srv/a")]:
        await put_file(store, meta(host, path), at(0))
    await store.put_files([meta("h", "/srv/e")], at(0), namespace="team-b")
    await put_file(store, meta("h", "/srv/was"), at(0))
    [was] = [r for r in await store.list_files(hostname="h") if r.filepath == "/srv/was"]
    assert await store.delete_files([was], at(1)) == 1
    first = await store.create_scan("h", "/srv", [], at(2))
    assert first.had_records is False
    assert (await store.get_scan(first.id)) == first
    await put_file(store, meta("h", "/srv/d/new"), at(3))
    assert (await store.create_scan("h", "/srv/", [], at(4))).had_records is True
    assert (await store.create_scan("h", "/srv/d/new", [], at(4))).had_records is True
    assert (await store.create_scan("h", "/srv/d/ne", [], at(4))).had_records is False
    assert (await store.create_scan("h", "/", [], at(4))).had_records is True
    assert (await store.create_scan("h", "/srv", [], at(4), namespace="lab")).had_records is False


async def test_a_scan_keeps_what_it_saw_by_directory(store: MetadataStore) -> None:
    for host, path in [("h", "/srv"), ("h", "/srv/a"), ("h", "/srv/b"), ("h", "/srv/d/c"),
                       ("h", "/srvx/a"), ("h", "/other"), ("g", "/srv/a")]:  # fmt: skip
        await put_file(store, meta(host, path), at(0))
    await store.put_files([meta("h", "/srv/e")], at(0), namespace="team-b")  # another inventory
    scan = await store.create_scan("h", "/srv", [], at(1))
    other = await store.create_scan("h", "/srv", [], at(1))
    await store.put_files([meta("h", "/srv/a")], at(2), scan_id=scan.id)  # sent again
    # Unchanged files named only; how many of them are live records (of its namespace).
    assert await store.mark_seen(scan, ["/srv/d/c", "/srv/gone", "/srv/e"]) == 1
    # Not /srvx, not host g, not the other namespace's /srv/e; not what the scan saw.
    assert paths(await store.unseen_under(scan, "", 100)) == ["/srv", "/srv/b"]
    # Another scan of the same root saw nothing.
    assert paths(await store.unseen_under(other, "", 100)) == [
        "/srv", "/srv/a", "/srv/b", "/srv/d/c"
    ]  # fmt: skip
    slashed = other.model_copy(update={"root": "/srv/"})
    assert paths(await store.unseen_under(slashed, "/srv/a", 2)) == ["/srv/b", "/srv/d/c"]
    theirs = await store.create_scan("h", "/srv", [], at(1), namespace="team-b")
    assert theirs.namespace == "team-b"
    assert paths(await store.unseen_under(theirs, "", 100)) == ["/srv/e"]
    await store.finish_scan(scan.id, ScanState.completed, 0, at(3))
    # What it saw is dropped with the scan.
    assert paths(await store.unseen_under(scan, "", 100)) == [
        "/srv",
        "/srv/a",
        "/srv/b",
        "/srv/d/c",
    ]


HOSTILE_NAMES = [
    "plain",
    'quote" \\ back',
    "caf%E9 100%25",
    "snow ☃ 🦀",
    "x'); DROP TABLE files; --",
    "new\nline",
    "[1, 2]",
    " lead and trail ",
    "*?[glob]",
    "a.b.c",
]


async def test_unseen_names_are_matched_exactly_in_each_directory(store: MetadataStore) -> None:
    """Hostile names, the root directory, a scan of one file, and pages: every record the
    scan did not see, and no other, in path order."""
    names = [f"{i:02d} {n}" for i, n in enumerate(HOSTILE_NAMES)]
    places = [f"/{n}" for n in names] + [f"/d{i % 3}/{n}" for i, n in enumerate(names)]
    await store.put_files([meta("h", p) for p in places], at(0))
    everything = await store.create_scan("h", "/", [], at(1))
    seen = places[::2]  # every other one, in the root and in the directories
    assert await store.mark_seen(everything, seen) == len(seen)
    # A name seen in one directory does not count as seen in another.
    await store.mark_seen(everything, [f"/d9/{names[1]}"])
    unseen = sorted(set(places) - set(seen))
    assert paths(await store.unseen_under(everything, "", 100)) == unseen
    pages: list[str] = []
    after = ""
    while page := await store.unseen_under(everything, after, 3):
        assert len(page) <= 3
        pages += paths(page)
        after = page[-1].filepath
    assert pages == unseen

    # A page holds at most *limit*, however the seen and unseen records fall.
    ordered = sorted(places)
    few = await store.create_scan("h", "/", [], at(1))
    await store.mark_seen(few, [ordered[1]])
    assert paths(await store.unseen_under(few, "", 2)) == [ordered[0], ordered[2]]

    # "//name" is in the root directory too (as split_path has it), and seen as such.
    await store.put_files([meta("h", "//double")], at(0))
    doubled = await store.create_scan("h", "/", [], at(1))
    await store.mark_seen(doubled, [*places, "//double"])
    assert await store.unseen_under(doubled, "", 100) == []

    one = places[1]
    single = await store.create_scan("h", one, [], at(1))
    assert paths(await store.unseen_under(single, "", 100)) == [one]
    await store.mark_seen(single, [one])
    assert await store.unseen_under(single, "", 100) == []


async def test_deleting_keeps_the_last_version_and_a_return_revives(store: MetadataStore) -> None:
    await put_file(store, meta("h", "/a", sha256=sha(1)), at(0))
    record = await store.get_file("h", "/a")
    assert record is not None
    assert await store.delete_files([record], at(10)) == 1
    assert await store.delete_files([record], at(11)) == 0  # already deleted
    deleted = await store.get_file("h", "/a")
    assert deleted is not None
    assert deleted.deleted_at == at(10)
    await put_file(store, meta("h", "/a", sha256=sha(1)), at(20))  # the file came back
    versions = await store.history("h", "/a")
    assert [(v.deleted, v.valid_from, v.valid_to) for v in versions] == [
        (False, at(20), None),
        (True, at(10), at(20)),
        (False, at(0), at(10)),
    ]
    back = await store.get_file("h", "/a")
    assert back is not None
    assert back.deleted_at is None
    assert back.id == record.id


async def test_a_record_reported_after_it_was_read_is_not_deleted(store: MetadataStore) -> None:
    await put_file(store, meta("h", "/a"), at(0))
    stale = await store.get_file("h", "/a")
    assert stale is not None
    await put_file(store, meta("h", "/a"), at(5))  # reported again meanwhile
    assert await store.delete_files([stale], at(10)) == 0
    now = await store.get_file("h", "/a")
    assert now is not None
    assert now.deleted_at is None


# --- search -----------------------------------------------------------------------------


@pytest.fixture
async def fleet(store: MetadataStore) -> MetadataStore:
    """Three hosts; sizes, mtimes and record times differ so every order is distinct."""
    rows = [
        ("web", "/srv/app/main.py", 300, 30.0, 1),
        ("web", "/srv/app/lib/util.py", 100, 10.0, 2),
        ("web", "/srvx/readme", 500, 50.0, 3),
        ("db", "/srv/data.bin", 900, 90.0, 4),
        ("db", "/etc/hosts", 200, 20.0, 5),
        ("mail", "/srv/app/main.py", 400, 40.0, 6),
    ]
    for host, path, size, mtime, second in rows:
        await put_file(store, meta(host, path, file_size=size, file_mtime=mtime,
                                   sha256=sha(size % 400)), at(second))  # fmt: skip
    return store


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        (
            {},
            [
                "/srv/app/main.py",
                "/srv/app/lib/util.py",
                "/srvx/readme",
                "/srv/data.bin",
                "/etc/hosts",
                "/srv/app/main.py",
            ],
        ),
        ({"hostnames": ("db", "mail")}, ["/srv/data.bin", "/etc/hosts", "/srv/app/main.py"]),
        (
            {"hostnames": ("web",), "path_prefix": "/srv"},
            ["/srv/app/main.py", "/srv/app/lib/util.py"],
        ),
        ({"path_prefix": "/srv/app/main.py"}, ["/srv/app/main.py", "/srv/app/main.py"]),
        ({"path_glob": "/srv/*/*.py"}, ["/srv/app/main.py", "/srv/app/main.py"]),
        (
            {"path_glob": "/srv/**.py"},
            ["/srv/app/main.py", "/srv/app/lib/util.py", "/srv/app/main.py"],
        ),
        ({"path_glob": "/[ed]*/*"}, ["/etc/hosts"]),
        ({"path_glob": "/[!e]*/?ata.bin"}, ["/srv/data.bin"]),
        ({"sha256": sha(100)}, ["/srv/app/lib/util.py", "/srvx/readme", "/srv/data.bin"]),
        (
            {"min_size": 300, "max_size": 500},
            ["/srv/app/main.py", "/srvx/readme", "/srv/app/main.py"],
        ),
        (
            {"mtime_after": 20.0, "mtime_before": 50.0},
            ["/srv/app/main.py", "/etc/hosts", "/srv/app/main.py"],
        ),
        (
            {"recorded_after": at(2), "recorded_before": at(4)},
            ["/srv/app/lib/util.py", "/srvx/readme"],
        ),
    ],
)
async def test_search_filters(
    fleet: MetadataStore, filters: dict[str, Any], expected: list[str]
) -> None:
    assert paths(await search(fleet, **filters)) == expected


@pytest.mark.parametrize(
    ("glob", "expected"),
    [
        ("/x/*.pdf", ["/x/a\nb.pdf"]),  # a name may hold a newline, even at its end
        ("/**/*.pdf", ["/x/a\nb.pdf", "/x/y/c.pdf"]),  # two wildcard runs
        ("/**", ["/x/a\nb.pdf", "/x/report.pdf\n", "/x/y/c.pdf"]),
        ("/*/*.pdf?", ["/x/report.pdf\n"]),
        ("/x/**/*", ["/x/y/c.pdf"]),  # "**/" needs one more "/"
        ("/x/*/*", ["/x/y/c.pdf"]),
    ],
)
async def test_globs_match_whole_names_on_every_backend(
    store: MetadataStore, glob: str, expected: list[str]
) -> None:
    for second, path in enumerate(["/x/a\nb.pdf", "/x/report.pdf\n", "/x/y/c.pdf"]):
        await put_file(store, meta("h", path), at(second))
    assert paths(await search(store, path_glob=glob)) == expected


@pytest.mark.parametrize(
    ("sort", "field"),
    [
        (SortKey.path, "filepath"),
        (SortKey.size, "file_size"),
        (SortKey.mtime, "file_mtime"),
        (SortKey.recorded, "recorded_at"),
        (SortKey.id, "id"),
    ],
)
@pytest.mark.parametrize("descending", [False, True])
async def test_search_sorts_and_pages_every_record_once(
    fleet: MetadataStore, sort: SortKey, field: str, descending: bool
) -> None:
    whole = await search(fleet, sort=sort, descending=descending)
    for page in (1, 2, 4):
        assert await search(fleet, page=page, sort=sort, descending=descending) == whole
    assert len(whole) == 6
    keys = [(getattr(r, field), r.id) if field != "id" else r.id for r in whole]
    if field == "id":  # insertion order
        assert [r.recorded_at for r in whole] == sorted(
            (r.recorded_at for r in whole), reverse=descending
        )
    else:
        assert [k[0] for k in keys] == sorted((k[0] for k in keys), reverse=descending)


async def test_search_by_content_presence_and_upload_time(fleet: MetadataStore) -> None:
    await fleet.put_blobs([blob(100, size=100, seconds=50)])  # sha(100) is stored...
    assert await search(fleet, has_content=True) == []  # ...but no namespace sent it yet
    await fleet.add_possession("default", [sha(100)], at(50))
    stored = sorted(paths(await search(fleet, has_content=True)))
    assert stored == ["/srv/app/lib/util.py", "/srv/data.bin", "/srvx/readme"]
    assert len(await search(fleet, has_content=False)) == 3
    assert len(await search(fleet, uploaded_after=at(50))) == 3
    assert await search(fleet, uploaded_before=at(50)) == []
    # A record in another namespace naming the same content has it only once that
    # namespace sends it.
    claim = meta("web", "/claimed", file_size=100, sha256=sha(100))
    await fleet.put_files([claim], at(60), namespace="other")
    assert paths(await search(fleet, has_content=False, namespaces=("other",))) == ["/claimed"]
    assert await fleet.possessed(["other"], [sha(100)]) == {}
    await fleet.add_possession("other", [sha(100), sha(100)], at(70))
    await fleet.add_possession("other", [sha(100)], at(80))  # its first time stands
    assert paths(await search(fleet, has_content=True, namespaces=("other",))) == ["/claimed"]
    # Uploaded, for a namespace, is when it sent the content.
    assert await search(fleet, uploaded_before=at(70), namespaces=("other",)) == []
    assert await fleet.possessed(["x", "other"], [sha(100), sha(7)]) == {sha(100): at(70)}
    assert await fleet.possessed(["other", "default"], [sha(100)]) == {sha(100): at(50)}
    assert await fleet.held_totals(["other"]) == (1, 100)
    assert await fleet.held_totals(["nobody"]) == (0, 0)
    await fleet.delete_blob(sha(100))  # its proofs go with it
    assert await fleet.possessed(["default", "other"], [sha(100)]) == {}


async def test_search_sees_content_by_whichever_namespace_sent_it_first(
    fleet: MetadataStore,
) -> None:
    await fleet.put_blobs([blob(100, size=100, seconds=50)], sent_by="default")
    stored = sorted(paths(await search(fleet, has_content=True)))
    assert stored == ["/srv/app/lib/util.py", "/srv/data.bin", "/srvx/readme"]
    assert len(await search(fleet, uploaded_after=at(50))) == 3
    assert await search(fleet, uploaded_before=at(50)) == []
    assert len(await search(fleet, uploaded_before=at(51))) == 3
    claim = meta("web", "/claimed", file_size=100, sha256=sha(100))
    await fleet.put_files([claim], at(60), namespace="other")
    assert paths(await search(fleet, has_content=False, namespaces=("other",))) == ["/claimed"]
    await fleet.put_blobs([blob(100, size=100, seconds=70)], sent_by="other")
    assert paths(await search(fleet, has_content=True, namespaces=("other",))) == ["/claimed"]
    assert await search(fleet, uploaded_before=at(70), namespaces=("other",)) == []
    after = await search(fleet, uploaded_after=at(70), namespaces=("other",))
    assert paths(after) == ["/claimed"]
    # Each record by its own namespace's time: default's is 50, other's 70.
    assert paths(await search(fleet, uploaded_after=at(51))) == ["/claimed"]


async def test_search_live_deleted_and_as_of(fleet: MetadataStore) -> None:
    util = await fleet.get_file("web", "/srv/app/lib/util.py")
    assert util is not None
    await fleet.delete_files([util], at(10))
    await put_file(fleet, meta("web", "/srv/app/main.py", file_size=301, sha256=sha(7)), at(20))
    web = {"hostnames": ("web",)}
    assert paths(await search(fleet, **web)) == ["/srv/app/main.py", "/srvx/readme"]
    assert paths(await search(fleet, state=FileState.deleted, **web)) == ["/srv/app/lib/util.py"]
    assert len(await search(fleet, state=FileState.all, **web)) == 3

    def sizes(records: list[FileRecord]) -> list[tuple[str, int]]:
        return sorted((r.filepath, r.file_size) for r in records)

    # Before the deletion and the change: the inventory as it was.
    assert sizes(await search(fleet, as_of=at(9), **web)) == [
        ("/srv/app/lib/util.py", 100),
        ("/srv/app/main.py", 300),
        ("/srvx/readme", 500),
    ]
    assert sizes(await search(fleet, as_of=at(15), **web)) == [
        ("/srv/app/main.py", 300),
        ("/srvx/readme", 500),
    ]
    assert sizes(await search(fleet, as_of=at(25), **web)) == [
        ("/srv/app/main.py", 301),
        ("/srvx/readme", 500),
    ]
    assert sizes(await search(fleet, as_of=at(2), **web)) == [
        ("/srv/app/lib/util.py", 100),
        ("/srv/app/main.py", 300),
    ]
    # As of a time, past versions page and sort with current ones.
    for page in (1, 2):
        found = await search(fleet, page=page, as_of=at(9), sort=SortKey.size, descending=True)
        assert [r.file_size for r in found] == [900, 500, 400, 300, 200, 100]
    ids = {r.filepath: r.id for r in await search(fleet, as_of=at(9), **web)}
    assert ids["/srv/app/main.py"] == (await search(fleet, **web))[0].id  # one location, one id


async def test_search_rejects_cursors_it_never_issued(store: MetadataStore) -> None:
    with pytest.raises(ValueError, match="invalid cursor"):
        await store.search_files(FileQuery(), Cursor(None, 0, "not-an-id"), 10)
    with pytest.raises(ValueError, match="invalid cursor"):
        Cursor.decode("garbage!", "id")


# --- locations, counters, retention -----------------------------------------------------


async def test_locations_now_and_in_the_past(store: MetadataStore) -> None:
    content = sha("c")
    await put_file(store, meta("b", "/x", sha256=content), at(0))
    await put_file(store, meta("a", "/y", sha256=content), at(1))
    await put_file(store, meta("a", "/z", sha256=content), at(2))
    await put_file(store, meta("a", "/y", sha256=sha("other")), at(5))  # changed away
    z = await store.get_file("a", "/z")
    assert z is not None
    await store.delete_files([z], at(6))
    now = await store.locations(content, include_past=False)
    assert [(x.hostname, x.filepath) for x in now] == [("b", "/x")]
    past = await store.locations(content, include_past=True)
    assert [(x.hostname, x.filepath, x.recorded_at, x.valid_to, x.deleted_at) for x in past] == [
        ("a", "/y", at(1), at(5), None),
        ("a", "/z", at(2), at(2) + timedelta(seconds=4), None),  # its live version
        ("a", "/z", at(6), None, at(6)),  # the deletion
        ("b", "/x", at(0), None, None),
    ]


async def test_totals_follow_every_write(store: MetadataStore) -> None:
    day0 = at(0).date().isoformat()
    day1 = (at(0) + timedelta(days=1)).date().isoformat()
    await put_file(store, meta("h", "/a", file_size=10, sha256=sha("x")), at(0))
    await put_file(store, meta("h", "/b", file_size=10, sha256=sha("x")), at(0))
    await put_file(store, meta("h", "/c", file_size=10, sha256=sha("x")), at(0))
    await put_file(store, meta("g", "/a", file_size=7, sha256=sha("y")), at(0))
    later = at(0) + timedelta(days=1)
    await put_file(store, meta("h", "/a", file_size=4, sha256=sha("z")), later)  # shrank
    b = await store.get_file("h", "/b")
    assert b is not None
    await store.delete_files([b], later)
    await store.put_blobs([blob("x", size=10), blob("y", size=7)])
    await store.put_blobs([blob("x", size=10)])  # already there: counted once
    totals = await store.totals(None)
    assert sorted(totals.growth) == [
        (day0, "default", "g", 1, 7, 0, 0),
        (day0, "default", "h", 3, 30, 0, 0),
        (day1, "default", "h", 0, 0, 1, 16),
    ]
    assert (totals.blob_count, totals.blob_bytes) == (2, 17)
    assert [
        (d.sha256, d.count, d.wasted_bytes) for d in await store.duplicate_groups(None, 10)
    ] == []  # /c alone
    await put_file(store, meta("g", "/dup", file_size=10, sha256=sha("x")), later)
    dupes = await store.duplicate_groups(None, 10)
    assert [(d.sha256, d.count, d.size, d.wasted_bytes) for d in dupes] == [(sha("x"), 2, 10, 10)]
    assert await store.duplicate_groups("h", 10) == []  # per host
    await put_file(store, meta("g", "/dup2", file_size=10, sha256=sha("x")), later)
    await put_file(store, meta("g", "/a", file_size=10, sha256=sha("x")), later)  # y -> x
    dupes = await store.duplicate_groups(None, 10)
    assert [(d.sha256, d.count, d.wasted_bytes) for d in dupes] == [(sha("x"), 4, 30)]
    assert [(d.count, d.wasted_bytes) for d in await store.duplicate_groups("g", 10)] == [(3, 20)]
    for path in ("/dup", "/dup2", "/a"):
        record = await store.get_file("g", path)
        assert record is not None
        await store.delete_files([record], later)
    assert await store.duplicate_groups(None, 10) == []  # /c alone holds x again
    assert {g[2] for g in (await store.totals("g")).growth} == {"g"}
    # Another namespace: counted and grouped apart, and only when asked for.
    twin = meta("g", "/c", file_size=10, sha256=sha("x"))
    await store.put_files([twin, twin.model_copy(update={"filepath": "/d"})], later,
                          namespace="team-b")  # fmt: skip
    assert [(d.count, d.wasted_bytes) for d in await store.duplicate_groups(None, 10)] == [(3, 20)]
    assert [
        (d.count, d.wasted_bytes)
        for d in await store.duplicate_groups(None, 10, namespaces=["team-b"])
    ] == [(2, 10)]
    assert await store.duplicate_groups(None, 10, namespaces=["default"]) == []
    assert (await store.totals(None, ["team-b"])).growth == [(day1, "team-b", "g", 2, 20, 0, 0)]
    await store.delete_blob(sha("y"))
    after = await store.totals(None)
    assert (after.blob_count, after.blob_bytes) == (1, 10)


async def test_prune_history_by_count_and_age(store: MetadataStore) -> None:
    for second, size in zip(range(0, 50, 10), itertools.count(1), strict=False):
        await put_file(store, meta("h", "/a", file_size=size, sha256=sha(size)), at(second))
    await put_file(store, meta("h", "/b", file_size=1, sha256=sha("b1")), at(0))
    await put_file(store, meta("h", "/b", file_size=2, sha256=sha("b2")), at(35))
    assert len(await store.history("h", "/a")) == 5
    assert await store.prune_history(2, None) == 2  # /a keeps its 2 newest past versions
    assert [v.file_size for v in await store.history("h", "/a")] == [5, 4, 3]
    assert await store.prune_history(0, at(31)) == 1  # /a's version that ended at 30
    assert [v.file_size for v in await store.history("h", "/a")] == [5, 4]
    assert [v.file_size for v in await store.history("h", "/b")] == [2, 1]
    assert await store.is_referenced(sha(3)) is False  # its versions are gone
    assert await store.is_referenced(sha(4)) is True


@pytest.mark.parametrize("descending", [False, True])
async def test_as_of_pages_through_ties_between_current_and_past(
    store: MetadataStore, descending: bool
) -> None:
    for path in ("/x", "/y", "/z"):
        await put_file(store, meta("h", path, file_size=5, sha256=sha(path)), at(0))
    await put_file(store, meta("h", "/y", file_size=6, sha256=sha("y2")), at(10))  # past: 5
    for page in (1, 2):
        found = await search(store, page=page, as_of=at(5), sort=SortKey.size,
                             descending=descending)  # fmt: skip
        assert sorted(paths(found)) == ["/x", "/y", "/z"]  # each once, the tie across sources


async def test_concurrent_changes_of_one_location_keep_every_version_once(
    open_store: OpenStore,
) -> None:
    stores = [await open_store(), await open_store()]  # as two API processes
    await asyncio.gather(*(
        put_file(stores[i % 2], meta("race", "/f", file_size=i, sha256=sha(i)), at(i))
        for i in range(1, 21)
    ))  # fmt: skip
    versions = await stores[0].history("race", "/f")
    assert sorted(v.file_size for v in versions) == list(range(1, 21))  # none lost or twice
    # Each past version ends where the next one (in the order they were applied) begins.
    starts = {v.valid_from for v in versions}
    ends = [v.valid_to for v in versions if v.valid_to is not None]
    assert len(ends) == 19
    assert set(ends) <= starts
    assert len(starts - set(ends)) == 1  # the first version alone follows none
    totals = await stores[1].totals(None)
    assert sum(row[3] - row[5] for row in totals.growth) == 1  # one live file, counted once
