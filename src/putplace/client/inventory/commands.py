"""``ppclient find | locations | history | stats | duplicates``: read the inventory.

Each command has its own parser (on top of :func:`.options.base_parser`), turns its
flags into query parameters, and prints a table (default) or JSON (``--json``).
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Sequence
from typing import Any

import configargparse

from putplace.client.args import byte_size
from putplace.client.inventory import options as opt
from putplace.client.inventory.output import (
    JsonList,
    Table,
    count,
    human_size,
    mode_text,
    print_json,
    when,
)
from putplace.client.inventory.reader import MAX_PAGE, Params, ReadClient
from putplace.client.names import wire_path
from putplace.display import safe

SORT_KEYS = ("path", "size", "mtime", "recorded", "id")


def _parse(parser: Any, argv: Sequence[str]) -> Any:
    args = parser.parse_args(list(argv))
    opt.check_shared(parser, args)
    return args


def _sort_key(text: str) -> str:
    if text.removeprefix("-") not in SORT_KEYS:
        keys = ", ".join(SORT_KEYS)
        raise configargparse.ArgumentTypeError(f"sort by one of {keys} (prefix - to reverse)")
    return text


# --- find ---------------------------------------------------------------------------------


def find_parser() -> Any:
    p = opt.base_parser(
        "find",
        "List file records matching every given filter (GET /files).",
        "Times: ISO 8601 (local time unless a zone is given), Unix seconds, or an age\n"
        "such as 90m, 36h, 7d, 2w. Sizes: bytes or 4K, 8M, 1G.\n"
        "Sort descending with a leading minus, written --sort=-size.\n\n"
        "examples:\n"
        "  ppclient find --hostname web-01 --path-prefix /etc --sort path\n"
        "  ppclient find --glob '/home/*/**/*.iso' --min-size 1G --sort=-size --limit 20\n"
        "  ppclient find --sha256 <hash> --all --json",
    )
    f = p.add_argument_group("filters")
    f.add_argument("--hostname", action="append", default=[], metavar="HOST",
                   help="only this host (repeatable: any of them)")  # fmt: skip
    f.add_argument("--path-prefix", metavar="PATH",
                   help="PATH itself and everything under it as a directory")  # fmt: skip
    f.add_argument("--glob", metavar="PATTERN",
                   help="shell glob over the whole path (* and ? stop at /, ** not)")  # fmt: skip
    f.add_argument("--sha256", type=opt.sha256_arg, metavar="HASH", help="only this content")
    f.add_argument("--min-size", type=byte_size, metavar="SIZE", help="at least SIZE")
    f.add_argument("--max-size", type=byte_size, metavar="SIZE", help="at most SIZE")
    for name, what in (("mtime", "file modified"), ("recorded", "recorded"),
                       ("uploaded", "content stored")):  # fmt: skip
        f.add_argument(f"--{name}-after", type=opt.point_in_time, metavar="TIME",
                       help=f"{what} at or after TIME")  # fmt: skip
        f.add_argument(f"--{name}-before", type=opt.point_in_time, metavar="TIME",
                       help=f"{what} before TIME")  # fmt: skip
    content = f.add_mutually_exclusive_group()
    content.add_argument("--has-content", dest="has_content", action="store_const", const=True,
                         help="only files whose content the server holds")  # fmt: skip
    content.add_argument("--no-content", dest="has_content", action="store_const", const=False,
                         help="only files whose content the server lacks")  # fmt: skip
    state = f.add_mutually_exclusive_group()
    state.add_argument("--deleted", dest="state", action="store_const", const="deleted",
                       help="only records of deleted files")  # fmt: skip
    state.add_argument("--all", dest="state", action="store_const", const="all",
                       help="live and deleted records")  # fmt: skip
    f.add_argument("--as-of", type=opt.point_in_time, metavar="TIME",
                   help="the inventory as it was at TIME (live records only)")  # fmt: skip
    o = p.add_argument_group("output")
    o.add_argument("--sort", type=_sort_key, metavar="KEY",
                   help=f"{', '.join(SORT_KEYS)} (default id: oldest first)")  # fmt: skip
    o.add_argument("-r", "--reverse", action="store_true", help="reverse the --sort order")
    o.add_argument("--limit", type=opt.positive, metavar="N", help="at most N records")
    o.add_argument("--page-size", type=opt.positive, default=MAX_PAGE, metavar="N",
                   help=f"records per request (at most {MAX_PAGE}, the default)")  # fmt: skip
    o.add_argument("-l", "--long", action="store_true",
                   help="also the full hash, owner and recording time")  # fmt: skip
    return p


_VALUE_PARAMS = (
    "sha256", "min_size", "max_size", "as_of", "mtime_after", "mtime_before",
    "recorded_after", "recorded_before", "uploaded_after", "uploaded_before",
)  # fmt: skip
"""Flags sent as the query parameter of the same name when given."""


def find_params(args: Any) -> list[tuple[str, str]]:
    params: list[tuple[str, str]] = [("hostname", h) for h in args.hostname]
    if args.path_prefix is not None:
        params.append(("path_prefix", _prefix(args.path_prefix)))
    if args.glob is not None:
        params.append(("path_glob", wire_path(args.glob)))
    for name in _VALUE_PARAMS:
        if (value := getattr(args, name)) is not None:
            params.append((name, str(value)))
    if args.has_content is not None:
        params.append(("has_content", "true" if args.has_content else "false"))
    if args.state:
        params.append(("state", args.state))
    if args.sort or args.reverse:
        key = args.sort or "id"
        if args.reverse:
            key = key[1:] if key.startswith("-") else f"-{key}"
        params.append(("sort", key))
    return params


def _prefix(path: str) -> str:
    """The wire form of a path prefix, without a trailing slash (but ``/`` stays)."""
    return wire_path(path.rstrip("/") or "/")


def _record_path(record: dict[str, Any]) -> str:
    path = safe(record.get("filepath"))
    if record.get("is_symlink"):
        path += " -> " + safe(record.get("link_target"))
    return path


def find_row(record: dict[str, Any], *, long: bool, deleted: bool) -> list[str]:
    sha = safe(record.get("sha256"))
    row = [
        mode_text(record.get("file_mode"), bool(record.get("is_symlink"))),
        safe(record.get("hostname")),
        human_size(record.get("file_size")),
        when(record.get("file_mtime")),
        sha if long else sha[:12],
    ]
    if long:
        row[1:1] = [f"{record.get('file_uid')}:{record.get('file_gid')}"]
        row.append(when(record.get("recorded_at")))
    if deleted:
        row.append(when(record.get("deleted_at")))
    row.append(_record_path(record))
    return row


def find(argv: Sequence[str]) -> int:
    parser = find_parser()
    args = _parse(parser, argv)
    if args.as_of is not None and args.state:
        parser.error("--as-of shows live records only; drop --deleted/--all")
    if args.page_size > MAX_PAGE:
        parser.error(f"--page-size is at most {MAX_PAGE}")
    if args.min_size is not None and args.max_size is not None and args.min_size > args.max_size:
        parser.error("--min-size is larger than --max-size")

    def body() -> int:
        with opt.make_client(args) as client:
            pages = client.pages("/files", find_params(args), args.limit, args.page_size)
            if args.json:
                out = JsonList()
                for page in pages:
                    out.write(page)
                out.close()
                return opt.EXIT_OK
            headers = ["MODE", "HOSTNAME", "SIZE", "MODIFIED", "SHA256"]
            if args.long:
                headers[1:1] = ["OWNER"]
                headers.append("RECORDED")
            if args.state:
                headers.append("DELETED")
            table = Table([*headers, "PATH"], right=[headers.index("SIZE")])
            for page in pages:
                rows = [find_row(r, long=args.long, deleted=bool(args.state)) for r in page]
                table.write(rows)
            return opt.EXIT_OK

    return opt.run(body)


# --- locations ----------------------------------------------------------------------------


def locations(argv: Sequence[str]) -> int:
    p = opt.base_parser(
        "locations",
        "Where a content is (GET /content/{sha256}/locations): every host and path.",
    )
    p.add_argument("sha256", type=opt.sha256_arg, metavar="SHA256", help="the content's hash")
    p.add_argument("--include-past", action="store_true",
                   help="also deleted files and earlier versions that held it")  # fmt: skip
    args = _parse(p, argv)

    def body() -> int:
        with opt.make_client(args) as client:
            params = [("include_past", "true")] if args.include_past else []
            found, _ = client.get_json(f"/content/{args.sha256}/locations", params)
        if args.json:
            print_json(found)
            return opt.EXIT_OK
        headers = ["HOSTNAME", "RECORDED", "PATH"]
        if args.include_past:
            headers[2:2] = ["UNTIL", "STATE"]
            found = _past_rows(found)
        table = Table(headers)
        rows = []
        for item in found:
            row = [safe(item.get("hostname")), when(item.get("recorded_at"))]
            if args.include_past:
                row += [when(item.get("until")), item["state"]]
            rows.append([*row, safe(item.get("filepath"))])
        table.write(rows)
        return opt.EXIT_OK

    return opt.run(body)


def _past_rows(found: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Locations with when and how each stopped holding the content.

    A deletion is recorded as a version of its own (``deleted_at`` set), and the version
    before it ends (``valid_to``) at that moment: the two are shown as one line, held
    from the first's ``recorded_at`` until deleted, rather than "replaced" and then
    "deleted" at the same instant.
    """
    deletions = {
        (item.get("hostname"), item.get("filepath"), item["deleted_at"])
        for item in found
        if item.get("deleted_at")
    }
    ended_by_deletion = {
        (item.get("hostname"), item.get("filepath"), item.get("valid_to"))
        for item in found
        if item.get("valid_to") and not item.get("deleted_at")
    } & deletions
    rows = []
    for item in found:
        place = (item.get("hostname"), item.get("filepath"))
        if item.get("deleted_at"):
            if (*place, item["deleted_at"]) in ended_by_deletion:
                continue  # shown with the version it ended
            rows.append({**item, "until": item["deleted_at"], "state": "deleted"})
        elif item.get("valid_to"):
            deleted = (*place, item["valid_to"]) in ended_by_deletion
            rows.append({**item, "until": item["valid_to"],
                         "state": "deleted" if deleted else "replaced"})  # fmt: skip
        else:
            rows.append({**item, "until": None, "state": "live"})
    return rows


