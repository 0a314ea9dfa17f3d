"""The wire contract between the gateway and the wrapper inside a session container.

Both sides import this module and nothing else of each other: the environment the gateway gives
a container, every Redis key name, the fields of a stream entry and the types of the messages
that flow each way. Changing anything here changes the protocol; keep both sides in one release.

Redis layout, all under one per-session prefix so that a container's Redis user can later be
limited to ``ccd:session:<id>:*``:

- ``ccd:session:<id>:out``: output stream (wrapper and gateway XADD, gateway XREADs). Each entry
  is one event; its stream id is the cursor clients use for ``?after=``.
- ``ccd:session:<id>:in``: input stream (gateway XADDs prompts and interrupts, wrapper XREADs).
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, ClassVar, Literal, TypeVar

KEY_PREFIX = "ccd"


def session_key_prefix(session_id: str) -> str:
    """Every key a session's container may touch starts with this prefix."""
    return f"{KEY_PREFIX}:session:{session_id}:"


def output_stream_key(session_id: str) -> str:
    return f"{session_key_prefix(session_id)}out"


def input_stream_key(session_id: str) -> str:
    return f"{session_key_prefix(session_id)}in"


class Source(StrEnum):
    """Who produced an event: the CLI verbatim, or CC-Docker (gateway or wrapper)."""

    CLAUDE = "claude"
    GATEWAY = "gateway"


# Fields of one output stream entry. ``data`` is the event as a JSON string (for the CLI, the
# stdout line exactly as printed); ``type`` repeats its ``type`` so readers can route without
# parsing; ``turn`` names the chat turn the event belongs to, empty outside a turn.
FIELD_SOURCE = "source"
FIELD_TYPE = "type"
FIELD_TURN = "turn"
FIELD_DATA = "data"
# On ``result`` entries only: the turn's own cost in USD. The CLI's ``total_cost_usd`` adds up
# every turn of its process, so only the wrapper, which sees process boundaries, can tell.
FIELD_TURN_COST = "turn_cost"


class GatewayEvent(StrEnum):
    """Types of the events CC-Docker itself adds to a session's output stream."""

    STATUS = "status"  # {"status", "reason"?}: the session's status changed
    TURN_STARTED = "turn_started"  # {"turn_id", "prompt"}: a prompt was accepted
    TURN_FAILED = "turn_failed"  # {"reason", "interrupted"}: a turn ended without a CLI result
    INTERRUPT_SENT = "interrupt_sent"  # {"turn_id"}: an interrupt reached the CLI
    CLI_READY = "cli_ready"  # {"claude_session_id", "resumed", "warm"}: the CLI answered initialize
    CLI_STDERR = "cli_stderr"  # {"line"}: one line the CLI wrote to stderr
    CLI_EXITED = "cli_exited"  # {"exit_code", "expected"}: the CLI process ended
    CLI_OUTPUT_INVALID = "cli_output_invalid"  # {"line"}: a stdout line that is not JSON
    WRAPPER_FATAL = "wrapper_fatal"  # {"reason"}: the wrapper gives up; the container will exit
    ERROR = "error"  # {"code", "message"}: anything else that went wrong
    WORKSPACE_SAVED = "workspace_saved"  # {"reason", "uploaded", "deleted", ...}: files stored
    WORKSPACE_SAVE_FAILED = "workspace_save_failed"  # {"reason", "error", "kept_container"}
    # On a parent's stream, about its direct children:
    CHILD_SPAWNED = "child_spawned"  # {"child_id", "depth", "prompt"}
    CHILD_FINISHED = "child_finished"  # {"child_id", "turn_id", "status", "result", "is_error"}
    CHILD_FAILED = "child_failed"  # {"child_id", "reason"}
    CHILD_STOPPED = "child_stopped"  # {"child_id", "reason"}
    # Events were lost before a reader saw them: {"after", "first_available", "reason"}. Sent to
    # one reader (id null) when its cursor is older than what is kept, or written into the
    # stream (with an id) when the gateway found the stream itself lost or broken.
    GAP = "gap"
    # The session's tree spent its model budget: {"root_id", "spent_tokens", "max_tokens",
    # "spent_cost_usd", "max_cost_usd"}. Its model calls are refused from now on.
    BUDGET_EXCEEDED = "budget_exceeded"


class InputType(StrEnum):
    PROMPT = "prompt"
    INTERRUPT = "interrupt"


