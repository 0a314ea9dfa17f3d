"""Every machine-readable error code the API answers, with its HTTP status and its meaning.

The one registry: error classes and raises name a member (``code=ErrorCode.SESSION_BUSY``),
never a string, and a code's status is the response's status (``GatewayError.status``).
SPEC.md's "Error codes" table lists exactly these codes with these statuses (a test keeps the
two, and the code base, in step). Members are strings, so they render in JSON as themselves.
"""

from __future__ import annotations

from enum import StrEnum


class ErrorCode(StrEnum):
    status: int
    meaning: str

    def __new__(cls, value: str, status: int, meaning: str) -> ErrorCode:
        member = str.__new__(cls, value)
        member._value_ = value
        member.status = status
        member.meaning = meaning
        return member

    # 401: the caller is not authenticated (always with `WWW-Authenticate: Bearer`)
    MISSING_TOKEN = "missing_token", 401, "No bearer token was sent."
    INVALID_TOKEN = (
        "invalid_token",
        401,
        "The token's signature, algorithm, audience or claims are wrong.",
    )
    TOKEN_EXPIRED = "token_expired", 401, "The token's `exp` has passed."
    TOKEN_REVOKED = "token_revoked", 401, "A session token whose session is no longer running."

    # 403: refused by policy; retrying the same request cannot help
    SESSION_TOKEN_NOT_ALLOWED = (
        "session_token_not_allowed",
        403,
        "A session token called a user's route, or asked for another session's token.",
    )
    WORKSPACE_NOT_ALLOWED = (
        "workspace_not_allowed",
        403,
        "A session token asked for a child workspace its tree may not give.",
    )
    SPAWN_DEPTH_EXCEEDED = (
        "spawn_depth_exceeded",
        403,
        "The child would be deeper than `MAX_SPAWN_DEPTH`.",
    )
    CHILDREN_LIMIT_REACHED = (
        "children_limit_reached",
        403,
        "The parent has spawned `MAX_CHILDREN_PER_SESSION` children.",
    )
    TREE_LIMIT_REACHED = (
        "tree_limit_reached",
        403,
        "The tree holds `MAX_SESSIONS_PER_TREE` sessions.",
    )

    # 404: nothing there for this caller
    NOT_FOUND = "not_found", 404, "No route has this path."
    SESSION_NOT_FOUND = (
        "session_not_found",
        404,
        "No such session for this caller (another owner's session answers the same).",
    )
    WORKSPACE_NOT_FOUND = "workspace_not_found", 404, "No such workspace for this caller."
    FILE_NOT_FOUND = "file_not_found", 404, "No such path in the workspace."
    OBJECT_MISSING = (
        "object_missing",
        404,
        "The store holds no object for a file the workspace lists.",
    )

    # 405
    METHOD_NOT_ALLOWED = (
        "method_not_allowed",
        405,
        "The path exists, not with this method (`Allow` lists those it has).",
    )

    # 409: the resource's current state refuses the request
    CONFLICT = "conflict", 409, "The session changed while the request ran; retry."
    SESSION_BUSY = "session_busy", 409, "A turn is running; one turn runs at a time."
    SESSION_NOT_RUNNING = (
        "session_not_running",
        409,
        "The session has stopped or failed (or did while the request waited).",
    )
    SESSION_NOT_RESUMABLE = (
        "session_not_resumable",
        409,
        "Only a stopped or failed session can be resumed.",
    )
    NO_RUNNING_TURN = "no_running_turn", 409, "There is no turn to interrupt."
    WAIT_ON_SELF = "wait_on_self", 409, "A session token waited for its own session."
    PARENT_NOT_READY = (
        "parent_not_ready",
        409,
        "An `inherit` workspace needs the parent's container, which it has not yet.",
    )
    WORKSPACE_IN_USE = "workspace_in_use", 409, "A running session writes this workspace back."
    WORKSPACE_OWNED_BY_SESSION = (
        "workspace_owned_by_session",
        409,
        "A session's own workspace goes with its session: delete the session.",
    )
    WORKSPACE_READ_ONLY = (
        "workspace_read_only",
        409,
        "The session has a read-only copy of its workspace, which is never saved.",
    )
    NO_WORKSPACE = "no_workspace", 409, "The session has no workspace to save."
    PATH_CONFLICT = (
        "path_conflict",
        409,
        "A file stands where a directory must be, or the reverse (or the root was named).",
    )
    DELETE_FAILED = "delete_failed", 409, "The container refused to delete the path."

    # 413
    REQUEST_TOO_LARGE = "request_too_large", 413, "The body is over `MAX_REQUEST_BYTES`."
    WORKSPACE_TOO_LARGE = (
        "workspace_too_large",
        413,
        "The upload or save would pass `WORKSPACE_MAX_BYTES` or `WORKSPACE_MAX_FILES`.",
    )

    # 422: the request itself is wrong
    VALIDATION_ERROR = (
        "validation_error",
        422,
        "A malformed or out-of-range body, parameter or header (`details` names them).",
    )
    INVALID_CURSOR = "invalid_cursor", 422, "A cursor this API did not return."
    INVALID_SESSION_ID = "invalid_session_id", 422, "The WebSocket's session id is not a UUID."
    INVALID_IDEMPOTENCY_KEY = (
        "invalid_idempotency_key",
        422,
        "`Idempotency-Key` is not 1 to 255 printable ASCII characters without spaces at its ends.",
    )
    IDEMPOTENCY_KEY_REUSED = (
        "idempotency_key_reused",
        422,
        "The `Idempotency-Key` was used with another request body.",
    )
    BUDGET_NOT_ALLOWED = (
        "budget_not_allowed",
        422,
        "A spawn set `config.budget`: a child counts toward its root's budget.",
    )
    INVALID_WORKSPACE = (
        "invalid_workspace",
        422,
        "`inherit` for a root, a session's own by name (the body's schema refuses both first).",
    )
    UNSAFE_PATH = (
        "unsafe_path",
        422,
        "The path is empty, absolute or too long, or has a `..`, a control character or `\\`, "
        "or is not UTF-8 once percent-decoded.",
    )
    NOT_A_FILE = "not_a_file", 422, "The path names a directory or a link, not a regular file."
    INVALID_ARCHIVE = "invalid_archive", 422, "The body is not a tar.gz archive."
    UNSAFE_ARCHIVE = (
        "unsafe_archive",
        422,
        "An archive member leaves the workspace, or is a device, a fifo or a hard link.",
    )
    INVALID_MESSAGE = (
        "invalid_message",
        422,
        "(WebSocket `error` notice) a message neither a prompt nor an interrupt.",
    )

    # 429: refused for now; retry after `Retry-After` seconds
    RATE_LIMITED = (
        "rate_limited",
        429,
        "The owner's request rate is over `RATE_LIMIT_PER_SECOND` / `RATE_LIMIT_BURST`.",
    )
    OWNER_LIMIT_REACHED = (
        "owner_limit_reached",
        429,
        "The owner runs `MAX_SESSIONS_PER_OWNER` sessions.",
    )
    ENGINE_AT_CAPACITY = (
        "engine_at_capacity",
        429,
        "This gateway runs `MAX_SESSIONS_PER_ENGINE` sessions.",
    )

    # 5xx: the gateway or what it depends on failed
    INTERNAL_ERROR = "internal_error", 500, "A bug: the gateway logged a traceback."
    TURN_FAILED = "turn_failed", 502, "The CLI died during the turn (it is restarted)."
    STORE_ERROR = "store_error", 502, "The object store refused an operation."
    STAGED_OBJECT_LOST = (
        "staged_object_lost",
        502,
        "A save's staged bytes vanished from the store before they were moved into place.",
    )
    CONTENT_MISMATCH = (
        "content_mismatch",
        502,
        "A stored object does not hold the bytes its manifest entry describes.",
    )
    RUNTIME_UNAVAILABLE = (
        "runtime_unavailable",
        503,
        "The Docker engine cannot be reached or refused the container.",
    )
    IMAGE_NOT_FOUND = (
        "image_not_found",
        503,
        "The session image is not present on the Docker engine.",
    )
    DATABASE_UNAVAILABLE = (
        "database_unavailable",
        503,
        "PostgreSQL cannot be reached (`Retry-After: 5`).",
    )
    EVENTS_UNAVAILABLE = (
        "events_unavailable",
        503,
        "Redis cannot be reached: no prompt, event or session user could be read or "
        "written (a request that met a Redis error also gets `Retry-After: 2`).",
    )
    STORE_UNAVAILABLE = "store_unavailable", 503, "The object store cannot be reached."
    SHUTTING_DOWN = (
        "shutting_down",
        503,
        "This gateway is draining: connect again (another replica answers).",
    )
    WORKSPACE_UNSAVED = (
        "workspace_unsaved",
        503,
        "The session's last container could not be saved yet; resume waits for the store.",
    )
    TURN_TIMEOUT = "turn_timeout", 504, "The chat's `timeout` passed; the turn goes on."
    WAIT_TIMEOUT = "wait_timeout", 504, "The wait's `timeout` passed with a turn still running."
