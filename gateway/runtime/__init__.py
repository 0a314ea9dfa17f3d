"""Session runtimes: the mechanism that runs one container per session."""

from gateway.runtime.base import (
    OPEN_EGRESS,
    ArchiveStream,
    ContainerExit,
    ContainerMissing,
    ContainerPhase,
    ContainerSpec,
    ContainerState,
    EgressPolicy,
    ExecResult,
    ImageMissing,
    IsolationUnavailable,
    PathMissing,
    RuntimeFailure,
    ScratchMount,
    SessionRuntime,
)

__all__ = [
    "OPEN_EGRESS",
    "ArchiveStream",
    "ContainerExit",
    "ContainerMissing",
    "ContainerPhase",
    "ContainerSpec",
    "ContainerState",
    "EgressPolicy",
    "ExecResult",
    "ImageMissing",
    "IsolationUnavailable",
    "PathMissing",
    "RuntimeFailure",
    "ScratchMount",
    "SessionRuntime",
]