@dataclass(frozen=True, kw_only=True)
class PromptInput:
    """A user turn for the CLI. ``turn_id`` tags every output line until the turn's result."""

    type: ClassVar[InputType] = InputType.PROMPT
    turn_id: str
    prompt: str

    def to_json(self) -> str:
        return _dumps({"type": self.type.value, "turn_id": self.turn_id, "prompt": self.prompt})

    @classmethod
    def from_json(cls, data: str | bytes) -> PromptInput:
        fields = _input_fields(data, cls.type, {"turn_id", "prompt"})
        return cls(turn_id=_text(fields, "turn_id"), prompt=_text(fields, "prompt"))


@dataclass(frozen=True, kw_only=True)
class InterruptInput:
    """Ask the CLI to abort the running turn (its ``interrupt`` control request)."""

    type: ClassVar[InputType] = InputType.INTERRUPT
    turn_id: str | None = None

    def to_json(self) -> str:
        return _dumps({"type": self.type.value, "turn_id": self.turn_id})

    @classmethod
    def from_json(cls, data: str | bytes) -> InterruptInput:
        fields = _input_fields(data, cls.type, {"turn_id"})
        return cls(turn_id=_optional(fields, "turn_id", str))


InputMessage = PromptInput | InterruptInput


def encode_input(message: InputMessage) -> dict[str, str]:
    """Fields of an input stream entry."""
    return {FIELD_TYPE: str(message.type), FIELD_DATA: message.to_json()}


def decode_input(fields: Mapping[str, str]) -> InputMessage:
    """Parse an input stream entry; raises ``ValueError`` for anything unknown or malformed."""
    kind = fields.get(FIELD_TYPE)
    data = fields.get(FIELD_DATA, "")
    if kind == InputType.PROMPT:
        return PromptInput.from_json(data)
    if kind == InputType.INTERRUPT:
        return InterruptInput.from_json(data)
    raise ValueError(f"unknown input type {kind!r}")


def encode_event(
    source: Source,
    event_type: str,
    data: str,
    turn_id: str | None = None,
    turn_cost: float | None = None,
) -> dict[str, str]:
    """Fields of an output stream entry; ``data`` must already be a JSON object string."""
    fields = {
        FIELD_SOURCE: str(source),
        FIELD_TYPE: event_type,
        FIELD_TURN: turn_id or "",
        FIELD_DATA: data,
    }
    if turn_cost is not None:
        fields[FIELD_TURN_COST] = repr(turn_cost)
    return fields


def gateway_event(
    event_type: GatewayEvent, turn_id: str | None = None, **payload: Any
) -> dict[str, str]:
    """Fields of an output stream entry for an event CC-Docker itself reports."""
    body = {"type": str(event_type), **payload}
    return encode_event(
        Source.GATEWAY, str(event_type), json.dumps(body, separators=(",", ":")), turn_id
    )


PermissionMode = Literal["default", "acceptEdits", "bypassPermissions", "plan", "dontAsk"]
# Text a session is given never holds NUL: PostgreSQL's text and jsonb cannot store it, and a
# process's arguments and environment cannot carry it.
NO_NUL = r"^[^\x00]*$"


@dataclass(frozen=True, kw_only=True)
class CliConfig:
    """The part of a session's config its CLI is started with (``CCD_SESSION_CONFIG``): the
    CLI fields of ``session_config.SessionConfig``, as the gateway validated them. Unset fields
    use the gateway's defaults (``ContainerEnv.permission_mode``) or the CLI's own."""

    model: str | None = None
    permission_mode: str | None = None
    allowed_tools: tuple[str, ...] | None = None
    disallowed_tools: tuple[str, ...] | None = None
    max_turns: int | None = None
    system_prompt: str | None = None
    append_system_prompt: str | None = None

    @classmethod
    def field_names(cls) -> set[str]:
        return {field.name for field in dataclasses.fields(cls)}

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> CliConfig:
        """Raises ``ValueError`` for an unknown field or a value of the wrong type."""
        _no_unknown(values, cls.field_names(), "session config")
        return cls(
            model=_optional(values, "model", str),
            permission_mode=_optional(values, "permission_mode", str),
            allowed_tools=_optional_texts(values, "allowed_tools"),
            disallowed_tools=_optional_texts(values, "disallowed_tools"),
            max_turns=_optional(values, "max_turns", int),
            system_prompt=_optional(values, "system_prompt", str),
            append_system_prompt=_optional(values, "append_system_prompt", str),
        )

    def to_json(self) -> str:
        """The set fields only."""
        values = {
            name: list(value) if isinstance(value, tuple) else value
            for name, value in dataclasses.asdict(self).items()
            if value is not None
        }
        return _dumps(values)


