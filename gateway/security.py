"""Tokens: user tokens (``sub`` owns sessions) and session capability tokens.

A capability token is what a session's container uses to call the gateway. It is signed with
its own key (``Settings.session_token_key``) and audience, names the session (``sid``), its tree
(``root``) and its owner (``sub``), and lives ``SESSION_TOKEN_TTL`` seconds. Whether its session
is still running is checked on every use, so it dies with the session.

The model proxy also takes model keys, which are refused everywhere else: a cold-started
session's (audience ``cc-docker:model``, naming the session's run) and a pooled container's
(audience ``cc-docker:pool``, naming the pooled container).
"""

from __future__ import annotations

import math
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import jwt

from gateway.config import Settings
from gateway.error_codes import ErrorCode
from gateway.errors import Unauthorized

SESSION_AUDIENCE = "cc-docker:session"
# A pooled container's model key: good for nothing but the model proxy, and there only once a
# claim bound its pooled container to a running session.
POOL_AUDIENCE = "cc-docker:pool"
# A cold-started session's model key, which its CLI holds in its environment from its start:
# good for nothing but the model proxy, and there only while the run it was minted for (the
# session's ``started_at``) is the session's current one and the session is active.
MODEL_AUDIENCE = "cc-docker:model"
_SESSION_ALGORITHM = "HS256"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MAX_SUBJECT_LENGTH = 200


@dataclass(frozen=True)
class Principal:
    """Who is calling. ``owner`` scopes every session the caller can see or touch; a session
    principal (``session_id`` set) is further confined to that session and its descendants."""

    owner: str
    session_id: uuid.UUID | None = None
    root_id: uuid.UUID | None = None
    budgeted: bool = False  # a session token of a tree with a model budget
    run: int | None = None  # a model key's: the run (``run_stamp``) it is good for

    @property
    def is_session(self) -> bool:
        return self.session_id is not None


@dataclass(frozen=True)
class IssuedToken:
    token: str
    expires_at: datetime
    expires_in: int


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


def mint_session_token(
    settings: Settings,
    session_id: uuid.UUID,
    root_id: uuid.UUID,
    owner: str,
    *,
    budgeted: bool = False,
) -> IssuedToken:
    """``budgeted``: its tree has a model budget (fixed when the root is created), so the
    model proxy knows, even while PostgreSQL is unreachable, whether a call may go on."""
    now = int(time.time())
    expires = now + settings.session_token_ttl
    claims: dict[str, object] = {
        "sub": owner,
        "sid": str(session_id),
        "root": str(root_id),
        "aud": SESSION_AUDIENCE,
        "iat": now,
        "exp": expires,
    }
    if budgeted:
        claims["bgt"] = True
    token = jwt.encode(claims, settings.session_token_key, _SESSION_ALGORITHM)
    return IssuedToken(
        token=token,
        expires_at=datetime.fromtimestamp(expires, UTC),
        expires_in=settings.session_token_ttl,
    )


def mint_pool_key(settings: Settings, pool_id: uuid.UUID) -> str:
    """The model key a pooled container's CLI boots with; it outlives the pooled container's
    longest wait and its session's token (the CLI reads a fresh key long before then)."""
    now = int(time.time())
    lifetime = int(settings.session_pool_max_age) + settings.session_token_ttl
    claims = {"pool": str(pool_id), "aud": POOL_AUDIENCE, "iat": now, "exp": now + lifetime}
    return jwt.encode(claims, settings.session_token_key, _SESSION_ALGORITHM)


def run_stamp(started_at: datetime) -> int:
    """A session run's stamp: its ``started_at`` in whole microseconds since the epoch (exact,
    as PostgreSQL keeps it), which a model key names and the proxy compares."""
    return (started_at - _EPOCH) // timedelta(microseconds=1)


def mint_model_key(
    settings: Settings,
    session_id: uuid.UUID,
    root_id: uuid.UUID,
    owner: str,
    started_at: datetime,
    *,
    budgeted: bool = False,
) -> str:
    """The model key a cold-started session's CLI gets in its environment (which cannot be
    refreshed while the CLI runs, so it has no expiry): it names its session's run, and the
    proxy accepts it only while that run is current and active. Its other claims are a
    session token's, so that an unbudgeted tree's calls go on through a database outage."""
    claims: dict[str, object] = {
        "sub": owner,
        "sid": str(session_id),
        "root": str(root_id),
        "run": run_stamp(started_at),
        "aud": MODEL_AUDIENCE,
        "iat": int(time.time()),
    }
    if budgeted:
        claims["bgt"] = True
    return jwt.encode(claims, settings.session_token_key, _SESSION_ALGORITHM)


def authenticate_token(settings: Settings, token: str) -> Principal:
    """Verify a user or a session token; raise ``Unauthorized``. The kind is chosen by the
    unverified audience, then the token is verified in full with that kind's key."""
    return _verify(settings, token, _audience(token))


def authenticate_model_key(settings: Settings, token: str) -> Principal | uuid.UUID:
    """What the model proxy accepts: a session token or a session's model key (its principal;
    a model key's names its run), or a pooled container's key (the pool id it names, which only
    a claim binds to a session); raise ``Unauthorized``."""
    audience = _audience(token)
    if audience == POOL_AUDIENCE:
        return _verify_pool_key(settings, token)
    if audience == MODEL_AUDIENCE:
        return _verify_model_key(settings, token)
    return _verify(settings, token, audience)


