"""``POST /put_files`` validates a batch whole, with every rule checked in pydantic's core
(``ConstrainedFileMetadata``), and record by record as ``FileMetadata`` only when that
fails. Whatever a batch holds, the two must give the same answers: the same records
stored, read the same way, and the same errors for the rest."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from putplace.models import (
    MAX_UNIX_TIME,
    MIN_UNIX_TIME,
    ConstrainedFileMetadata,
    FileMetadata,
    is_canonical_ip,
)
from putplace.server.body import parse_json
from putplace.server.routes.files import _batch_items, _validate, _validate_batch

SHA = "ab" * 32

names = st.one_of(
    st.sampled_from(["/a", "x", "web-01", "", "a\x00b", "\x00", "/é/ü", "a" * 300, "b" * 5000]),
    st.text(max_size=8),
)
times = st.one_of(
    st.sampled_from([0, 1.5, -1.0, MIN_UNIX_TIME, MAX_UNIX_TIME, MIN_UNIX_TIME - 1,
                     MAX_UNIX_TIME + 1, 1e300, True, "12", None]),
    st.floats(allow_nan=False, allow_infinity=False),
)  # fmt: skip
counts = st.one_of(st.sampled_from([0, 1, -1, 1 << 32, 1 << 62, (1 << 62) + 1, True, "5", 1.0]),
                   st.integers())  # fmt: skip
addresses = st.sampled_from(
    ["", "127.0.0.1", "10.0.0.256", "::1", "::0001", "2001:DB8::1", "2001:db8::1", "host",
     " 1.2.3.4", "1.2.3.4\x00", "x" * 70]
)  # fmt: skip
VALUES = {
    "filepath": names, "hostname": names, "sha256": st.sampled_from([SHA, "AB" * 32, "x"]),
    "file_size": counts, "file_mode": counts, "file_uid": counts, "file_gid": counts,
    "file_mtime": times, "file_atime": times, "file_ctime": times, "ip_address": addresses,
    "is_symlink": st.sampled_from([True, False, 1, "true"]),
    "link_target": st.one_of(st.none(), names), "extra": st.just(1),
}  # fmt: skip
VALID = {
    "filepath": "/a", "hostname": "h", "sha256": SHA, "file_size": 1, "file_mode": 0o100644,
    "file_uid": 0, "file_gid": 0, "file_mtime": 1.0, "file_atime": 1.0, "file_ctime": 1.0,
}  # fmt: skip


@st.composite
def records(draw: st.DrawFn) -> dict[str, Any]:
    """A valid record with up to three fields set to anything their strategy holds (valid
    or not, or left out): most batches are then valid whole, or nearly."""
    record: dict[str, Any] = dict(VALID)
    for _ in range(draw(st.integers(0, 3))):
        field = draw(st.sampled_from(sorted(VALUES)))
        if draw(st.booleans()) or field not in VALID:
            record[field] = draw(VALUES[field])
        else:
            record.pop(field, None)
    return record


def _fields(records: list[FileMetadata]) -> list[dict[str, Any]]:
    return [dict(record.__dict__) for record in records]


def _answers(body: bytes) -> tuple[list[dict[str, Any]], list[int], list[Any]]:
    valid, positions, results = _validate_batch(body, 100)
    return _fields(valid), positions, results


def _one_by_one(body: bytes) -> tuple[list[dict[str, Any]], list[int], list[Any]]:
    valid, positions, results = _validate(_batch_items(parse_json(body), 100))
    return _fields(valid), positions, results


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(records(), min_size=1, max_size=4))
def test_a_batch_is_answered_as_its_records_one_by_one(batch: list[dict[str, Any]]) -> None:
    body = json.dumps({"files": batch}).encode()
    assert _answers(body) == _one_by_one(body)


@settings(max_examples=400, deadline=None)
@given(records())
def test_the_constrained_model_takes_nothing_the_plain_one_refuses(record: dict[str, Any]) -> None:
    text = json.dumps(record)
    try:
        fast = ConstrainedFileMetadata.model_validate_json(text)
    except ValidationError:
        return
    if not is_canonical_ip(fast.ip_address):
        return  # the caller's to check: it validates as FileMetadata then
    assert fast.__dict__ == FileMetadata.model_validate_json(text).__dict__


def test_a_valid_batch_with_an_address_in_another_form_is_stored_in_canonical_form() -> None:
    record = {
        "filepath": "/a", "hostname": "h", "ip_address": "::0001", "sha256": SHA,
        "file_size": 1, "file_mode": 0o100644, "file_uid": 0, "file_gid": 0,
        "file_mtime": 1.0, "file_atime": 1.0, "file_ctime": 1.0,
    }  # fmt: skip
    valid, positions, _ = _validate_batch(json.dumps({"files": [record]}).encode(), 10)
    assert positions == [0]
    assert valid[0].ip_address == "::1"
