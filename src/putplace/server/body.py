"""Parsing JSON request bodies (their size is bounded by ``limits.BodyLimitMiddleware``)."""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import Request
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