# --- history ------------------------------------------------------------------------------


def history(argv: Sequence[str]) -> int:
    p = opt.base_parser(
        "history",
        "Every recorded version of one file, newest first (GET /history).",
    )
    p.add_argument("path", metavar="PATH", help="the file's path as recorded")
    p.add_argument("--hostname", default=socket.gethostname(), metavar="HOST",
                   help="the host it is on (default: this host)")  # fmt: skip
    args = _parse(p, argv)

    def body() -> int:
        with opt.make_client(args) as client:
            params = [("hostname", args.hostname), ("filepath", wire_path(args.path))]
            versions, _ = client.get_json("/history", params)
        if args.json:
            print_json(versions)
            return opt.EXIT_OK
        table = Table(["FROM", "UNTIL", "STATE", "MODE", "SIZE", "MODIFIED", "CONTENT"], right=[4])
        table.write([_version_row(v) for v in versions])
        return opt.EXIT_OK

    return opt.run(body)


def _version_row(version: dict[str, Any]) -> list[str]:
    link = bool(version.get("is_symlink"))
    deleted = bool(version.get("deleted"))
    content = "-> " + safe(version.get("link_target")) if link else safe(version.get("sha256"))
    return [
        when(version.get("valid_from")),
        when(version.get("valid_to")),
        "deleted" if deleted else ("current" if not version.get("valid_to") else "replaced"),
        "-" if deleted else mode_text(version.get("file_mode"), link),
        "-" if deleted else human_size(version.get("file_size")),
        "-" if deleted else when(version.get("file_mtime")),
        "-" if deleted else content,
    ]


