"""Session runtimes: the mechanism that runs one container per session."""

from gateway.runtime.base import (
    ArchiveStream,
    ContainerExit,
    ContainerSpec,
    ContainerState,
    ExecResult,
    ImageMissing,
    PathMissing,
    RuntimeFailure,
    SessionRuntime,
)

__all__ = [
    "ArchiveStream",
    "ContainerExit",
    "ContainerSpec",
    "ContainerState",
    "ExecResult",
    "ImageMissing",
    "PathMissing",
    "RuntimeFailure",
    "SessionRuntime",
]
