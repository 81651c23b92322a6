"""Reading JSON request bodies with a size limit, before any parsing."""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import HTTPException, Request, status
from fastapi.exceptions import RequestValidationError


async def read_json(request: Request, limit: int) -> Any:
    """The parsed JSON body; 413 past *limit* bytes, 422 when it is not JSON."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        chunks.append(chunk)
    try:
        return orjson.loads(b"".join(chunks))
    except orjson.JSONDecodeError as exc:
        raise RequestValidationError(
            [
                {
                    "type": "json_invalid",
                    "loc": ["body", exc.pos],
                    "msg": f"JSON decode error: {exc.msg}",
                    "input": {},
                }
            ]
        ) from None


def _too_large(limit: int) -> HTTPException:
    return HTTPException(
        status.HTTP_413_CONTENT_TOO_LARGE, detail=f"request body larger than {limit} bytes"
    )
