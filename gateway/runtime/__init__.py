"""Session runtimes: the mechanism that runs one container per session."""

from gateway.runtime.base import (
    ArchiveStream,
    ContainerExit,
    ContainerMissing,
    ContainerPhase,
    ContainerSpec,
    ContainerState,
    ExecResult,
    ImageMissing,
    IsolationUnavailable,
    PathMissing,
    RuntimeFailure,
    ScratchMount,
    SessionRuntime,
)

__all__ = [
    "ArchiveStream",
    "ContainerExit",
    "ContainerMissing",
    "ContainerPhase",
    "ContainerSpec",
    "ContainerState",
    "ExecResult",
    "ImageMissing",
    "IsolationUnavailable",
    "PathMissing",
    "RuntimeFailure",
    "ScratchMount",
    "SessionRuntime",
]
