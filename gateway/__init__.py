"""CC-Docker gateway: Claude Code sessions, each in its own Docker container."""

__version__ = "0.1.0"
