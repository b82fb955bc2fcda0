"""`flowrun listen`: receive status webhooks and record them in the ledger, until Ctrl-C."""

from __future__ import annotations

import os

import click

from runner.errors import EXIT_OK

from .checking import ledger_for


def listen(flow_file: str | None, ledger_path: str | None, host: str, port: int) -> int:
    from runner.receiver import Receiver, serve

    path, _ = ledger_for(flow_file, ledger_path, use_sandbox=False)
    secret = os.environ.get("WA_APP_SECRET") or None
    receiver = Receiver(path, secret, os.environ.get("WA_VERIFY_TOKEN") or None)
    try:
        # the banner once the port is ours: said before, it would be a promise
        serve(receiver, host, port, lambda: click.echo(receiver.banner(host, port)))
    finally:
        receiver.close()
    click.echo(receiver.counts.summary())
    return EXIT_OK
