"""Parsing JSON request bodies (their size is bounded by ``limits.BodyLimitMiddleware``)."""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError


async def read_json(request: Request) -> Any:
    """The parsed JSON body; 422 when it is not JSON."""
    try:
        return orjson.loads(await request.body())
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


def json_response(content: Any, status_code: int = 200) -> Response:
    """*content* as JSON, serialised by orjson: the answer to a batch holds thousands of
    records, which FastAPI's validate-then-encode path would handle one model at a time.
    Datetimes come out as Pydantic writes them (``...Z`` for UTC)."""
    return Response(
        orjson.dumps(content, option=orjson.OPT_UTC_Z),
        status_code=status_code,
        media_type="application/json",
    )
