"""``GET /metrics``: Prometheus metrics, for a read-scope key (``PUTPLACE_METRICS=key``),
for anyone (``open``: a scraper on a private network), or not at all (``off``)."""

from __future__ import annotations

from fastapi import APIRouter, Response

from putplace.server.deps import Reader, State
from putplace.server.metrics import exposition
from putplace.server.store_metrics import observe_state

SUMMARY = "Prometheus metrics (text format)"


async def _scrape(state: State) -> Response:
    await observe_state(state.stores)
    body, content_type = exposition()
    return Response(body, media_type=content_type)


def router(access: str) -> APIRouter:
    """The metrics route as *access* says: ``key``, ``open`` or ``off`` (none)."""
    routes = APIRouter(tags=["status"])
    if access == "key":

        @routes.get("/metrics", summary=SUMMARY, response_class=Response)
        async def metrics(caller: Reader) -> Response:
            return await _scrape(caller.state)

    elif access == "open":

        @routes.get("/metrics", summary=SUMMARY, response_class=Response)
        async def open_metrics(state: State) -> Response:
            return await _scrape(state)

    return routes
