"""Where each restored record goes, and which records and links are refused.

Pure functions over the records' strings; nothing here touches the disk. The rules:

- a record's target is ``DIR / (filepath relative to PATH_PREFIX)``, or ``DIR / basename``
  when the filepath is the prefix itself;
- a filepath with a ``..`` component is refused: the server stores any string, and
  ``/srv/data/../../etc/cron.d/x`` lies "under" ``/srv/data`` as a string;
- a symlink's target is refused when it is absolute, climbs (leading ``..``) above
  ``DIR``, or has a ``..`` after a name: ``a/../..`` means "two up from wherever ``a``
  leads", which a restored link ``a -> .`` would take out of ``DIR``.

Names that were not valid UTF-8 travel ``%XX``-escaped (:mod:`putplace.client.names`);
the record does not say whether a name was escaped, so a name is taken as escaped exactly
when un-escaping it gives bytes that are not UTF-8 (which no unescaped name can give).
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote_to_bytes


class RefusedError(Exception):
    """This record cannot be restored safely; the message says why (and may quote the
    record's strings as they are: escape it before printing)."""


def local_name(wire: str) -> str:
    """The OS form (``os.fsdecode``) of a name as it travels in the wire protocol."""
    if "%" not in wire:
        return wire
    raw = unquote_to_bytes(wire)
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return os.fsdecode(raw)
    return wire


def normal_prefix(prefix: str) -> str:
    """*prefix* without trailing slashes (``/`` stays ``/``); refuses ``..``."""
    cleaned = prefix.rstrip("/") or "/"
    if ".." in cleaned.split("/"):
        raise RefusedError(f"the prefix {prefix} has a '..' component")
    return cleaned


def relative_parts(filepath: str, prefix: str) -> tuple[str, ...]:
    """Components of the target of *filepath* (OS form) below the restore directory.

    *prefix* is a :func:`normal_prefix`.
    """
    if filepath == prefix:
        rest = filepath.rsplit("/", 1)[-1]
    elif prefix == "/" and filepath.startswith("/"):
        rest = filepath[1:]
    elif filepath.startswith(prefix + "/"):
        rest = filepath[len(prefix) + 1 :]
    else:
        raise RefusedError("not under the prefix")
    parts = tuple(part for part in rest.split("/") if part not in ("", "."))
    if ".." in parts:
        raise RefusedError("the path has a '..' component; refusing to write outside the target")
    if not parts:
        raise RefusedError("the path names no file")
    if "\0" in rest:
        raise RefusedError("the path holds a NUL character, which no local name can")
    return parts


def check_link_target(target: str, depth: int) -> None:
    """Refuse a symlink target that could lead out of the restore directory from a link
    *depth* directories below it (see the module docstring)."""
    if not target:
        raise RefusedError("the symlink has an empty target")
    if target.startswith("/"):
        raise RefusedError(f"the symlink target {target} is absolute")
    if "\0" in target:
        raise RefusedError("the symlink target holds a NUL character, which no link can")
    parts = target.split("/")
    climb = 0
    while climb < len(parts) and parts[climb] == "..":
        climb += 1
    if climb > depth:
        raise RefusedError(f"the symlink target {target} leads out of the target directory")
    if ".." in parts[climb:]:
        raise RefusedError(f"the symlink target {target} has '..' after a name")


@dataclass(frozen=True, slots=True)
class Item:
    """One record to restore, with its place under the restore directory."""

    filepath: str
    """As recorded (wire form): what messages name."""
    parts: tuple[str, ...]
    sha256: str
    size: int
    mode: int
    mtime: float
    atime: float
    link_target: str | None
    """OS form, for symlinks only."""
    has_content: bool
    """False when the server said it lacks the content."""


def plan(record: dict[str, Any], prefix: str) -> Item:
    """The :class:`Item` for a ``GET /files`` record; :class:`RefusedError` if unsafe."""
    try:
        filepath = str(record["filepath"])
        parts = relative_parts(local_name(filepath), prefix)
        link = None
        if record.get("is_symlink"):
            link = local_name(str(record.get("link_target") or ""))
            check_link_target(link, len(parts) - 1)
        return Item(
            filepath=filepath,
            parts=parts,
            sha256=str(record["sha256"]),
            size=int(record["file_size"]),
            mode=stat.S_IMODE(int(record.get("file_mode", 0o100644))),
            mtime=float(record["file_mtime"]),
            atime=float(record.get("file_atime", record["file_mtime"])),
            link_target=link,
            has_content=record.get("has_file_content") is not False,
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise RefusedError(f"the record is incomplete: {exc}") from None
