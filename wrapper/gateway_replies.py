"""What the gateway answers the session's own client (``gateway_client``), as pydantic models.

Kept apart so that the wrapper loads pydantic only when a call is answered (a ``sessions``
tool, a token refresh), never on its way to a ready CLI.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class _Reply(BaseModel):
    """Lenient: the fields we read are checked, everything else the gateway sends is kept."""

    model_config = ConfigDict(extra="allow")


class SessionInfo(_Reply):
    id: str
    status: str
    parent_id: str | None = None
    root_id: str | None = None
    depth: int | None = None


class TurnInfo(_Reply):
    id: str
    seq: int | None = None
    status: str | None = None


class WaitOutcome(_Reply):
    session: SessionInfo
    turn: TurnInfo | None = None
    result: str | None = None


class TokenGrant(_Reply):
    token: str
    expires_at: str | None = None
    expires_in: int | None = None
