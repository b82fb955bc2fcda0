"""The bodies of the CLI's commands: plain functions with explicit arguments, returning
exit codes."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from .errors import EXIT_INVALID, EXIT_OK, FlowInvalid, FlowrunError
from .loader import load_flow

if TYPE_CHECKING:
    from .dialect import Dialect
    from .executor import RunOptions, Summary
    from .ledger import RunLedger
    from .models import CloudApi, OnPremApi
from .plan import ApiTarget, Message, Plan, Skipped, Survey, compile_plan, survey


def check(
    flow_file: str,
    sample: int = 0,
    on_body: Callable[[dict[str, Any]], None] | None = None,
    *,
    api: bool = True,
) -> tuple[Plan, Survey, ApiTarget]:
    """Load, compile and render a flow for every recipient (passing each message's body to
    `on_body`); the problems found are raised together (warnings are printed and let pass)."""
    plan = compile_plan(load_flow(flow_file))
    # With --sandbox the flow's api section is not used: its secrets are not asked for.
    target = plan.api_target(for_run=False) if api else ApiTarget(plan.flow.api.kind, None)
    on_message = None
    if on_body is not None:
        dialect = target.dialect()

        def on_message(message: Message) -> None:
            on_body(message.body(dialect))

    result = survey(plan, sample, on_message)
    for line in plan.problems.lines("warning"):
        click.echo(line, err=True)
    if plan.problems.has_errors():
        raise FlowInvalid(plan.problems)
    return plan, result, target


def validate_flows(flow_files: tuple[str, ...]) -> int:
    code = EXIT_OK
    for flow_file in flow_files:
        try:
            plan, result, _ = check(flow_file)
        except FlowInvalid as exc:
            for line in exc.lines():
                click.echo(line, err=True)
            code = EXIT_INVALID
            continue
        click.echo(
            f"{flow_file}: ok: {result.recipients:,} recipients, {len(plan.steps)} steps, "
            f"{result.messages:,} messages ({result.skipped:,} skipped by when), "
            f"{len(plan.uploads())} files to upload"
        )
    return code


def plan_flow(flow_file: str, sample: int, jsonl: bool) -> int:
    if jsonl:
        out = sys.stdout

        def write(body: dict[str, Any]) -> None:
            out.write(json.dumps(body, ensure_ascii=False) + "\n")

        check(flow_file, on_body=write)
        return EXIT_OK
    plan, result, target = check(flow_file, sample)
    flow = plan.flow
    dialect = target.dialect()
    click.echo(f"Flow {plan.loaded.name} ({flow_file})")
    click.echo(f"  API          {target.base_url or flow.api.base_url} ({dialect.label})")
    click.echo(
        f"  recipients   {result.recipients:,}\n  messages     {result.messages:,}"
        f" ({result.skipped:,} skipped by when)"
    )
    rate, interval = limits(plan, dialect, sandbox=False)
    click.echo(
        f"  concurrency  {flow.settings.concurrency}, rate {rate:g}/s, {interval:g} s between"
        f" messages to one recipient, retries {flow.settings.retries}"
    )
    click.echo("  steps:")
    for step in plan.steps:
        when = f"  when {step.when_source}" if step.when_source else ""
        click.echo(
            f"    {step.key:<16} {step.kind:<9} {result.per_step[step.key]:>8,} messages{when}"
        )
    uploads = plan.uploads()
    click.echo(f"  uploads ({len(uploads)}, each once, POST {dialect.media_path}):")
    for media in uploads:
        shown = media.path.relative_to(plan.loaded.base_dir.resolve())
        click.echo(f"    {shown}  {media.mime}  {media.size:,} bytes  sha256:{media.sha256[:12]}")
    click.echo(f"\nFirst {sample} recipient(s): POST {dialect.messages_path}")
    for item in result.samples:
        if isinstance(item, Skipped):
            click.echo(f"# {item.recipient.phone} step {item.step.key}: skipped ({item.reason})")
            continue
        click.echo(f"# {item.recipient.phone} step {item.step.key}")
        click.echo(json.dumps(item.body(dialect), ensure_ascii=False, indent=2))
    return EXIT_OK


def limits(plan: Plan, dialect: Dialect, *, sandbox: bool) -> tuple[float, float]:
    """The run's rate (messages/s, 0: none) and per-recipient interval (s): the flow's, else
    the dialect's documented limits. The sandbox has none, so trying a flow there is quick."""
    settings = plan.flow.settings
    rate = settings.rate_per_second
    if rate is None and not sandbox:
        rate = dialect.default_rate
    interval = settings.per_recipient_interval
    if interval is None:
        interval = 0.0 if sandbox else dialect.default_interval
    return rate or 0.0, interval


def print_schema() -> int:
    from .schema import flow_schema

    click.echo(flow_schema())
    return EXIT_OK


