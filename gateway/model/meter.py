"""Reading what a model call used from the upstream's own answer, as the bytes pass through.

A streamed answer reports usage in ``message_start`` (input and cache tokens, and the output so
far) and ``message_delta`` (cumulative counts): the meter keeps the latest value of each field.
A JSON answer has a ``usage`` object. The bytes themselves are never changed or held: the
meter keeps only an unfinished line between chunks.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from typing import Any

USAGE_FIELDS = (
    "input_tokens",
    "output_tokens",
    "cache_creation_input_tokens",
    "cache_read_input_tokens",
)
_INTERESTING = (b'"message_start"', b'"message_delta"')
_MAX_LINE = 1024 * 1024  # a usage line is small; longer lines are content, never parsed


@dataclass
class Usage:
    input_tokens: int = 0
    output_tokens: int = 0
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return sum(getattr(self, f.name) for f in fields(self))

    def merge(self, reported: Any) -> None:
        """Take each count the upstream reported (they are cumulative, never increments)."""
        if not isinstance(reported, dict):
            return
        for name in USAGE_FIELDS:
            value = reported.get(name)
            if isinstance(value, int) and value >= 0:
                setattr(self, name, value)


class StreamMeter:
    """Fed the raw bytes of a server-sent-events answer, chunk by chunk."""

    def __init__(self, model: str) -> None:
        self.model = model
        self.usage = Usage()
        self._partial = b""

    def feed(self, chunk: bytes) -> None:
        data = self._partial + chunk
        lines = data.split(b"\n")
        self._partial = lines.pop()
        if len(self._partial) > _MAX_LINE:
            self._partial = b""  # content, not a usage line: skip the rest of it cheaply
        for line in lines:
            if line.startswith(b"data:") and any(tag in line for tag in _INTERESTING):
                self._event(line[5:])

    def _event(self, payload: bytes) -> None:
        try:
            event = json.loads(payload)
        except ValueError:
            return
        if not isinstance(event, dict):
            return
        if event.get("type") == "message_start":
            message = event.get("message") or {}
            if isinstance(message.get("model"), str):
                self.model = message["model"]
            self.usage.merge(message.get("usage"))
        elif event.get("type") == "message_delta":
            self.usage.merge(event.get("usage"))


def usage_of_json(body: bytes, model: str) -> tuple[str, Usage]:
    """The model and usage a (non-streamed) JSON answer reports."""
    usage = Usage()
    try:
        answer = json.loads(body)
    except ValueError:
        return model, usage
    if isinstance(answer, dict):
        usage.merge(answer.get("usage"))
        if isinstance(answer.get("model"), str):
            model = answer["model"]
    return model, usage
