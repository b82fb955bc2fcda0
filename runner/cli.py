"""The command line: parse options, call one function, return its exit code. Nothing else.

`flowrun FLOW` is the main command (the same as `flowrun run FLOW`); `validate`, `plan` and
`schema` are the dry ones. Every expected failure is a FlowrunError printed as its lines; an
unexpected one is one line plus a saved traceback, never a traceback on the terminal.
"""

from __future__ import annotations

import os
import sys
import tempfile
import traceback
from collections.abc import Callable

import click

from .errors import EXIT_BUG, EXIT_INTERRUPTED, EXIT_OK, FlowrunError


class _DefaultToRun(click.Group):
    """A group where an argument that is not a command name is a flow to run."""

    def resolve_command(
        self, ctx: click.Context, args: list[str]
    ) -> tuple[str | None, click.Command | None, list[str]]:
        if args and args[0] not in self.commands and not args[0].startswith("-"):
            args = ["run", *args]
        return super().resolve_command(ctx, args)


def _handled(action: Callable[[], int]) -> int:
    """Run a command body, turning every failure into its exit code (the one error handler)."""
    try:
        return action()
    except FlowrunError as exc:
        for line in exc.lines():
            click.echo(line, err=True)
        return exc.exit_code
    except BrokenPipeError:
        # The reader went away (`flowrun plan FLOW | head`): not an error worth a word.
        # Point stdout at /dev/null so the interpreter's final flush does not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except KeyboardInterrupt:
        click.echo("flowrun: interrupted", err=True)
        return EXIT_INTERRUPTED
    except Exception as exc:  # a bug: one line for the person, the traceback for the report
        with tempfile.NamedTemporaryFile(
            "w", prefix="flowrun-crash-", suffix=".log", delete=False
        ) as log:
            traceback.print_exc(file=log)
        click.echo(
            f"flowrun: internal error ({type(exc).__name__}: {exc}); the details are in "
            f"{log.name}, please attach it to a bug report",
            err=True,
        )
        return EXIT_BUG


@click.group(cls=_DefaultToRun, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="flowrun")
def cli() -> None:
    """Send WhatsApp media campaigns from YAML flows.

    \b
    flowrun FLOW               run a flow (same as: flowrun run FLOW)
    flowrun validate FLOW...   check flows completely, send nothing
    flowrun plan FLOW          show what a run would send
    flowrun preview FLOW       the chats recipients would see, as one HTML page
    flowrun contacts FLOW      who opted out; --import FILE.csv adds a list
    flowrun templates pull FLOW  the account's templates into FLOW.templates.json
    flowrun ledger copy SRC DST  a ledger's history into another (SQLite, PostgreSQL)
    flowrun schema             print the JSON Schema of the flow format
    """


@cli.command()
@click.argument("flow", type=click.Path(dir_okay=False))
@click.option(
    "--ledger",
    "ledger_path",
    help="Ledger file, or a postgresql://USER:PASSWORD@HOST/DB URL (default: FLOWRUN_LEDGER,"
    " else FLOW.ledger.sqlite beside it).",
)
@click.option("--concurrency", type=click.IntRange(1, 1000), help="Override settings.concurrency.")
@click.option("--limit", type=click.IntRange(1), help="Only the first N recipients: a test send.")
@click.option("--only", metavar="PHONE", help="Only this recipient.")
@click.option("--retry-failed", is_flag=True, help="Send again what failed before.")
@click.option(
    "--retry-uncertain", is_flag=True, help="Send again what may or may not have arrived."
)
@click.option("--dry-run", is_flag=True, help="Show what would be sent (= flowrun plan).")
@click.option(
    "--listen",
    "listen_port",
    type=click.IntRange(1, 65535),
    metavar="PORT",
    help="Receive webhooks (statuses, customers' messages) on 127.0.0.1:PORT during the run"
    " (= flowrun listen).",
)
@click.option(
    "--follow",
    is_flag=True,
    help="Keep running: send a waiting step as soon as its customer writes or answers (their"
    " messages come through --listen, or a flowrun listen on the same ledger); Ctrl-C stops.",
)
@click.option(
    "--new-ledger",
    is_flag=True,
    help="In CI (CI=true): the ledger file is new on purpose (the campaign's first run).",
)
@click.option(
    "--sandbox",
    "use_sandbox",
    is_flag=True,
    help="Send to a built-in sandbox API on 127.0.0.1 instead of the flow's API.",
)
@click.option(
    "--base-url",
    envvar="FLOWRUN_BASE_URL",
    metavar="URL",
    help="Send to this API instead of the flow's api.base_url (a running flowrun sandbox:"
    " http://127.0.0.1:8480), with the flow's credentials and a ledger of its own"
    " (FLOW.sandbox.ledger.sqlite). Also FLOWRUN_BASE_URL.",
)
def run(
    flow: str,
    *,
    dry_run: bool,
    ledger_path: str | None,
    concurrency: int | None,
    limit: int | None,
    only: str | None,
    retry_failed: bool,
    retry_uncertain: bool,
    listen_port: int | None,
    follow: bool,
    new_ledger: bool,
    use_sandbox: bool,
    base_url: str | None,
) -> None:
    """Send every message of FLOW that the ledger does not show as sent."""
    if dry_run:
        from .commands.plan import plan as show_plan

        chosen = (only,) if only else ()
        shown = limit or 2  # --limit N: the first N recipients, as the run would send them
        sys.exit(
            _handled(lambda: show_plan(flow, shown, False, ledger_path, use_sandbox, only=chosen))
        )
    from .commands.run import RunRequest
    from .commands.run import run as run_flow

    request = RunRequest(
        ledger_path=ledger_path,
        concurrency=concurrency,
        limit=limit,
        only=only,
        retry_failed=retry_failed,
        retry_uncertain=retry_uncertain,
        use_sandbox=use_sandbox,
        listen_port=listen_port,
        follow=follow,
        base_url=base_url or None,
        new_ledger=new_ledger,
    )
    sys.exit(_handled(lambda: run_flow(flow, request)))