def run_flow(
    flow_file: str,
    *,
    ledger_path: str | None = None,
    concurrency: int | None = None,
    limit: int | None = None,
    only: str | None = None,
    retry_failed: bool = False,
    retry_uncertain: bool = False,
    use_sandbox: bool = False,
    listen_port: int | None = None,
) -> int:
    """Validate the whole flow, then send what the ledger says is not sent yet."""
    from .executor import RunOptions
    from .ledger import default_path, open_for_run
    from .ledger import now as ledger_now

    # nothing leaves before every recipient rendered; the api section is rendered below, once,
    # as the run needs it (not also as validate does, which would say a missing token twice)
    plan, result, _ = check(flow_file, api=False)
    if only is not None:
        _check_only(plan, only, flow_file)
    with contextlib.ExitStack() as stack:
        if use_sandbox:
            from . import sandbox

            base_url, _ = stack.enter_context(sandbox.running())
            target = sandbox_target(plan.flow.api, base_url)
        else:
            target = plan.api_target(for_run=True)
            if plan.problems.has_errors():
                raise FlowInvalid(plan.problems)
        if not target.ready:
            raise FlowInvalid(plan.problems)
        dialect = target.dialect()
        rate, interval = limits(plan, dialect, sandbox=use_sandbox)
        options = RunOptions(
            concurrency=concurrency or plan.flow.settings.concurrency,
            limit=limit,
            only=_phone_option(only),
            retry_failed=retry_failed,
            retry_uncertain=retry_uncertain,
            rate=rate or None,
            interval=interval,
        )
        path = Path(ledger_path) if ledger_path else default_path(plan.loaded.path, use_sandbox)
        ledger = stack.enter_context(open_for_run(path, plan.loaded.name))
        _check_renamed(ledger, path, chosen=ledger_path is not None)
        if listen_port is not None:
            stack.enter_context(_listening(path, listen_port))
        started = ledger_now()
        with asyncio.Runner(loop_factory=_loop_factory()) as runner:
            run = _execute(plan, target, dialect, ledger, options, total=result.messages)
            summary = runner.run(run)
        if listen_port is not None:
            _await_statuses(path, plan.loaded.name, started)
    _print_summary(flow_file, summary, path)
    return summary.exit_code


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop where it is installed (not on Windows): the same asyncio, with a faster loop —
    measured in bench/send_bench.py. FLOWRUN_LOOP=asyncio keeps the standard one."""
    if os.environ.get("FLOWRUN_LOOP") == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


LISTEN_GRACE = 10.0  # seconds a run with --listen waits for the last messages' statuses


@contextlib.contextmanager
def _listening(path: Path, port: int) -> Iterator[None]:
    """`flowrun listen` for the ledger at `path`, as a process of its own (receiving must not
    slow sending: no GIL shared), from before the first message to after the run."""
    import signal
    import socket
    import subprocess
    import time

    command = [sys.executable, "-m", "runner", "listen", "--ledger", str(path)]
    listener = subprocess.Popen([*command, "--port", str(port)])
    try:
        deadline = time.monotonic() + 10
        while True:
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    break
            if listener.poll() is not None or time.monotonic() > deadline:
                raise FlowrunError(f"--listen {port}: the receiver did not start (port in use?)")
            time.sleep(0.05)
        yield
    finally:
        if listener.poll() is None:
            listener.send_signal(signal.SIGINT)  # it finishes what it holds, then says so
        listener.wait(30)


def _await_statuses(path: Path, flow: str, since: str) -> None:
    """After a run with --listen: until every message it sent has its final status (read,
    failed, deleted) or LISTEN_GRACE seconds pass; later ones need `flowrun listen`."""
    import time

    from .ledger import SETTLED_RANK, LedgerReader

    deadline = time.monotonic() + LISTEN_GRACE
    with LedgerReader(path) as ledger:
        while time.monotonic() < deadline:
            if ledger.unsettled(flow, since, SETTLED_RANK) == 0:
                return
            time.sleep(0.1)


def _check_only(plan: Plan, only: str, flow_file: str) -> None:
    phone = _phone_option(only)
    if all(r.phone != phone for r in plan.recipients()):
        raise FlowrunError(f"--only {only}: {flow_file} has no recipient with this phone")


def sandbox_target(api: CloudApi | OnPremApi, base_url: str) -> ApiTarget:
    """The sandbox in place of the flow's API, in the flow's dialect: its own URL and
    credentials (the flow's secrets are never asked for)."""
    from . import sandbox

    if api.kind == "cloud":
        return ApiTarget(
            "cloud", base_url, sandbox.TOKEN, sandbox.PHONE_NUMBER_ID, getattr(api, "version", None)
        )
    if getattr(api, "login", None) is not None:
        user, password = sandbox.LOGIN
        return ApiTarget(
            "onprem",
            base_url,
            username=user,
            password=password,
            template_namespace=sandbox.NAMESPACE,
        )
    return ApiTarget("onprem", base_url, sandbox.TOKEN, template_namespace=sandbox.NAMESPACE)


def _check_renamed(ledger: RunLedger, path: Path, chosen: bool) -> None:
    """A ledger knows messages by flow name: a renamed flow would send everything again.

    The default ledger belongs to one flow file, so other names in it mean a rename: refused.
    A ledger chosen with --ledger may be shared by several flows on purpose: a warning."""
    others = ledger.other_flows()
    if not others or ledger.has_rows():
        return
    names = ", ".join(repr(o) for o in others)
    message = (
        f"{path} holds messages of flow {names} but none of {ledger.flow!r}: if the flow was"
        f" renamed, its messages would all be sent again; put name: {others[0]} back in it"
    )
    if not chosen:
        raise FlowrunError(message + ", or pass --ledger NEW_FILE to start afresh")
    click.echo(f"warning: {message}", err=True)


def _phone_option(only: str | None) -> str | None:
    from .recipients import normalize_phone

    if only is None:
        return None
    try:
        return normalize_phone(only)
    except ValueError as exc:
        raise FlowrunError(f"--only: {exc}") from None


async def _execute(
    plan: Plan,
    target: ApiTarget,
    dialect: Dialect,
    ledger: RunLedger,
    options: RunOptions,
    *,
    total: int,
) -> Summary:
    from .executor import Executor
    from .progress import Progress
    from .transport import Transport

    assert target.base_url is not None
    progress = Progress(total)
    transport = Transport(target.base_url, target.token, plan.flow.api.timeout, options.concurrency)
    try:
        async with transport:
            executor = Executor(
                plan,
                transport=transport,
                dialect=dialect,
                ledger=ledger,
                options=options,
                progress=progress,
            )
            summary = await executor.run()
    finally:
        progress.close()
    return summary


def _print_summary(flow_file: str, summary: Summary, ledger_path: Path) -> None:
    rate = summary.sent / summary.seconds if summary.seconds > 0 else 0.0
    if summary.recovered:
        click.echo(
            f"{summary.recovered:,} message(s) of an interrupted run are uncertain (the API may"
            " have them); --retry-uncertain sends them again",
            err=True,
        )
    if summary.changed:
        click.echo(
            f"{summary.changed:,} message(s) sent before read differently in the flow now;"
            " they are not sent again",
            err=True,
        )
    if summary.held:
        click.echo(
            f"{summary.held:,} recipient(s) wait behind a failed or uncertain message of an"
            " earlier run; see flowrun report, then --retry-failed or --retry-uncertain",
            err=True,
        )
    if summary.unsent:
        click.echo(
            f"{summary.unsent:,} message(s) refused by the API were waiting for a retry when the"
            " run stopped; the next run sends them",
            err=True,
        )
    if summary.throttled:
        click.echo(
            f"the API asked to slow down {summary.throttled:,} time(s); flowrun slowed the run"
            " and retried (settings.rate sets a lower pace from the start)",
            err=True,
        )
    for reason, count in sorted(summary.failures.items(), key=lambda kv: -kv[1])[:10]:
        click.echo(f"  failed {count:,}x: {reason}", err=True)
    if not summary.sent and summary.already and not summary.failed:
        click.echo(f"{flow_file}: nothing to send: {summary.already:,} message(s) were sent before")
    click.echo(
        f"{flow_file}: sent {summary.sent:,}, failed {summary.failed:,}, skipped"
        f" {summary.skipped + summary.blocked:,}, uncertain {summary.uncertain:,}, uploads"
        f" {summary.uploads}, {summary.seconds:.1f} s ({rate:,.0f} msg/s)"
        + (" — interrupted" if summary.interrupted else "")
    )
    click.echo(f"ledger: {ledger_path}")


def report_ledger(
    flow_file: str | None, ledger_path: str | None, use_sandbox: bool, fmt: str | None
) -> int:
    from .report import summary_lines, write_rows

    path, name = _ledger_of(flow_file, ledger_path, use_sandbox)
    if fmt is not None:
        write_rows(path, name, fmt, sys.stdout)
    else:
        for line in summary_lines(path, name):
            click.echo(line)
    return EXIT_OK


def _ledger_of(
    flow_file: str | None, ledger_path: str | None, use_sandbox: bool
) -> tuple[Path, str | None]:
    """The ledger a command reads (--ledger, else the FLOW's), and the FLOW's name if given."""
    from .ledger import default_path

    if flow_file is None and ledger_path is None:
        raise FlowrunError("name a FLOW or a --ledger PATH")
    name = None
    path = Path(ledger_path) if ledger_path else None
    if flow_file is not None:
        loaded = load_flow(flow_file)
        name = loaded.name
        path = path or default_path(loaded.path, use_sandbox)
    assert path is not None
    return path, name


def listen_for_statuses(
    flow_file: str | None, ledger_path: str | None, host: str, port: int
) -> int:
    from .receiver import Receiver, serve

    path, _ = _ledger_of(flow_file, ledger_path, use_sandbox=False)
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
