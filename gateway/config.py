"""The gateway's settings: one typed object, read from the environment (and ``.env``) once.

This is the only module that reads the environment. ``Settings()`` is built in ``main`` and
passed down; nothing imports a global instance.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import quote, urlsplit, urlunsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from wrapper.protocol import MODEL_PROXY_PREFIX, SESSION_HOST_ALIAS, PermissionMode
from wrapper.session_config import SessionConfig

LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]

_UNITS = {"": 1, "b": 1, "k": 1024, "m": 1024**2, "g": 1024**3}
TEMPLATE_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,39}")
_MODEL_ACCESS_VARIABLES = frozenset(
    {"ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN", "CLAUDE_CODE_OAUTH_TOKEN", "ANTHROPIC_BASE_URL"}
)


def parse_size(value: str) -> int:
    """Bytes of a size in docker units: ``512m``, ``2g``, ``1024`` (the settings' patterns
    guarantee the form)."""
    value = value.strip().lower()
    unit = value[-1] if value[-1:].isalpha() else ""
    return int(value[: len(value) - len(unit)]) * _UNITS[unit]


class PoolTemplate(BaseModel):
    """A further warm pool (``SESSION_POOL_TEMPLATES``): containers whose CLI runs with
    ``config``'s options, for sessions created with the same."""

    model_config = ConfigDict(extra="forbid")

    size: int = Field(ge=0, le=1000)
    config: SessionConfig

    @field_validator("config")
    @classmethod
    def _cli_options_only(cls, config: SessionConfig) -> SessionConfig:
        if config.budget is not None or config.timeout is not None:
            raise ValueError(
                "a template's config holds CLI options only (model, permission_mode, tools, "
                "max_turns, prompts); budget and timeout belong to each session"
            )
        return config