@cli.command()
@click.argument("flows", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option(
    "--offline",
    is_flag=True,
    help="Do not check template steps against FLOW.templates.json (CI without the lock).",
)
@click.option("--strict", is_flag=True, help="Warnings fail the flow too (exit 2).")
def validate(flows: tuple[str, ...], offline: bool, strict: bool) -> None:
    """Check each FLOW completely: structure, files, and every template for every recipient."""
    from .commands.validate import validate as validate_flows

    sys.exit(_handled(lambda: validate_flows(flows, offline=offline, strict=strict)))


@cli.command()
@click.argument("flow", type=click.Path(dir_okay=False))
@click.option("--recipients", "sample", default=2, show_default=True, help="Recipients to show.")
@click.option("--jsonl", is_flag=True, help="Write every request body, one JSON per line.")
@click.option(
    "--ledger",
    "ledger_path",
    help="Ledger whose customers' messages and opt-outs count: a file or a postgresql:// URL"
    " (default: FLOWRUN_LEDGER, else the FLOW's).",
)
@click.option(
    "--only", multiple=True, metavar="PHONE", help="Show this recipient's bodies (repeatable)."
)
def plan(
    flow: str, sample: int, jsonl: bool, ledger_path: str | None, only: tuple[str, ...]
) -> None:
    """Show what running FLOW would do, without sending anything (the dry run): what is due
    now, what waits for the customers and why, what their opt-outs withhold."""
    from .commands.plan import plan as show_plan

    sys.exit(_handled(lambda: show_plan(flow, sample, jsonl, ledger_path, only=only)))


@cli.command()
@click.argument("flow", type=click.Path(dir_okay=False))
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False),
    help="The HTML file to write (default: FLOW.preview.html beside the flow).",
)
@click.option("--only", multiple=True, metavar="PHONE", help="This recipient (repeatable).")
@click.option(
    "--recipients",
    "sample",
    default=3,
    show_default=True,
    type=click.IntRange(1),
    help="Without --only: the first N recipients.",
)
@click.option(
    "--ledger",
    "ledger_path",
    help="Ledger whose customers' messages and opt-outs count: a file or a postgresql:// URL"
    " (default: FLOWRUN_LEDGER, else the FLOW's).",
)
@click.option("--sandbox", "use_sandbox", is_flag=True, help="The FLOW's sandbox ledger.")
def preview(
    flow: str,
    *,
    output: str | None,
    only: tuple[str, ...],
    sample: int,
    ledger_path: str | None,
    use_sandbox: bool,
) -> None:
    """Write one HTML page (no network needed to open it) showing what recipients would get:
    each step as a chat bubble, with why steps are skipped or would wait."""
    from .commands.preview import PreviewRequest
    from .commands.preview import preview as write_preview

    request = PreviewRequest(output, only, sample, ledger_path, use_sandbox)
    sys.exit(_handled(lambda: write_preview(flow, request)))


@cli.command()
@click.argument("flow", required=False, type=click.Path(dir_okay=False))
@click.option(
    "--ledger",
    "ledger_path",
    help="Ledger file or postgresql:// URL (default: FLOWRUN_LEDGER, else the FLOW's).",
)
@click.option("--sandbox", "use_sandbox", is_flag=True, help="The FLOW's sandbox ledger.")
@click.option("--csv", "fmt", flag_value="csv", help="Every message row as CSV.")
@click.option("--jsonl", "fmt", flag_value="jsonl", help="Every message row as JSON lines.")
@click.option("-o", "--output", metavar="FILE", help="Write the report to FILE.")
@click.option(
    "--excel",
    is_flag=True,
    help="CSV for Excel: UTF-8 with a byte order mark, WhatsApp ids kept as text.",
)
def report(
    flow: str | None,
    *,
    ledger_path: str | None,
    use_sandbox: bool,
    fmt: str | None,
    output: str | None,
    excel: bool,
) -> None:
    """What the ledger says: counts per step and state, failures by reason, uncertain ones.

    With FLOW, steps are in the flow's order and --csv / --jsonl rows carry the recipient's
    own columns (from the flow's CSV: csv_line, phone as written, name, ...). Without a real
    run yet, the FLOW's sandbox ledger is read."""
    from .commands.report import report as report_ledger

    sys.exit(
        _handled(
            lambda: report_ledger(flow, ledger_path, use_sandbox, fmt, output=output, excel=excel)
        )
    )


