"""Logging: text or one JSON object a line, and one access line per request with its id.

Nothing here ever logs request headers or bodies, so API keys cannot reach the logs; the
access line names the key by its database id only.
"""

from __future__ import annotations

import copy
import json
import logging
import random
import re
import time
from typing import Any

from starlette.types import Scope

from putplace.config import LogFormat, Settings
from putplace.display import safe

access_log = logging.getLogger("putplace.access")
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


def _new_request_id() -> str:
    """128 random bits as 32 hex digits, as ``uuid4().hex`` looks. Request ids only tell
    requests apart (they are no secret): Python's generator, which is seeded afresh in
    each forked worker. os.urandom (and uuid4, which calls it) is a system call that lets
    go of the GIL, and the event loop then waited to take it back from the store's
    threads: 2.6% of the server's samples under wrk on POST /put_file, on that one line."""
    return f"{random.getrandbits(128):032x}"


_STANDARD = set(vars(logging.makeLogRecord({})))


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update({k: v for k, v in vars(record).items() if k not in _STANDARD})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class TextFormatter(logging.Formatter):
    """One line per message, shown literally: a message carries what clients chose (a
    request path, a forwarded address), and a raw newline or ESC in it would forge log
    lines or drive the terminal of whoever reads the log. A traceback keeps its lines,
    each indented, so none (an exception's message may quote a client too) can pass for
    a line of its own."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        if record.exc_info is None:  # the common case, formatted as logging does
            return super().format(record)
        # A copy: logging keeps a record's traceback text on it, and other handlers
        # share the record.
        shown = copy.copy(record)
        shown.exc_text = None
        return super().format(shown)

    def formatMessage(self, record: logging.LogRecord) -> str:
        message = safe(record.message)
        if message is not record.message:  # rarely: a copy, as in format()
            record = copy.copy(record)
            record.message = message
        return super().formatMessage(record)

    def formatException(self, ei: Any) -> str:
        lines = super().formatException(ei).split("\n")
        return "\n".join(f"  {safe(line)}" for line in lines)


def configure_logging(settings: Settings) -> None:
    """Route every log line (ours and uvicorn's) through one handler in the chosen format."""
    handler = logging.StreamHandler()
    if settings.log_format is LogFormat.json:
        handler.setFormatter(JsonFormatter())
        handler.formatter.converter = time.gmtime  # type: ignore[union-attr]
    else:
        handler.setFormatter(TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.log_level.upper())
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    # ObserveRequestsMiddleware writes the access lines (with request ids); silence uvicorn's.
    logging.getLogger("uvicorn.access").handlers[:] = []
    logging.getLogger("uvicorn.access").propagate = False


def request_id_of(headers: list[tuple[bytes, bytes]]) -> str:
    """The request's id: the client's ``X-Request-ID`` if it is sane, else a new one."""
    given = next((v for k, v in headers if k == b"x-request-id"), b"").decode("latin-1")
    return given if _REQUEST_ID.fullmatch(given) else _new_request_id()


def log_access(scope: Scope, status: int, seconds: float, request_id: str) -> None:
    """The request's access line (``ObserveRequestsMiddleware`` calls it once answered)."""
    client = scope.get("client")
    key_id = scope["state"].get("api_key_id")
    access_log.info(
        '%s "%s %s HTTP/%s" %d %.1fms rid=%s key=%s',
        client[0] if client else "-",
        scope["method"],
        scope["path"],
        scope.get("http_version", "1.1"),
        status,
        seconds * 1000,
        request_id,
        key_id or "-",
        extra={
            "request_id": request_id,
            "method": scope["method"],
            "path": scope["path"],
            "status": status,
            "duration_ms": round(seconds * 1000, 2),
            "client": client[0] if client else None,
            "key_id": key_id,
        },
    )
