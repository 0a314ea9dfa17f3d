"""``GET /metrics``: Prometheus' text format (or OpenMetrics, when the scraper asks for it).

Open unless ``METRICS_TOKEN`` is set; then only ``Authorization: Bearer <METRICS_TOKEN>``.
Not under ``/api`` (the request guard's user tokens do not apply) and not in the OpenAPI
schema: it is for scrapers, not API clients.
"""

from __future__ import annotations

import hmac
import logging
from typing import Annotated

from fastapi import APIRouter, Header
from fastapi.responses import Response

from gateway.db import queries
from gateway.db.outage import database_unavailable
from gateway.deps import ServicesDep
from gateway.error_codes import ErrorCode
from gateway.errors import Unauthorized
from gateway.security import bearer_token

log = logging.getLogger(__name__)

router = APIRouter(include_in_schema=False)


@router.get("/metrics")
async def metrics(
    services: ServicesDep,
    authorization: Annotated[str | None, Header()] = None,
    accept: Annotated[str, Header()] = "",
) -> Response:
    """Every metric of this process, and ``ccd_sessions`` and ``ccd_pool_containers`` read
    from PostgreSQL now (left out while the database cannot be reached: the rest is still
    served)."""
    expected = services.settings.metrics_token
    if expected is not None:
        token = bearer_token(authorization)
        if token is None:
            raise Unauthorized("missing bearer token (METRICS_TOKEN)", code=ErrorCode.MISSING_TOKEN)
        if not hmac.compare_digest(token.encode(), expected.get_secret_value().encode()):
            raise Unauthorized("wrong metrics token", code=ErrorCode.INVALID_TOKEN)
    sessions: dict[str, int] | None = None
    pool: dict[str, int] | None = None
    try:
        async with services.db() as db:
            sessions = await queries.sessions_by_status(db)
            pool = await queries.pool_by_status(db)
    except Exception as exc:
        if not database_unavailable(exc):
            raise
        log.warning("metrics: sessions not counted, the database is unavailable: %s", exc)
    body, content_type = services.metrics.render(sessions, accept, pool)
    return Response(body, media_type=content_type)