@cli.command()
@click.option("--port", default=8480, show_default=True, help="Port on 127.0.0.1.")
def sandbox(port: int) -> None:
    """Serve the WhatsApp Business APIs (Cloud and On-Premises) on 127.0.0.1 for trying flows.

    Its token is 'sandbox-token' (login sandbox/sandbox, phone number id 106540352242922);
    GET /sandbox/inbox shows what it got.
    """
    from .commands.sandbox import serve_sandbox

    sys.exit(_handled(lambda: serve_sandbox(port)))


@cli.command()
@click.argument("flow", required=False, type=click.Path(dir_okay=False))
@click.option(
    "--ledger",
    "ledger_path",
    help="Ledger file or postgresql:// URL (default: FLOWRUN_LEDGER, else the FLOW's).",
)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8481, show_default=True, help="Port to listen on.")
def listen(flow: str | None, ledger_path: str | None, host: str, port: int) -> None:
    """Receive WhatsApp status webhooks and record delivered, read and failed in the ledger.

    Signatures are checked with the app secret in WA_APP_SECRET; Meta's verification
    handshake answers with WA_VERIFY_TOKEN.
    """
    from .commands.listen import listen as listen_for_statuses

    sys.exit(_handled(lambda: listen_for_statuses(flow, ledger_path, host, port)))


@cli.command()
@click.argument("flow", type=click.Path(dir_okay=False))
@click.option(
    "--ledger",
    "ledger_path",
    help="Ledger file or postgresql:// URL (default: FLOWRUN_LEDGER, else the FLOW's).",
)
@click.option("--sandbox", "use_sandbox", is_flag=True, help="The FLOW's sandbox ledger.")
@click.option(
    "--import",
    "import_file",
    type=click.Path(dir_okay=False, exists=True),
    metavar="FILE.csv",
    help="Add these phones (a CSV with a 'phone' column) as opted out.",
)
@click.option("--csv", "as_csv", is_flag=True, help="List as CSV.")
def contacts(
    flow: str, *, ledger_path: str | None, use_sandbox: bool, import_file: str | None, as_csv: bool
) -> None:
    """The customers of FLOW's number who opted out (stop words, marketing stops, imports)."""
    from .commands.contacts import ContactsRequest
    from .commands.contacts import contacts as show_contacts

    request = ContactsRequest(ledger_path, use_sandbox, import_file, as_csv)
    sys.exit(_handled(lambda: show_contacts(flow, request)))


@cli.group()
def templates() -> None:
    """The account's message templates, kept in a lock file beside the flow
    (FLOW.templates.json) that validate, plan and run check every template step against."""


@templates.command("pull")
@click.argument("flow", type=click.Path(dir_okay=False))
@click.option(
    "--sandbox", "use_sandbox", is_flag=True, help="Pull the built-in sandbox's templates."
)
@click.option(
    "--page-size",
    type=click.IntRange(1, 100),
    default=50,
    show_default=True,
    help="Templates asked for per request (the API pages through the rest).",
)
def templates_pull(flow: str, use_sandbox: bool, page_size: int) -> None:
    """Read the WhatsApp Business Account's templates (Cloud: api.waba_id) into
    FLOW.templates.json: sorted and stable for git, without secrets."""
    from .commands.templates import pull

    sys.exit(_handled(lambda: pull(flow, use_sandbox=use_sandbox, page_size=page_size)))


@cli.group()
def ledger() -> None:
    """Ledgers themselves: move a campaign's history between a SQLite file and PostgreSQL."""


@ledger.command("copy")
@click.argument("source", metavar="SRC")
@click.argument("destination", metavar="DST")
def ledger_copy(source: str, destination: str) -> None:
    """Copy every row of the ledger SRC into the new, empty ledger DST (each a SQLite file or
    a postgresql://USER:PASSWORD@HOST/DB URL), in one transaction; SRC is only read. A DST
    holding any row is refused: nothing is merged."""
    from .commands.ledger import copy

    sys.exit(_handled(lambda: copy(source, destination)))


@cli.command()
def schema() -> None:
    """Print the JSON Schema of the flow format (for editors: schemas/flow.schema.json)."""
    from .commands.schema import print_schema

    sys.exit(_handled(print_schema))


def main(argv: list[str] | None = None) -> None:
    cli.main(args=argv, prog_name="flowrun")
