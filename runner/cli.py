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
    flowrun contacts FLOW      who opted out; --import FILE.csv adds a list
    flowrun schema             print the JSON Schema of the flow format
    """


@cli.command()
@click.argument("flow", type=click.Path(dir_okay=False))
@click.option(
    "--ledger", "ledger_path", help="Ledger file (default: FLOW.ledger.sqlite beside it)."
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
    use_sandbox: bool,
    base_url: str | None,
) -> None:
    """Send every message of FLOW that the ledger does not show as sent."""
    if dry_run:
        from .commands.plan import plan as show_plan

        sys.exit(_handled(lambda: show_plan(flow, 2, False, ledger_path, use_sandbox)))
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
    )
    sys.exit(_handled(lambda: run_flow(flow, request)))


@cli.command()
@click.argument("flows", nargs=-1, required=True, type=click.Path(dir_okay=False))
def validate(flows: tuple[str, ...]) -> None:
    """Check each FLOW completely: structure, files, and every template for every recipient."""
    from .commands.validate import validate as validate_flows

    sys.exit(_handled(lambda: validate_flows(flows)))


@cli.command()
@click.argument("flow", type=click.Path(dir_okay=False))
@click.option("--recipients", "sample", default=2, show_default=True, help="Recipients to show.")
@click.option("--jsonl", is_flag=True, help="Write every request body, one JSON per line.")
@click.option(
    "--ledger",
    "ledger_path",
    help="Ledger whose customers' messages and opt-outs count (default: the FLOW's).",
)
def plan(flow: str, sample: int, jsonl: bool, ledger_path: str | None) -> None:
    """Show what running FLOW would do, without sending anything (the dry run): what is due
    now, what waits for the customers and why, what their opt-outs withhold."""
    from .commands.plan import plan as show_plan

    sys.exit(_handled(lambda: show_plan(flow, sample, jsonl, ledger_path)))


@cli.command()
@click.argument("flow", required=False, type=click.Path(dir_okay=False))
@click.option("--ledger", "ledger_path", help="Ledger file (default: the FLOW's).")
@click.option("--sandbox", "use_sandbox", is_flag=True, help="The FLOW's sandbox ledger.")
@click.option("--csv", "fmt", flag_value="csv", help="Every message row as CSV.")
@click.option("--jsonl", "fmt", flag_value="jsonl", help="Every message row as JSON lines.")
def report(flow: str | None, ledger_path: str | None, use_sandbox: bool, fmt: str | None) -> None:
    """What the ledger says: counts per step and state, failures by reason, uncertain ones."""
    from .commands.report import report as report_ledger

    sys.exit(_handled(lambda: report_ledger(flow, ledger_path, use_sandbox, fmt)))


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
@click.option("--ledger", "ledger_path", help="Ledger file (default: the FLOW's).")
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
@click.option("--ledger", "ledger_path", help="Ledger file (default: the FLOW's).")
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


@cli.command()
def schema() -> None:
    """Print the JSON Schema of the flow format (for editors: schemas/flow.schema.json)."""
    from .commands.schema import print_schema

    sys.exit(_handled(print_schema))


def main(argv: list[str] | None = None) -> None:
    cli.main(args=argv, prog_name="flowrun")
