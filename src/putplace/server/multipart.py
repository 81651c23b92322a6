"""Streaming extraction of one file field from a ``multipart/form-data`` request body.

Starlette's ``request.form()`` spools the whole upload to a temporary file before the
handler sees it; that is a second full pass over every byte. Here the body is parsed as it
arrives and the named field's bytes are handed on chunk by chunk.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from python_multipart.exceptions import FormParserError, MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect, Request


class MultipartError(ValueError):
    """The body is not a well-formed multipart/form-data message."""


class MissingFieldError(MultipartError):
    """The body has no part with the wanted field name."""

    def __init__(self, name: str) -> None:
        super().__init__(f"multipart body has no field named {name!r}")
        self.name = name


def boundary_of(content_type: str | None) -> bytes:
    kind, params = parse_options_header(content_type)
    if kind != b"multipart/form-data":
        raise MultipartError("Content-Type must be multipart/form-data")
    boundary = params.get(b"boundary")
    if not boundary:
        raise MultipartError("multipart Content-Type has no boundary")
    return boundary


async def iter_field(request: Request, field: str) -> AsyncIterator[bytes]:
    """Yield the bytes of form field *field* as the request body streams in.

    Raises :class:`MissingFieldError` if the message ends without that field and
    :class:`MultipartError` if it is malformed or cut short (a client that disconnects
    mid-upload surfaces as ``ClientDisconnect``). Callers must not trust the bytes before
    the iterator finishes normally.
    """
    boundary = boundary_of(request.headers.get("content-type"))
    wanted = field.encode()
    state = {"in_field": False, "seen": False, "ended": False, "complete": False}
    pending: list[bytes] = []
    header_field = bytearray()
    header_value = bytearray()
    headers: dict[bytes, bytes] = {}

    def on_part_begin() -> None:
        headers.clear()

    def on_header_field(data: bytes, start: int, end: int) -> None:
        header_field.extend(data[start:end])

    def on_header_value(data: bytes, start: int, end: int) -> None:
        header_value.extend(data[start:end])

    def on_header_end() -> None:
        headers[bytes(header_field).lower()] = bytes(header_value)
        header_field.clear()
        header_value.clear()

    def on_headers_finished() -> None:
        _, params = parse_options_header(headers.get(b"content-disposition"))
        if params.get(b"name") == wanted and not state["seen"]:
            state["in_field"] = state["seen"] = True

    def on_part_data(data: bytes, start: int, end: int) -> None:
        if state["in_field"]:
            pending.append(data[start:end])

    def on_part_end() -> None:
        if state["in_field"]:
            state["in_field"] = False
            state["ended"] = True

    def on_end() -> None:
        state["complete"] = True

    try:
        parser = MultipartParser(
            boundary,
            {
                "on_part_begin": on_part_begin,
                "on_header_field": on_header_field,
                "on_header_value": on_header_value,
                "on_header_end": on_header_end,
                "on_headers_finished": on_headers_finished,
                "on_part_data": on_part_data,
                "on_part_end": on_part_end,
                "on_end": on_end,
            },
        )
    except FormParserError as exc:  # a boundary it cannot use (over 256 bytes)
        raise MultipartError(f"malformed multipart Content-Type: {exc}") from None
    try:
        async for chunk in request.stream():
            if not chunk:
                continue
            parser.write(chunk)
            for piece in pending:
                yield piece
            pending.clear()
            if state["complete"]:
                break
    except MultipartParseError as exc:
        raise MultipartError(f"malformed multipart body: {exc}") from None
    except ClientDisconnect:
        raise
    if not state["seen"]:
        raise MissingFieldError(field)
    if not (state["ended"] and state["complete"]):
        raise MultipartError("multipart body ended before its closing boundary")
