"""Redis key names that only the gateway uses. A session's own keys (its event streams) are
part of the wire contract and live in ``wrapper.protocol``; nothing here starts with
``ccd:session:``, so no session's Redis user can reach these keys."""

from __future__ import annotations

RATE_LIMIT_PREFIX = "ccd:ratelimit:"


def rate_limit(owner: str) -> str:
    """The owner's request bucket (the theoretical arrival time of GCRA, microseconds).
    Expires by itself once the bucket is full again."""
    return f"{RATE_LIMIT_PREFIX}{owner}"


MODEL_CALLS_PREFIX = "ccd:model-calls:"


def model_calls(owner: str) -> str:
    """The owner's model calls in flight: a sorted set of call ids scored by when each is
    given up as lost (its gateway died), so a crash never leaks a slot for long."""
    return f"{MODEL_CALLS_PREFIX}{owner}"