# --- stats and duplicates -----------------------------------------------------------------


def _stats_parser(command: str, description: str) -> Any:
    p = opt.base_parser(command, description)
    p.add_argument("--hostname", metavar="HOST", help="only this host's files")
    p.add_argument("--top", type=opt.positive, default=10, metavar="N",
                   help="how many duplicate groups (default 10)")  # fmt: skip
    return p


def _stats_params(args: Any, bucket: str | None) -> Params:
    params = [("top", str(args.top))]
    if args.hostname:
        params.append(("hostname", args.hostname))
    if bucket:
        params.append(("bucket", bucket))
    return params


def stats(argv: Sequence[str]) -> int:
    p = _stats_parser("stats", "Totals, hosts, duplicated content and growth (GET /stats).")
    p.add_argument("--bucket", choices=("day", "week", "month"), default="day",
                   help="growth per day, week or month (default day)")  # fmt: skip
    args = _parse(p, argv)

    def body() -> int:
        with opt.make_client(args) as client:
            answer, _ = client.get_json("/stats", _stats_params(args, args.bucket))
        if args.json:
            print_json(answer)
            return opt.EXIT_OK
        _print_stats(answer, args.bucket)
        return opt.EXIT_OK

    return opt.run(body)


def _print_stats(answer: dict[str, Any], bucket: str) -> None:
    totals = [
        ("Files", count(answer.get("files"))),
        ("Bytes referenced", _bytes(answer.get("bytes_referenced"))),
        ("Distinct contents stored", count(answer.get("distinct_contents"))),
        ("Bytes stored", _bytes(answer.get("bytes_stored"))),
        ("Bytes saved by deduplication", _bytes(answer.get("bytes_saved"))),
    ]
    width = max(len(label) for label, _ in totals) + 1
    for label, value in totals:
        print(f"{label + ':':<{width}}  {value}")
    sections: list[tuple[str, list[str], list[int], Callable[[dict[str, Any]], list[str]]]] = [
        ("Hosts", ["HOSTNAME", "FILES", "BYTES"], [1, 2],
         lambda h: [safe(h.get("hostname")), count(h.get("files")), human_size(h.get("bytes"))]),
        ("Most wasteful duplicates", ["WASTED", "COPIES", "SIZE", "SHA256"], [0, 1, 2],
         _group_row),
        (f"Growth per {bucket}", ["BUCKET", "ADDED", "BYTES ADDED", "DELETED", "BYTES DELETED"],
         [1, 2, 3, 4],
         lambda g: [safe(g.get("bucket")), count(g.get("files_added")),
                    human_size(g.get("bytes_added")), count(g.get("files_deleted")),
                    human_size(g.get("bytes_deleted"))]),
    ]  # fmt: skip
    keys = {"Hosts": "hosts", "Most wasteful duplicates": "duplicate_groups"}
    for title, headers, right, row in sections:
        items = answer.get(keys.get(title, "growth")) or []
        print(f"\n{title}:" + ("" if items else " none"))
        Table(headers, right=right).write([row(item) for item in items])


