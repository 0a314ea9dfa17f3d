"""Command line: ``python -m gateway [serve|migrate|token --sub NAME]``.

Everything is configured by environment variables (see .env.example).
"""

from __future__ import annotations

import argparse
import sys

from pydantic import ValidationError

from gateway.config import Settings


def _settings() -> Settings:
    try:
        return Settings()
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in error['loc']).upper() or 'settings'}: {error['msg']}"
            for error in exc.errors()
        )
        sys.exit(f"gateway: invalid configuration: {problems}")


def migrate(settings: Settings) -> None:
    from gateway.db.migrate import upgrade_head

    upgrade_head(settings.database_url)


def _configure_logging(settings: Settings) -> None:
    from gateway.logging_setup import configure_logging

    configure_logging(settings.log_level, settings.log_json)


def serve(settings: Settings, run_migrations: bool) -> None:
    import uvicorn

    from gateway import draining
    from gateway.main import create_app

    _configure_logging(settings)
    if run_migrations:
        migrate(settings)
    # SIGTERM drains first (gateway/draining.py): readiness off, streams closed with 1001,
    # then uvicorn's own shutdown with SHUTDOWN_GRACE for requests in flight.
    drain = draining.Drain()
    config = uvicorn.Config(
        create_app(settings, drain),
        host=settings.host,
        port=settings.port,
        log_config=None,
        proxy_headers=True,
        ws_max_size=16 * 1024 * 1024,
        ws_per_message_deflate=settings.websocket_compression,
        timeout_graceful_shutdown=settings.shutdown_grace,
    )
    server = draining.GracefulServer(
        config,
        drain,
        delay=settings.shutdown_drain_delay,
        stream_timeout=min(settings.shutdown_grace, draining.STREAM_CLOSE_TIMEOUT),
    )
    draining.serve(server)


def token(settings: Settings, subject: str, ttl: int | None) -> None:
    from gateway.security import mint_user_token

    print(mint_user_token(settings, subject, ttl))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m gateway", description=__doc__)
    commands = parser.add_subparsers(dest="command")
    serve_parser = commands.add_parser("serve", help="serve the API (the default)")
    serve_parser.add_argument(
        "--no-migrate", action="store_true", help="do not apply migrations before serving"
    )
    commands.add_parser("migrate", help="apply the database migrations (alembic upgrade head)")
    token_parser = commands.add_parser("token", help="print a user token")
    token_parser.add_argument("--sub", required=True, help="the user (owner) the token names")
    token_parser.add_argument("--ttl", type=int, default=None, help="lifetime in seconds")
    args = parser.parse_args(argv)

    settings = _settings()
    if args.command == "migrate":
        _configure_logging(settings)  # Alembic says what it applies, as under `serve`
        migrate(settings)
    elif args.command == "token":
        token(settings, args.sub, args.ttl)
    else:
        serve(settings, run_migrations=not getattr(args, "no_migrate", False))


if __name__ == "__main__":
    main()
