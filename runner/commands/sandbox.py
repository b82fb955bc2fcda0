"""`flowrun sandbox`: both APIs on 127.0.0.1 for trying flows by hand, until Ctrl-C."""

from __future__ import annotations

import click

from runner.errors import EXIT_OK


def serve_sandbox(port: int) -> int:
    from runner.sandbox import TOKEN, serve

    click.echo(f"sandbox API on http://127.0.0.1:{port} (token {TOKEN}); Ctrl-C stops it")
    serve(port)
    return EXIT_OK
