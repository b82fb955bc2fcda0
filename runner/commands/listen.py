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
    checked = "signatures checked" if secret else "signatures NOT checked: set WA_APP_SECRET"
    click.echo(f"listening on http://{host}:{port} for status webhooks ({checked}); ledger: {path}")
    try:
        serve(receiver, host, port)
    finally:
        counts = receiver.counts
        receiver.close()
        click.echo(
            f"received {counts.callbacks:,} callbacks, {counts.statuses:,} statuses;"
            f" refused {counts.refused:,} (signature), {counts.unreadable:,} (not JSON)"
        )
    return EXIT_OK
