"""Parameters reach SQLite as the values they are, with PutPlace's faster binding of
``bytes`` and ``None`` in place (``putplace.sqlite_files``): a content's key stays a blob
of its exact bytes, a missing value stays NULL. Run on the deployment interpreter too
(``make compat``), where that binding is in use."""

from __future__ import annotations

import sqlite3
import sys

import pytest

import putplace.sqlite_files  # noqa: F401  (registers the binding on import)

VALUES: list[object] = [b"", b"\x00\x01\xff" * 11, None, bytearray(b"ab"), 7, 1.5, "text"]


@pytest.mark.parametrize("value", VALUES, ids=repr)
def test_a_parameter_is_stored_and_compared_as_itself(value: object) -> None:
    conn = sqlite3.connect(":memory:")
    conn.execute("CREATE TABLE t (v)")
    conn.execute("INSERT INTO t VALUES (?)", (value,))
    (stored,) = conn.execute("SELECT v FROM t").fetchone()
    expected = bytes(value) if isinstance(value, bytearray) else value
    assert stored == expected
    assert type(stored) is type(expected)
    (found,) = conn.execute("SELECT count(*) FROM t WHERE v IS ?", (value,)).fetchone()
    assert found == 1


def test_the_binding_is_used_only_where_it_saves_work() -> None:
    registered = {t for t, _ in sqlite3.adapters}
    if sys.version_info < (3, 12):
        assert {bytes, type(None)} <= registered
    else:  # it would cost more than the lookups it saves there
        assert not {bytes, type(None)} & registered