ENV_SESSION_ID = "CCD_SESSION_ID"
ENV_REDIS_URL = "CCD_REDIS_URL"
ENV_GATEWAY_URL = "CCD_GATEWAY_URL"
ENV_CLAUDE_SESSION_ID = "CCD_CLAUDE_SESSION_ID"
ENV_SESSION_CONFIG = "CCD_SESSION_CONFIG"
ENV_PERMISSION_MODE = "CCD_PERMISSION_MODE"
ENV_STREAM_MAXLEN = "CCD_STREAM_MAXLEN"
ENV_IDLE_FREEZE = "CCD_IDLE_FREEZE"
# The session's capability token (a JWT for the gateway's API, scoped to this session and its
# descendants). Short-lived: the wrapper refreshes it and keeps the current one in
# ``session_token_file``. Not part of ``ContainerEnv``: it is minted when the container starts.
ENV_SESSION_TOKEN = "CCD_SESSION_TOKEN"
SESSION_TOKEN_FILE = ".ccd/session-token"  # relative to the container user's HOME
# A cold-started session's model key (a JWT good for the model proxy only, while this run of
# the session lasts): the CLI gets it as ANTHROPIC_API_KEY, so it boots without running an
# apiKeyHelper. Minted with the container, like the token.
ENV_MODEL_KEY = "CCD_MODEL_KEY"
# Where ``ccd-agent`` finds its session's id when the CLI was started before the container
# had one (a pooled container: see ``PoolClaim``); relative to HOME like the token file.
SESSION_ID_FILE = ".ccd/session-id"

# A pooled container: started ahead of demand, with no session's identity or secret. Its
# environment has the contract minus ``session_id`` and ``redis_url``, plus these. Its Redis
# user may only pop its own claim list; its model key means nothing until a claim binds it.
ENV_POOL_ID = "CCD_POOL_ID"
ENV_POOL_REDIS_URL = "CCD_POOL_REDIS_URL"
ENV_POOL_MODEL_KEY = "CCD_POOL_MODEL_KEY"


def pool_claim_key(pool_id: str) -> str:
    """The list a pooled container's wrapper waits on (BLPOP) for its one claim."""
    return f"ccd:pool:{pool_id}:claim"


@dataclass(frozen=True, kw_only=True)
class PoolClaim:
    """What a claim hands a pooled container: the session it now is, and its credentials."""

    session_id: str
    redis_url: str = dataclasses.field(repr=False)
    session_token: str = dataclasses.field(repr=False)

    def to_json(self) -> str:
        return _dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, data: str | bytes) -> PoolClaim:
        fields = _json_object(data, "pool claim")
        _no_unknown(fields, {"session_id", "redis_url", "session_token"}, "pool claim")
        return cls(
            session_id=_text(fields, "session_id"),
            redis_url=_text(fields, "redis_url"),
            session_token=_text(fields, "session_token"),
        )


MIN_STREAM_MAXLEN = 100


@dataclass(frozen=True, kw_only=True)
class ContainerEnv:
    """The environment the gateway gives a session container (beside the CLI's own variables).

    Plain data, read with the standard library: the wrapper reads it before it starts the CLI,
    and in a one-CPU container every millisecond spent before that delays the session."""

    session_id: str
    redis_url: str = dataclasses.field(repr=False)
    gateway_url: str
    claude_session_id: str
    """UUID passed to --session-id / --resume."""
    config: CliConfig = CliConfig()
    permission_mode: str
    """Permission mode when the config sets none."""
    stream_maxlen: int
    """Approximate MAXLEN of the output stream (at least ``MIN_STREAM_MAXLEN``)."""
    idle_freeze: float = 0.0
    """Seconds the CLI may sit idle before it is stopped until it is needed; 0: never."""

    def __post_init__(self) -> None:
        if self.stream_maxlen < MIN_STREAM_MAXLEN:
            raise ValueError(f"{ENV_STREAM_MAXLEN} must be at least {MIN_STREAM_MAXLEN}")
        if not self.idle_freeze >= 0:
            raise ValueError(f"{ENV_IDLE_FREEZE} must be 0 or more seconds")

    def to_env(self) -> dict[str, str]:
        return {
            ENV_SESSION_ID: self.session_id,
            ENV_REDIS_URL: self.redis_url,
            ENV_GATEWAY_URL: self.gateway_url,
            ENV_CLAUDE_SESSION_ID: self.claude_session_id,
            ENV_SESSION_CONFIG: self.config.to_json(),
            ENV_PERMISSION_MODE: self.permission_mode,
            ENV_STREAM_MAXLEN: str(self.stream_maxlen),
            ENV_IDLE_FREEZE: str(self.idle_freeze),
        }

    def pooled_env(self) -> dict[str, str]:
        """The contract without the session's identity: what a pooled container is given."""
        env = self.to_env()
        del env[ENV_SESSION_ID], env[ENV_REDIS_URL]
        return env

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> ContainerEnv:
        """Read the contract back; raises ``KeyError`` or ``ValueError`` when it is broken."""
        env = os.environ if env is None else env
        config = _json_object(env.get(ENV_SESSION_CONFIG) or "{}", ENV_SESSION_CONFIG)
        return cls(
            session_id=env[ENV_SESSION_ID],
            redis_url=env[ENV_REDIS_URL],
            gateway_url=env[ENV_GATEWAY_URL],
            claude_session_id=env[ENV_CLAUDE_SESSION_ID],
            config=CliConfig.from_mapping(config),
            permission_mode=env.get(ENV_PERMISSION_MODE, "bypassPermissions"),
            stream_maxlen=int(env.get(ENV_STREAM_MAXLEN, "10000")),
            idle_freeze=float(env.get(ENV_IDLE_FREEZE, "0")),
        )


