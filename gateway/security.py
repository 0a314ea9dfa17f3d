"""User tokens: HS-signed JWTs whose ``sub`` is the owner of everything the caller creates."""

from __future__ import annotations

import time
from dataclasses import dataclass

import jwt

from gateway.config import Settings
from gateway.errors import Unauthorized

_REQUIRED_CLAIMS = ["sub", "exp"]
_MAX_SUBJECT_LENGTH = 200


@dataclass(frozen=True)
class Principal:
    """Who is calling. ``owner`` scopes every session the caller can see or touch."""

    owner: str


def mint_user_token(settings: Settings, subject: str, ttl: int | None = None) -> str:
    if not subject or len(subject) > _MAX_SUBJECT_LENGTH:
        raise ValueError(f"subject must be 1 to {_MAX_SUBJECT_LENGTH} characters")
    now = int(time.time())
    claims: dict[str, object] = {
        "sub": subject,
        "iat": now,
        "exp": now + (ttl or settings.token_ttl),
    }
    if settings.jwt_audience:
        claims["aud"] = settings.jwt_audience
    return jwt.encode(claims, settings.jwt_secret.get_secret_value(), settings.jwt_algorithm)


def authenticate_user_token(settings: Settings, token: str) -> Principal:
    """Verify signature, pinned algorithm, expiry and required claims; raise ``Unauthorized``."""
    try:
        claims = jwt.decode(
            token,
            settings.jwt_secret.get_secret_value(),
            algorithms=[settings.jwt_algorithm],
            audience=settings.jwt_audience,
            options={"require": _REQUIRED_CLAIMS, "verify_aud": settings.jwt_audience is not None},
        )
    except jwt.ExpiredSignatureError:
        raise Unauthorized("token expired", code="token_expired") from None
    except jwt.InvalidTokenError as exc:
        raise Unauthorized(f"invalid token: {exc}", code="invalid_token") from None
    subject = claims.get("sub")
    if not isinstance(subject, str) or not subject or len(subject) > _MAX_SUBJECT_LENGTH:
        raise Unauthorized("token subject must be a non-empty string", code="invalid_token")
    return Principal(owner=subject)


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, else ``None``."""
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()
