"""Liveness and readiness."""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse
from sqlalchemy import text

from gateway.deps import ServicesDep
from gateway.draining import Drain, get_drain
from gateway.schemas import Health, Readiness

router = APIRouter(tags=["health"])

_CHECK_TIMEOUT = 3.0


@router.get("/health", response_model=Health)
async def health() -> Health:
    """The process is up. No dependencies are checked and no token is needed."""
    return Health(status="ok")


@router.get("/ready", response_model=Readiness, responses={503: {"model": Readiness}})
async def ready(services: ServicesDep, drain: Annotated[Drain, Depends(get_drain)]) -> JSONResponse:
    """PostgreSQL, Redis, the Docker engine and the object store all answer: 200, else 503
    naming what failed. From the moment the gateway is told to stop: 503 ``draining`` at once,
    with nothing checked, so a load balancer sends it no new requests."""
    if drain.draining:
        body = Readiness(status="draining", checks={"shutdown": "draining"})
        return JSONResponse(body.model_dump(), status_code=503)

    async def database() -> None:
        async with services.db() as db:
            await db.execute(text("SELECT 1"))

    checks = {
        "database": database(),
        "redis": services.bus.ping(),
        "docker": services.runtime.ping(),
        "storage": asyncio.to_thread(services.workspaces.store.ping),
    }
    outcomes = await asyncio.gather(
        *(asyncio.wait_for(check, _CHECK_TIMEOUT) for check in checks.values()),
        return_exceptions=True,
    )
    results = {
        name: "ok" if outcome is None else f"{type(outcome).__name__}: {outcome}"[:300]
        for name, outcome in zip(checks, outcomes, strict=True)
    }
    healthy = all(value == "ok" for value in results.values())
    body = Readiness(status="ok" if healthy else "unavailable", checks=results)
    return JSONResponse(body.model_dump(), status_code=200 if healthy else 503)
