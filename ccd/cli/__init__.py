"""The ``ccd`` command line (the console script of the ``client`` extra)."""

from __future__ import annotations


def main() -> None:
    from ccd.cli.app import main as run

    run()
