"""Showing names chosen by others (file, host and key names) on a terminal, literally.

A name may hold ``ESC [ 2 J``, a newline or a right-to-left override. Each such character
is shown escaped, the way Python's ``repr`` shows it (``\\x1b``, ``\\n``, ``\\u202e``); a
backslash is doubled, so an escaped name cannot pass for another.
"""

from __future__ import annotations

_ESCAPES = {"\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def safe(value: object) -> str:
    """*value* as text a terminal shows literally: control, format, surrogate, private
    and unassigned characters escaped, everything printable kept."""
    text = "" if value is None else str(value)
    if text.isprintable() and "\\" not in text:
        return text  # the common case, in one C-speed pass
    out = []
    for ch in text:
        if ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif ch.isprintable():
            out.append(ch)
        elif ord(ch) < 0x100:
            out.append(f"\\x{ord(ch):02x}")
        elif ord(ch) < 0x10000:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(f"\\U{ord(ch):08x}")
    return "".join(out)
