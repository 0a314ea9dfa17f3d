"""Session runtimes: the mechanism that runs one container per session."""

from gateway.runtime.base import (
    ContainerExit,
    ContainerSpec,
    ContainerState,
    ImageMissing,
    RuntimeFailure,
    SessionRuntime,
)

__all__ = [
    "ContainerExit",
    "ContainerSpec",
    "ContainerState",
    "ImageMissing",
    "RuntimeFailure",
    "SessionRuntime",
]
