"""Parsing JSON request bodies (their size is bounded by ``limits.BodyLimitMiddleware``)."""

from __future__ import annotations

from typing import Any, TypeVar

import orjson
from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError

M = TypeVar("M", bound=BaseModel)


#: FastAPI's error for a declared body that was not sent, which the routes that parse
#: their own bodies give too (existing clients saw it from the original server).
_NO_BODY = {"type": "missing", "loc": ["body"], "msg": "Field required", "input": None}


async def read_json(request: Request) -> Any:
    """The parsed JSON body; 422 when there is none or it is not JSON."""
    return parse_json(await request.body())


def parse_json(body: bytes) -> Any:
    """*body* parsed as JSON; 422 when it is empty or not JSON."""
    if not body:
        raise RequestValidationError([_NO_BODY])
    try:
        return orjson.loads(body)
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


def validated(model: type[M], data: Any, where: str) -> M:
    """*data* as a *model*, else 422 with FastAPI's error shape (each error's ``loc``
    starting with *where*: ``body`` or ``query``)."""
    try:
        # from_attributes: FastAPI's own call, whose error for a body that is not an object
        # ("a valid dictionary or object to extract fields from") clients may match.
        return model.model_validate(data, from_attributes=True)
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        raise RequestValidationError(
            [{**error, "loc": (where, *error["loc"])} for error in errors]
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
