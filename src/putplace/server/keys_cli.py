"""``ppserver keys``: create, list, rotate, revoke and delete API keys from the server host
(the same service calls as ``/api_keys``)."""

from __future__ import annotations

import argparse
import json
import re
import sys
from datetime import datetime, timedelta
from typing import Any

from putplace.auth import utcnow
from putplace.display import safe
from putplace.metadata import MetadataStore
from putplace.models import ApiKeyCreate, ApiKeyCreated, ApiKeyInfo, Scope
from putplace.service import keys
from putplace.service.errors import ConflictError, InvalidInputError, NotFoundError
from putplace.service.keys import Announce

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DURATION = re.compile(r"(\d+)([smhdw]?)")


def duration(text: str) -> timedelta:
    """``90d``, ``12h``, ``30m``, ``2w`` or seconds."""
    match = _DURATION.fullmatch(text.strip().lower())
    if match is None:
        raise argparse.ArgumentTypeError(f"not a duration (like 90d, 12h, 30m): {text!r}")
    seconds = int(match.group(1)) * _UNITS[match.group(2) or "s"]
    if seconds > 100 * 365 * 86400:
        raise argparse.ArgumentTypeError(f"longer than a hundred years: {text!r}")
    return timedelta(seconds=seconds)


def grant(text: str) -> tuple[str, Scope]:
    """``NAMESPACE=SCOPE`` (``team-a=write``, ``*=read``)."""
    namespace, _, scope = text.partition("=")
    if scope not in (Scope.read.value, Scope.write.value) or not namespace:
        raise argparse.ArgumentTypeError(f"not NAMESPACE=read|write: {text!r}")
    return namespace, Scope(scope)


def add_parser(commands: Any) -> None:
    """The ``keys`` command and its actions."""
    actions = commands.add_parser("keys", help="manage API keys").add_subparsers(
        dest="keys_command", required=True, metavar="ACTION"
    )
    create = actions.add_parser("create", help="create a key and print it once")
    create.add_argument("--name", required=True)
    create.add_argument("--description")
    create.add_argument("--scope", choices=[s.value for s in Scope], default=Scope.write.value)
    create.add_argument(
        "--host", dest="hosts", action="append", default=[], metavar="PATTERN",
        help="bind the key to hosts matching PATTERN (shell-style, e.g. web-*; repeatable): "
        "it may then write records only for them",
    )  # fmt: skip
    create.add_argument("--expires-in", type=duration, metavar="DURATION",
                        help="the key stops working after this long (90d, 12h, ...)")  # fmt: skip
    create.add_argument(
        "--grant", dest="grants", action="append", default=[], type=grant,
        metavar="NAMESPACE=SCOPE",
        help="use NAMESPACE with SCOPE (read or write; * for every namespace; repeatable). "
        "Default: --scope in the default namespace",
    )  # fmt: skip
    create.add_argument("--json", action="store_true", help="print one JSON object")
    listing = actions.add_parser("list", help="list keys (never the keys themselves)")
    listing.add_argument("--json", action="store_true", help="print a JSON array")
    rotate = actions.add_parser(
        "rotate", help="make a new key with the same grants; the old one works for --overlap"
    )
    rotate.add_argument("key_id")
    rotate.add_argument("--overlap", type=duration, default=timedelta(days=1), metavar="DURATION",
                        help="how long the old key keeps working (default 1d)")  # fmt: skip
    rotate.add_argument("--expires-in", type=duration, metavar="DURATION",
                        help="the new key stops working after this long (default: the old "
                        "key's lifetime, if it had one)")  # fmt: skip
    rotate.add_argument("--json", action="store_true", help="print one JSON object")
    for action, text in (("revoke", "revoke a key by id"), ("delete", "delete a key by id")):
        actions.add_parser(action, help=text).add_argument("key_id")


async def run(store: MetadataStore, args: argparse.Namespace, announce: Announce) -> int:
    try:
        return await _run(store, args, announce)
    except NotFoundError:
        print(f"ppserver: no API key with id {safe(args.key_id)}", file=sys.stderr)
    except (ConflictError, InvalidInputError) as exc:
        print(f"ppserver: {exc}", file=sys.stderr)
    return 1


def _expiry(args: argparse.Namespace) -> datetime | None:
    return None if args.expires_in is None else utcnow() + args.expires_in


async def _run(store: MetadataStore, args: argparse.Namespace, announce: Announce) -> int:
    command = args.keys_command
    if command == "create":
        request = ApiKeyCreate(
            name=args.name, description=args.description, scope=Scope(args.scope),
            hosts=args.hosts, expires_at=_expiry(args), grants=dict(args.grants),
        )  # fmt: skip
        _print_created(await keys.create_key(store, request), args.json)
    elif command == "rotate":
        created = await keys.rotate_key(
            store, args.key_id, args.overlap, announce, expires_at=_expiry(args)
        )
        _print_created(created, args.json)
        if not args.json:
            ends = (utcnow() + args.overlap).isoformat(timespec="seconds")
            print(f"Key {safe(args.key_id)} keeps working until {ends} at the latest.")
    elif command == "list":
        _print_list(await keys.list_keys(store), args.json)
    elif command == "revoke":
        await keys.revoke_key(store, args.key_id, announce)
        print(f"Revoked API key {safe(args.key_id)}.")
    else:
        await keys.delete_key(store, args.key_id, announce)
        print(f"Deleted API key {safe(args.key_id)}.")
    return 0


def _print_created(created: ApiKeyCreated, as_json: bool) -> None:
    if as_json:
        print(created.model_dump_json())
        return
    bound = f", hosts {safe(', '.join(created.hosts))}" if created.hosts else ""
    expires = created.expires_at.isoformat(timespec="seconds") if created.expires_at else "never"
    print(f"Created {created.scope} key '{safe(created.name)}' (id {created.id}{bound}; "
          f"expires {expires}).")  # fmt: skip
    print("Store it now; it is not shown again:")
    print(created.api_key)


def _when(value: datetime | None, default: str) -> str:
    return value.isoformat(timespec="seconds") if value else default


def _print_list(listed: list[ApiKeyInfo], as_json: bool) -> None:
    if as_json:
        print(json.dumps([k.model_dump(mode="json", by_alias=False) for k in listed]))
        return
    print(f"{'ID':<26} {'NAME':<20} {'SCOPE':<6} {'STATUS':<8} {'NAMESPACES':<20} "
          f"{'HOSTS':<16} {'EXPIRES':<26} {'LAST USED':<26} FROM")  # fmt: skip
    for k in listed:
        hosts = safe(",".join(k.hosts)) or "any"
        grants = ",".join(f"{n}={s}" for n, s in k.grants.items()) or "default"
        print(
            f"{k.id:<26} {safe(k.name)[:20]:<20} {k.scope:<6} {k.status:<8} {grants[:20]:<20} "
            f"{hosts[:16]:<16} "
            f"{_when(k.expires_at, 'never'):<26} {_when(k.last_used_at, 'never'):<26} "
            f"{safe(k.last_used_ip or '-')}"
        )
