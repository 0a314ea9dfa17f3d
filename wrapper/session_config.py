"""A session's config as callers give it (``config`` on create and spawn), validated by the
gateway and the client SDK.

Its container sees only the part its CLI is started with (``protocol.CliConfig``, the
``CCD_SESSION_CONFIG`` variable): the wrapper never imports this module on its way to a ready
CLI, because pydantic's import and model building cost a cold start about a tenth of a second
of the session's one CPU.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.json_schema import SkipJsonSchema

from wrapper.protocol import NO_NUL, CliConfig, PermissionMode

ToolName = Annotated[str, Field(pattern=NO_NUL)]


class Budget(BaseModel):
    """What a whole spawn tree may spend on the model (set on its root; either or both)."""

    # The schema says what the validator enforces: at least one of the two, neither null.
    model_config = ConfigDict(extra="forbid", json_schema_extra={"minProperties": 1})

    # Constraints on the number itself: on the union they would be applied to a null too.
    max_tokens: Annotated[int, Field(ge=1, le=10**12)] | SkipJsonSchema[None] = Field(
        default=None,
        description="Tokens of every kind (input, output, cache writes and reads) the tree may "
        "use.",
    )
    max_cost_usd: Annotated[float, Field(gt=0, le=10**6)] | SkipJsonSchema[None] = Field(
        default=None, description="USD the tree may spend (MODEL_PRICES)."
    )

    @model_validator(mode="after")
    def _something(self) -> Budget:
        if self.max_tokens is None and self.max_cost_usd is None:
            raise ValueError("a budget needs max_tokens, max_cost_usd or both")
        return self


class SessionConfig(BaseModel):
    """What a caller may choose about the CLI in a session. Unset fields use gateway defaults."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = Field(
        default=None,
        min_length=1,
        max_length=200,
        pattern=NO_NUL,
        description="Model name passed to --model.",
    )
    permission_mode: PermissionMode | None = Field(
        default=None, description="--permission-mode; default SESSION_PERMISSION_MODE."
    )
    allowed_tools: list[ToolName] | None = Field(
        default=None, max_length=200, description="--allowedTools, e.g. ['Bash', 'Read']."
    )
    disallowed_tools: list[ToolName] | None = Field(
        default=None, max_length=200, description="--disallowedTools."
    )
    max_turns: int | None = Field(
        default=None, ge=1, le=1000, description="--max-turns: model round trips per chat turn."
    )
    system_prompt: str | None = Field(
        default=None,
        max_length=100_000,
        pattern=NO_NUL,
        description="Replaces the CLI's system prompt.",
    )
    append_system_prompt: str | None = Field(
        default=None,
        max_length=100_000,
        pattern=NO_NUL,
        description="Appended to the CLI's system prompt.",
    )
    timeout: int | None = Field(
        default=None,
        ge=10,
        le=7 * 24 * 3600,
        description="Idle seconds before the session is stopped "
        "(default CONTAINER_TIMEOUT_DEFAULT).",
    )
    budget: Budget | None = Field(
        default=None,
        description="Model budget of the whole spawn tree rooted at this session (roots only: "
        "children count toward their root's and cannot change it).",
    )

    def cli(self) -> CliConfig:
        """The part of this config the session's CLI is started with (what its container
        is given): options only the gateway reads, like the budget or the idle timeout, are
        left out."""
        return CliConfig.from_mapping(self.model_dump(include=CliConfig.field_names()))
