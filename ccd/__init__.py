"""CC-Docker's Python SDK: ``ccd.Client`` (synchronous) and ``ccd.AsyncClient``.

    import ccd

    with ccd.Client() as client:  # CCD_URL, CCD_TOKEN
        session = client.create_session().wait_until_ready()
        print(session.chat("Write fib.py and run it").text)
        session.delete()

``ccd.models`` (the API's bodies, shared with the gateway) and ``ccd.errors`` import only
pydantic; the clients are loaded when first named, so the gateway can use the models without
the client's dependencies.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ccd.errors import (
    ApiError,
    BadRequest,
    CcdError,
    Conflict,
    ConnectionFailed,
    Forbidden,
    InvalidArgument,
    NotFound,
    PayloadTooLarge,
    RateLimited,
    ServerError,
    SessionEnded,
    Timeout,
    Unauthorized,
    Unavailable,
    ValidationFailed,
)
from ccd.models import Event

if TYPE_CHECKING:
    from ccd.aio import AsyncClient, AsyncSession
    from ccd.results import TurnResult
    from ccd.stream import Backoff
    from ccd.sync import Client, Session, Workspace
    from ccd.workspaces import AsyncWorkspace

__all__ = [
    "ApiError",
    "AsyncClient",
    "AsyncSession",
    "AsyncWorkspace",
    "Backoff",
    "BadRequest",
    "CcdError",
    "Client",
    "Conflict",
    "ConnectionFailed",
    "Event",
    "Forbidden",
    "InvalidArgument",
    "NotFound",
    "PayloadTooLarge",
    "RateLimited",
    "ServerError",
    "Session",
    "SessionEnded",
    "Timeout",
    "TurnResult",
    "Unauthorized",
    "Unavailable",
    "ValidationFailed",
    "Workspace",
]

_LAZY = {
    "AsyncClient": "ccd.aio",
    "AsyncSession": "ccd.aio",
    "AsyncWorkspace": "ccd.workspaces",
    "Backoff": "ccd.stream",
    "Client": "ccd.sync",
    "Session": "ccd.sync",
    "TurnResult": "ccd.results",
    "Workspace": "ccd.sync",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'ccd' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