def _bytes(value: object) -> str:
    return f"{human_size(value)} ({count(value)})" if isinstance(value, int) else "-"


def _group_row(group: dict[str, Any]) -> list[str]:
    return [
        human_size(group.get("wasted_bytes")),
        count(group.get("count")),
        human_size(group.get("size")),
        safe(group.get("sha256")),
    ]


def duplicates(argv: Sequence[str]) -> int:
    p = _stats_parser(
        "duplicates", "Contents stored once but found in many places, most wasteful first."
    )
    p.add_argument("--paths", action="store_true",
                   help="also list where each copy is (one request per group)")  # fmt: skip
    args = _parse(p, argv)

    def body() -> int:
        with opt.make_client(args) as client:
            answer, _ = client.get_json("/stats", _stats_params(args, None))
            groups: list[dict[str, Any]] = answer.get("duplicate_groups") or []
            if args.paths:
                for group in groups:
                    group["locations"] = _live_locations(client, group["sha256"], args.hostname)
        if args.json:
            print_json(groups)
            return opt.EXIT_OK
        table = Table(["WASTED", "COPIES", "SIZE", "SHA256"], right=[0, 1, 2])
        for group in groups:
            rows = [_group_row(group)]
            rows += [["", "", "", f"  {safe(loc.get('hostname'))}:{safe(loc.get('filepath'))}"]
                     for loc in group.get("locations", [])]  # fmt: skip
            table.write(rows)
        return opt.EXIT_OK

    return opt.run(body)


def _live_locations(client: ReadClient, sha256: str, hostname: str | None) -> list[Any]:
    found, _ = client.get_json(f"/content/{sha256}/locations")
    return [loc for loc in found if hostname is None or loc.get("hostname") == hostname]


COMMANDS: dict[str, Callable[[Sequence[str]], int]] = {
    "find": find,
    "locations": locations,
    "history": history,
    "stats": stats,
    "duplicates": duplicates,
}


def dispatch(name: str, argv: Sequence[str]) -> int:
    """Run ``ppclient NAME ARGV...``; a usage error is exit 2, ``--help`` exit 0."""
    command: Callable[[Sequence[str]], int]
    if name == "restore":
        from putplace.client import restore  # only restore needs the thread pool and rich

        command = restore.main
    else:
        command = COMMANDS[name]
    try:
        return command(argv)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else opt.EXIT_USAGE