class Settings(BaseSettings):
    # An empty variable (NAME= in .env.example) means "use the default".
    model_config = SettingsConfigDict(
        env_file=".env", extra="ignore", case_sensitive=False, env_ignore_empty=True
    )

    # -- serving -------------------------------------------------------------------------------
    host: str = Field(default="0.0.0.0", description="Address uvicorn binds to.")
    port: int = Field(default=8000, ge=1, le=65535, description="Port uvicorn listens on.")
    log_level: LogLevel = Field(default="INFO", description="Root log level.")
    log_json: bool = Field(default=True, description="Log one JSON object per line.")
    websocket_compression: bool = Field(
        default=False,
        description="Per-message deflate on WebSocket streams for clients that offer it. Off: "
        "compressing every event once per viewer costs the relay more CPU than the bandwidth "
        "it saves (CLI lines are small); turn it on for clients on slow links.",
    )
    shutdown_drain_delay: float = Field(
        default=5.0,
        ge=0,
        description="Seconds between SIGTERM and closing open WebSockets (with 1001) and the "
        "listener: /ready answers 503 and new WebSockets are refused meanwhile, other "
        "requests are still served, so a load balancer's health check can take the replica "
        "out of rotation first. At least its check interval times the failures it needs.",
    )
    shutdown_grace: int = Field(
        default=30,
        ge=1,
        description="Seconds requests in flight (a chat waiting for its turn, a model call) "
        "get to finish once the listener is closed; then they are cancelled.",
    )
    metrics_token: SecretStr | None = Field(
        default=None,
        description="If set, GET /metrics requires `Authorization: Bearer <this>`; if not, "
        "/metrics is open (keep it off public networks).",
    )

    # -- stores --------------------------------------------------------------------------------
    database_url: str = Field(
        default="postgresql+asyncpg://ccd:ccd@localhost:5432/ccd",
        description="SQLAlchemy URL of PostgreSQL; must use the asyncpg driver.",
    )
    database_pool_size: int = Field(default=10, ge=1, description="Connections kept open.")
    redis_url: str = Field(
        default="redis://localhost:6379/0",
        description="Redis for events, with the gateway's own credentials: a user that may "
        "manage ACL users (redis://user:password@host:port/db). Never given to a container.",
    )
    redis_password_file: Path | None = Field(
        default=None,
        description="File holding the password of REDIS_URL's user, used when the URL carries "
        "none (the compose stack generates one on first start).",
    )
    s3_endpoint: str = Field(
        default="localhost:9000", description="S3 API host:port of MinIO (no scheme)."
    )
    s3_access_key: SecretStr = Field(default=SecretStr("minioadmin"), description="S3 key id.")
    s3_secret_key: SecretStr = Field(default=SecretStr("minioadmin"), description="S3 secret.")
    s3_bucket: str = Field(
        default="workspaces",
        pattern=r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$",
        description="Bucket for workspaces and transcripts; created at start-up if missing.",
    )
    s3_secure: bool = Field(default=False, description="Use HTTPS for the S3 API.")
    s3_region: str | None = Field(default=None, description="S3 region (MinIO ignores it).")

    # -- auth ----------------------------------------------------------------------------------
    jwt_secret: SecretStr = Field(
        default=SecretStr(""), description="Key that signs user tokens. Required."
    )
    jwt_secret_file: Path | None = Field(
        default=None,
        description="File holding JWT_SECRET, read when JWT_SECRET is not set (the compose "
        "stack generates one on first start).",
    )
    jwt_algorithm: Literal["HS256", "HS384", "HS512"] = Field(
        default="HS256", description="The only algorithm accepted for user tokens."
    )
    jwt_audience: str | None = Field(
        default=None, description="If set, user tokens must carry this `aud`."
    )
    token_ttl: int = Field(
        default=24 * 3600, ge=60, description="Lifetime in seconds of tokens minted by `token`."
    )
    session_token_secret: SecretStr | None = Field(
        default=None,
        description="Key that signs session capability tokens (default: derived from "
        "JWT_SECRET, so the two keys differ).",
    )
    session_token_ttl: int = Field(
        default=900, ge=60, description="Lifetime in seconds of a session's capability token."
    )

    # -- recursion limits ----------------------------------------------------------------------
    max_spawn_depth: int = Field(
        default=5, ge=0, description="Deepest level a spawned session may have (root = 0)."
    )
    max_children_per_session: int = Field(
        default=10, ge=0, description="Children one session may spawn (all it ever spawned)."
    )
    max_sessions_per_tree: int = Field(
        default=50, ge=1, description="Sessions in one tree, root included (all ever made)."
    )
    max_sessions_per_owner: int = Field(
        default=100, ge=1, description="Running (starting, ready, busy) sessions per owner."
    )
    max_sessions_per_engine: int = Field(
        default=200,
        ge=1,
        description="Running sessions one gateway instance keeps on its engine; beyond it "
        "create and spawn answer 429 with Retry-After.",
    )
    capacity_retry_after: int = Field(
        default=5, ge=1, description="Retry-After seconds of a 429 for a full owner or engine."
    )

    # -- API abuse -------------------------------------------------------------------------------
    max_request_bytes: int = Field(
        default=4 * 1024 * 1024,
        ge=1024,
        description="Largest request body outside file and archive uploads (which are bounded "
        "by WORKSPACE_MAX_BYTES); larger ones answer 413 before they are read.",
    )
    rate_limit_per_second: float = Field(
        default=20.0,
        ge=0,
        description="Requests per second one owner may make, sustained (0: no limit).",
    )
    rate_limit_burst: int = Field(
        default=100, ge=1, description="Requests one owner may make at once above the rate."
    )
    idempotency_ttl: int = Field(
        default=24 * 3600,
        ge=24 * 3600,
        description="Seconds an Idempotency-Key is remembered per owner (at least a day).",
    )

    # -- runtime -------------------------------------------------------------------------------
    docker_host: str | None = Field(
        default=None, description="Docker Engine URL; unset means the local socket."
    )
    instance_name: str = Field(
        default="default",
        pattern=r"^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}$",
        description="Labels this gateway's containers so gateways sharing an engine "
        "never touch each other's sessions.",
    )
    session_image: str = Field(
        default="cc-docker/session:latest", description="Image every session container runs."
    )
    session_network: str | None = Field(
        default=None,
        description="Docker network for session containers. It must keep containers apart "
        "(a bridge with enable_icc=false; the gateway creates it so when missing and refuses "
        "one that does not). Empty: the gateway manages ccd-<INSTANCE_NAME>-sessions.",
    )
    session_redis_url: str | None = Field(
        default=None,
        description="Where a session container reaches Redis: redis://host:port/db with no "
        "credentials (each session gets its own Redis user). Default: REDIS_URL's port and "
        "database on ccd-host, the name under which a container reaches the Docker host.",
    )
    session_gateway_url: str | None = Field(
        default=None,
        description="Gateway URL as seen from a session container (default http://ccd-host:PORT).",
    )
    session_cpus: float | None = Field(default=1.0, gt=0, description="CPUs per session.")
    session_memory: str | None = Field(
        default="2g",
        pattern=r"^\d+[bkmgBKMG]?$",
        description="Memory limit per session (docker units).",
    )
    session_pids_limit: int | None = Field(default=512, ge=16, description="Max processes.")
    session_disk_limit: str = Field(
        default="10g",
        pattern=r"^\d+[bkmgBKMG]?$",
        description="Most bytes a session may keep in /workspace and the CLI's state; checked "
        "every DISK_CHECK_INTERVAL seconds, a session over it is stopped (reason disk_limit).",
    )
    disk_check_interval: float = Field(
        default=30.0, gt=0, description="Seconds between checks of sessions' disk use."
    )
    session_tmp_size: str = Field(
        default="512m",
        pattern=r"^\d+[bkmgBKMG]?$",
        description="Size of the tmpfs at /tmp in a session (the root filesystem is read-only).",
    )
    session_home_size: str = Field(
        default="256m",
        pattern=r"^\d+[bkmgBKMG]?$",
        description="Size of the tmpfs holding the session user's home directory.",
    )
    session_nofile: int = Field(
        default=8192, ge=256, description="Open files per process in a session (nofile ulimit)."
    )
    session_log_max_size: str = Field(
        default="10m",
        pattern=r"^\d+[kmgKMG]$",
        description="Container log rotation: size of one log file (docker units: 10m).",
    )
    session_log_max_files: int = Field(
        default=3, ge=1, le=100, description="Container log rotation: files kept."
    )
    session_oom_score_adj: int = Field(
        default=500,
        ge=1,
        le=1000,
        description="OOM score adjustment of session containers: positive, so that the kernel "
        "kills a session before the gateway or the stores.",
    )
    session_permission_mode: PermissionMode = Field(
        default="bypassPermissions",
        description="Permission mode when a session asks for none; the container is the sandbox.",
    )
    session_extra_env: Annotated[dict[str, str], NoDecode] = Field(
        default_factory=dict,
        description="Extra variables for every session container, as NAME=value,NAME2=value2.",
    )
    container_timeout_default: int = Field(
        default=3600, ge=10, description="Idle seconds before a session is stopped."
    )
    session_start_timeout: float = Field(
        default=60.0, gt=0, description="Seconds a session may take to become ready."
    )
    session_stop_grace: float = Field(
        default=10.0, ge=0, description="Seconds between SIGTERM and SIGKILL on stop."
    )
    session_interrupt_grace: float = Field(
        default=5.0, ge=0, description="Seconds a stop waits for an interrupted turn to end."
    )
    session_idle_freeze: float = Field(
        default=10.0,
        ge=0,
        description="Seconds a session's CLI may sit idle (no turn, nothing read or written) "
        "before its wrapper stops it with SIGSTOP until the next prompt, interrupt or stop: an "
        "idle CLI's timers cost 0.4-0.7% of a core. 0: never.",
    )
    lease_ttl: float = Field(
        default=15.0,
        ge=3,
        description="Seconds a replica's lease on background work lasts unrenewed: a replica "
        "that dies loses its leases within this, and another takes over.",
    )
    session_start_concurrency: int = Field(
        default=16,
        ge=1,
        description="Session starts in flight per engine (INSTANCE_NAME), all replicas "
        "together; further sessions wait in starting and the start timeout counts from "
        "admission.",
    )
    reconcile_interval: float = Field(
        default=15.0, gt=0, description="Seconds between runtime/database reconciliations."
    )
    session_pool_size: int = Field(
        default=0,
        ge=0,
        le=1000,
        description="Containers kept started ahead of demand per engine, CLI booted, with no "
        "session's identity or secret: a new session with the default CLI options claims one "
        "and is ready in tens of milliseconds. 0: every session starts cold. Each costs an "
        "idle container's memory (about 150 MiB).",
    )
    session_pool_templates: Annotated[dict[str, PoolTemplate], NoDecode] = Field(
        default_factory=dict,
        description="Further warm pools, by name, for sessions created with other CLI options: "
        'JSON such as {"opus": {"size": 2, "config": {"model": "claude-opus-4-5"}}}. A session '
        "whose options give the same CLI command line as a template's takes one of its "
        "containers.",
    )
    session_pool_max_age: float = Field(
        default=3600.0,
        ge=10,
        description="Seconds a pooled container waits for a claim before it is replaced.",
    )

    # -- workspaces ----------------------------------------------------------------------------
    workspace_max_bytes: int = Field(
        default=1024**3, ge=1, description="Largest workspace saved or uploaded, in bytes."
    )
    workspace_max_files: int = Field(
        default=100_000, ge=1, description="Most entries (files, dirs, links) in a workspace."
    )
    workspace_snapshot_interval: float = Field(
        default=300.0,
        ge=0,
        description="Seconds between periodic saves of each running session (spread over the "
        "interval; skipped while its workspace's digest is unchanged); 0: off.",
    )

    # -- events --------------------------------------------------------------------------------
    event_stream_maxlen: int = Field(
        default=10_000, ge=100, description="Events kept per session for replay (approximate)."
    )
    chat_timeout_default: float = Field(
        default=600.0, gt=0, le=3600, description="Seconds a chat waits for its turn's result."
    )

    # -- egress ----------------------------------------------------------------------------------
    session_egress: Literal["none", "open"] = Field(
        default="none",
        description="What a session may reach beyond the gateway and Redis: none (no internet, "
        "no other host service, no cloud metadata; enforced by the engine's firewall) or open.",
    )

    # -- model access: the gateway's proxy holds the operator's credential ----------------------
    anthropic_api_key: SecretStr | None = Field(
        default=None, description="The operator's API key (x-api-key), used by the model proxy."
    )
    anthropic_auth_token: SecretStr | None = Field(
        default=None, description="Or a bearer token for the upstream (Authorization)."
    )
    claude_code_oauth_token: SecretStr | None = Field(
        default=None, description="Or a Claude OAuth token (Authorization, with the OAuth beta)."
    )
    anthropic_base_url: str = Field(
        default="https://api.anthropic.com",
        description="The upstream of the model proxy: the Anthropic Messages API.",
    )
    claude_code_max_retries: int | None = Field(
        default=None, ge=0, description="CLAUDE_CODE_MAX_RETRIES for sessions (CLI default 10)."
    )
    model_max_request_bytes: int = Field(
        default=32 * 1024 * 1024,
        ge=1024,
        description="Largest model request a session may send through the proxy (413 beyond).",
    )
    model_max_streams_per_owner: int = Field(
        default=32,
        ge=1,
        description="Model calls one owner's sessions may have in flight at once, all replicas "
        "together (429 beyond, which the CLI retries).",
    )
    model_upstream_timeout: float = Field(
        default=600.0, gt=0, description="Seconds the proxy waits for the upstream to answer."
    )
    model_caller_cache_seconds: float = Field(
        default=60.0,
        ge=0,
        description="How long a replica keeps a session's model-access check between its calls "
        "(forgotten at once, on every replica, when the session ends); 0: look it up every call.",
    )
    model_prices: Annotated[dict[str, dict[str, float]], NoDecode] = Field(
        default_factory=dict,
        description="Prices in USD per million tokens by model family, overriding the built-in "
        'table: JSON such as {"claude-opus-4": {"input": 15, "output": 75, "cache_write": 18.75, '
        '"cache_read": 1.5}}. The longest family that prefixes a model name applies.',
    )
    budget_wait: float = Field(
        default=30.0,
        ge=0,
        description="Seconds a model call of a tree near its budget waits for the tree's calls "
        "in flight to settle before it is refused.",
    )

    @field_validator("database_url")
    @classmethod
    def _asyncpg_only(cls, value: str) -> str:
        if not value.startswith("postgresql+asyncpg://"):
            raise ValueError("DATABASE_URL must start with postgresql+asyncpg://")
        return value

    @field_validator("session_extra_env")
    @classmethod
    def _no_model_credentials(cls, value: dict[str, str]) -> dict[str, str]:
        forbidden = sorted(set(value) & _MODEL_ACCESS_VARIABLES)
        if forbidden:
            raise ValueError(
                f"SESSION_EXTRA_ENV may not set {', '.join(forbidden)}: sessions reach the model "
                "only through the gateway's proxy, and no credential enters a container"
            )
        return value

    @field_validator("model_prices", "session_pool_templates", mode="before")
    @classmethod
    def _parse_json(cls, value: object, info: ValidationInfo) -> object:
        if isinstance(value, str):
            try:
                return json.loads(value) if value.strip() else {}
            except ValueError as exc:
                name = str(info.field_name).upper()
                raise ValueError(f"{name} is not JSON: {exc}") from None
        return value

    @field_validator("session_pool_templates")
    @classmethod
    def _template_names(cls, value: dict[str, PoolTemplate]) -> dict[str, PoolTemplate]:
        for name in value:
            if not TEMPLATE_NAME.fullmatch(name):
                raise ValueError(
                    f"pool template name {name!r}: 1 to 40 of a-z, 0-9 and '-' (it is a label)"
                )
        return value

    @field_validator("session_extra_env", mode="before")
    @classmethod
    def _parse_env_pairs(cls, value: object) -> object:
        if not isinstance(value, str):
            return value
        pairs: dict[str, str] = {}
        for item in filter(None, (part.strip() for part in value.split(","))):
            name, sep, val = item.partition("=")
            if not sep or not name:
                raise ValueError(f"SESSION_EXTRA_ENV item {item!r} is not NAME=value")
            pairs[name] = val
        return pairs

    @model_validator(mode="after")
    def _require_secret(self) -> Settings:
        if not self.jwt_secret.get_secret_value() and self.jwt_secret_file is not None:
            try:
                self.jwt_secret = SecretStr(self.jwt_secret_file.read_text().strip())
            except OSError as exc:
                raise ValueError(f"JWT_SECRET_FILE {self.jwt_secret_file}: {exc}") from None
        if len(self.jwt_secret.get_secret_value()) < 32:
            raise ValueError(
                "JWT_SECRET must be set to at least 32 characters "
                "(for example: python -c 'import secrets; print(secrets.token_urlsafe(32))')"
            )
        return self

    @property
    def session_token_key(self) -> str:
        """The capability-token key: explicit, or an HMAC of JWT_SECRET under a fixed label, so
        a user token can never pass as a session token or the reverse."""
        if self.session_token_secret is not None and self.session_token_secret.get_secret_value():
            return self.session_token_secret.get_secret_value()
        digest = hmac.new(
            self.jwt_secret.get_secret_value().encode(),
            b"cc-docker session capability tokens",
            hashlib.sha256,
        )
        return digest.hexdigest()

    @property
    def redis_user_key(self) -> str:
        """Key of the per-session Redis passwords (an HMAC of JWT_SECRET under its own label)."""
        digest = hmac.new(
            self.jwt_secret.get_secret_value().encode(),
            b"cc-docker session redis users",
            hashlib.sha256,
        )
        return digest.hexdigest()

    @field_validator("session_redis_url")
    @classmethod
    def _no_session_credentials(cls, value: str | None) -> str | None:
        if value and (urlsplit(value).username or urlsplit(value).password):
            raise ValueError(
                "SESSION_REDIS_URL must not carry credentials: each session gets its own "
                "Redis user, and the gateway's credentials never reach a container"
            )
        return value

    @property
    def gateway_redis_url(self) -> str:
        """REDIS_URL with the password from REDIS_PASSWORD_FILE filled in when it has none."""
        parts = urlsplit(self.redis_url)
        if parts.password or self.redis_password_file is None:
            return self.redis_url
        try:
            password = self.redis_password_file.read_text().strip()
        except OSError as exc:
            raise ValueError(f"REDIS_PASSWORD_FILE {self.redis_password_file}: {exc}") from None
        user = quote(parts.username or "default", safe="")
        netloc = f"{user}:{quote(password, safe='')}@{parts.hostname}"
        if parts.port:
            netloc += f":{parts.port}"
        return urlunsplit(parts._replace(netloc=netloc))

    @property
    def effective_session_redis_url(self) -> str:
        """Where containers reach Redis, without credentials."""
        if self.session_redis_url:
            return self.session_redis_url
        parts = urlsplit(self.redis_url)
        return f"redis://{SESSION_HOST_ALIAS}:{parts.port or 6379}{parts.path or '/0'}"

    @property
    def effective_session_gateway_url(self) -> str:
        return self.session_gateway_url or f"http://{SESSION_HOST_ALIAS}:{self.port}"

    @property
    def session_memory_bytes(self) -> int | None:
        return parse_size(self.session_memory) if self.session_memory else None

    @property
    def session_disk_limit_bytes(self) -> int:
        return parse_size(self.session_disk_limit)

    @property
    def model_proxy_url(self) -> str:
        """ANTHROPIC_BASE_URL inside a session: the gateway's model proxy."""
        return f"{self.effective_session_gateway_url}{MODEL_PROXY_PREFIX}"

    def session_cli_env(self) -> dict[str, str]:
        """CLI variables the gateway gives every session container. Never a credential: the
        CLI reaches the model through the gateway's proxy with its session's own key."""
        env: dict[str, str] = {}
        if self.claude_code_max_retries is not None:
            env["CLAUDE_CODE_MAX_RETRIES"] = str(self.claude_code_max_retries)
        return env