# The name under which a session container reaches the machine that runs it (and through it
# the gateway and Redis): the runtime maps it to the host's address on the session network.
SESSION_HOST_ALIAS = "ccd-host"
# Where the gateway serves the Anthropic Messages API for its sessions (below its own URL): the
# CLI's ANTHROPIC_BASE_URL. The CLI authenticates with its session's capability token, read
# through an apiKeyHelper (the token is refreshed while the CLI runs; its environment is not).
MODEL_PROXY_PREFIX = "/model"

# What the session image promises (container/Dockerfile): the user the CLI runs as, its home,
# and the working directory whose files are the session's workspace.
CONTAINER_UID = 10001
CONTAINER_GID = 10001
CONTAINER_HOME = "/home/claude"
WORKSPACE_DIR = "/workspace"
# The CLI's own state (transcripts among it): kept across a stop like the workspace, so a
# stopped container's conversation can still be saved. The rest of the home is scratch.
CLAUDE_STATE_DIR = f"{CONTAINER_HOME}/.claude"

# Fixed CLI variables for headless use in a container (see CLAUDE_CLI.md).
HEADLESS_CLI_VARIABLES = {
    "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
    "DISABLE_AUTOUPDATER": "1",
    "DISABLE_TELEMETRY": "1",
    "DISABLE_ERROR_REPORTING": "1",
}


# -- reading JSON by hand (see ContainerEnv for why not pydantic) --------------------------

_T = TypeVar("_T")


def _dumps(value: dict[str, Any]) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _json_object(data: str | bytes, what: str) -> dict[str, Any]:
    try:
        value = json.loads(data)
    except ValueError as exc:
        raise ValueError(f"{what}: not JSON ({exc})") from None
    if not isinstance(value, dict):
        raise ValueError(f"{what}: not a JSON object")
    return value


def _no_unknown(values: Mapping[str, Any], known: set[str], what: str) -> None:
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"{what}: unknown field(s) {', '.join(unknown)}")


def _input_fields(data: str | bytes, kind: InputType, names: set[str]) -> dict[str, Any]:
    fields = _json_object(data, f"{kind} input")
    _no_unknown(fields, {"type", *names}, f"{kind} input")
    if fields.get("type", kind.value) != kind.value:
        raise ValueError(f"{kind} input: type is {fields['type']!r}")
    return fields


def _optional(values: Mapping[str, Any], name: str, kind: type[_T]) -> _T | None:
    value = values.get(name)
    # bool is an int to Python, not to JSON: True is no number of turns.
    if value is None or (isinstance(value, kind) and not isinstance(value, bool)):
        return value
    raise ValueError(f"{name}: expected {kind.__name__} or null, got {type(value).__name__}")


def _text(values: Mapping[str, Any], name: str) -> str:
    value = _optional(values, name, str)
    if value is None:
        raise ValueError(f"{name}: a string is required")
    return value


def _optional_texts(values: Mapping[str, Any], name: str) -> tuple[str, ...] | None:
    value = _optional(values, name, list)
    if value is None:
        return None
    if not all(isinstance(item, str) for item in value):
        raise ValueError(f"{name}: expected a list of strings")
    return tuple(value)
