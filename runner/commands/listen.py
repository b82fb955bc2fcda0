"""`flowrun listen`: receive status webhooks and record them in the ledger, until Ctrl-C."""

from __future__ import annotations

import os
from pathlib import Path

import click

from runner.errors import EXIT_OK
from runner.ledger import is_postgres

from .checking import ledger_for
from .ledger_choice import chosen


def listen(flow_file: str | None, ledger_path: str | None, host: str, port: int) -> int:
    from runner.receiver import Receiver, serve

    location: str | Path
    chosen_location = chosen(ledger_path)  # (--ledger, else FLOWRUN_LEDGER)
    if chosen_location is not None and is_postgres(chosen_location):
        location = chosen_location  # (shown without its password: the receiver's banner)
    else:
        location, _ = ledger_for(flow_file, chosen_location, use_sandbox=False)
    secret = os.environ.get("WA_APP_SECRET") or None
    receiver = Receiver(location, secret, os.environ.get("WA_VERIFY_TOKEN") or None)
    try:
        # the banner once the port is ours: said before, it would be a promise
        serve(receiver, host, port, lambda: click.echo(receiver.banner(host, port)))
    finally:
        receiver.close()
    click.echo(receiver.counts.summary())
    return EXIT_OK