class ModelKeys:
    """``authenticate_model_key`` for the model proxy, remembering what it verified: a CLI
    sends the same key with every model call, and verifying its signature again costs about
    0.4 ms before the first byte. A verified key stays good until its expiry; whether its
    session still runs is not remembered here (the proxy asks the database on every call)."""

    def __init__(self, settings: Settings, size: int = 4096) -> None:
        self._settings = settings
        self._size = size
        self._verified: OrderedDict[str, tuple[Principal | uuid.UUID, float]] = OrderedDict()

    def authenticate(self, token: str) -> Principal | uuid.UUID:
        """Raises ``Unauthorized``, as ``authenticate_model_key``."""
        known = self._verified.get(token)
        if known is not None and time.time() < known[1]:
            self._verified.move_to_end(token)
            return known[0]
        verified = authenticate_model_key(self._settings, token)
        expires = jwt.decode(token, options={"verify_signature": False}).get("exp", math.inf)
        if isinstance(expires, int | float):  # a session's model key has none: it names a run
            self._verified[token] = (verified, float(expires))
            if len(self._verified) > self._size:
                self._verified.popitem(last=False)
        return verified


def _verify(settings: Settings, token: str, audience: object) -> Principal:
    if audience == SESSION_AUDIENCE:
        return _verify_session_token(settings, token)
    if audience in (MODEL_AUDIENCE, POOL_AUDIENCE):
        # Never tried as a user token, whatever secrets the operator chose.
        raise Unauthorized(
            "invalid token: a model key is good for the model proxy only",
            code=ErrorCode.INVALID_TOKEN,
        )
    return _verify_user_token(settings, token)


def _verify_pool_key(settings: Settings, token: str) -> uuid.UUID:
    claims = _decode(
        token, settings.session_token_key, _SESSION_ALGORITHM, POOL_AUDIENCE, ["pool", "exp"]
    )
    try:
        return uuid.UUID(str(claims["pool"]))
    except ValueError:
        raise Unauthorized("invalid token: bad pool id", code=ErrorCode.INVALID_TOKEN) from None


def _audience(token: str) -> object:
    """The token's audience, read without verification (to choose how to verify it)."""
    try:
        unverified = jwt.decode(token, options={"verify_signature": False})
    except jwt.InvalidTokenError as exc:
        raise Unauthorized(f"invalid token: {exc}", code=ErrorCode.INVALID_TOKEN) from None
    return unverified.get("aud")


def _verify_user_token(settings: Settings, token: str) -> Principal:
    claims = _decode(
        token,
        settings.jwt_secret.get_secret_value(),
        settings.jwt_algorithm,
        settings.jwt_audience,
        ["sub", "exp"],
    )
    return Principal(owner=_subject(claims))


def _verify_session_token(settings: Settings, token: str) -> Principal:
    claims = _decode(
        token,
        settings.session_token_key,
        _SESSION_ALGORITHM,
        SESSION_AUDIENCE,
        ["sub", "exp", "sid", "aud"],
    )
    return _session_principal(claims)


def _verify_model_key(settings: Settings, token: str) -> Principal:
    claims = _decode(
        token, settings.session_token_key, _SESSION_ALGORITHM, MODEL_AUDIENCE, ["sub", "sid", "run"]
    )
    run = claims["run"]
    if not isinstance(run, int) or isinstance(run, bool):
        raise Unauthorized("invalid token: bad run", code=ErrorCode.INVALID_TOKEN)
    return _session_principal(claims, run)


def _session_principal(claims: dict[str, object], run: int | None = None) -> Principal:
    try:
        session_id = uuid.UUID(str(claims["sid"]))
        root_id = uuid.UUID(str(claims.get("root") or session_id))
    except ValueError:
        raise Unauthorized("invalid token: bad session id", code=ErrorCode.INVALID_TOKEN) from None
    return Principal(
        owner=_subject(claims),
        session_id=session_id,
        root_id=root_id,
        budgeted=claims.get("bgt") is True,
        run=run,
    )


def _decode(
    token: str, key: str, algorithm: str, audience: str | None, required: list[str]
) -> dict[str, object]:
    try:
        claims: dict[str, object] = jwt.decode(
            token,
            key,
            algorithms=[algorithm],
            audience=audience,
            options={"require": required, "verify_aud": audience is not None},
        )
    except jwt.ExpiredSignatureError:
        raise Unauthorized("token expired", code=ErrorCode.TOKEN_EXPIRED) from None
    except jwt.InvalidTokenError as exc:
        raise Unauthorized(f"invalid token: {exc}", code=ErrorCode.INVALID_TOKEN) from None
    return claims


def _subject(claims: dict[str, object]) -> str:
    subject = claims.get("sub")
    if not isinstance(subject, str) or not subject or len(subject) > _MAX_SUBJECT_LENGTH:
        raise Unauthorized("token subject must be a non-empty string", code=ErrorCode.INVALID_TOKEN)
    return subject


def verify_credentials(
    settings: Settings, authorization: str | None, query_token: str | None = None
) -> Principal:
    """The principal of a request's ``Authorization: Bearer`` header (or, where allowed, its
    ``?token=``), its signature, expiry and audience verified; raises ``Unauthorized``. It does
    not check that a session token's session still runs: that needs the database."""
    token = bearer_token(authorization) or query_token
    if not token:
        raise Unauthorized("missing bearer token", code=ErrorCode.MISSING_TOKEN)
    return authenticate_token(settings, token)


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, else ``None``."""
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()
