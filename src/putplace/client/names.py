"""How file names that are not valid UTF-8 travel in the (UTF-8, JSON) wire protocol.

A name that decodes as UTF-8 is sent unchanged. A name that does not is sent with each
byte that is not part of valid UTF-8 written as ``%XX`` (upper-case hex) and each ``%``
written as ``%25``; ``urllib.parse.unquote_to_bytes`` turns it back into the original
bytes. Example: ``b"caf\\xe9.txt"`` (Latin-1) is sent as ``"caf%E9.txt"``.

The same form is used for a symlink's ``link_target`` and for the multipart filename.
Names that are valid UTF-8 are never altered, so a ``%`` in them is sent as is: the
escaped form is only recognisable from the bytes it must stand for (a name containing
``%XX`` sequences that decodes as UTF-8 is ambiguous by design; such names are rare).
"""

from __future__ import annotations

import os


def wire_path(path: str) -> str:
    """The ``filepath`` to send for an OS path (as returned by ``os.fsdecode``)."""
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return "".join(_escape(ch) for ch in path)
    return path


def _escape(ch: str) -> str:
    code = ord(ch)
    if 0xDC80 <= code <= 0xDCFF:  # an undecodable byte, kept by surrogateescape
        return f"%{code - 0xDC00:02X}"
    return "%25" if ch == "%" else ch


def os_path(wire: str, was_escaped: bool) -> bytes:
    """The original bytes of a name (the inverse of :func:`wire_path`)."""
    from urllib.parse import unquote_to_bytes

    return unquote_to_bytes(wire) if was_escaped else os.fsencode(wire)
