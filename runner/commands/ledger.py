"""`flowrun ledger copy SRC DST`: a campaign's history from one ledger into another (a SQLite
file or a postgresql:// URL each), e.g. from a laptop's file into the database CI uses.
What is copied and what is refused: runner/ledger/copy.py."""

from __future__ import annotations

import click

from runner.errors import EXIT_OK


def copy(source: str, destination: str) -> int:
    from runner.ledger.copy import copy_ledger

    copied = copy_ledger(source, destination)
    tables = ", ".join(f"{table} {n}" for table, n in copied.rows.items())
    rate = copied.total / copied.seconds if copied.seconds > 0 else 0.0
    click.echo(f"copied {copied.source} -> {copied.destination}")
    click.echo(f"rows: {tables} ({copied.seconds:.1f} s, {rate:,.0f} rows/s)")
    click.echo(f"from now on run with --ledger {copied.destination} (or FLOWRUN_LEDGER)")
    return EXIT_OK
