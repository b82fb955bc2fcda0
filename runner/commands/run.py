"""`flowrun FLOW` (`flowrun run FLOW`): validate the whole flow, then send what the ledger says
is not sent yet, and say what happened."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import click

from runner import clock
from runner import dialect as dialects
from runner.conversation import WAITS_EVENT, WAITS_QUIET, WAITS_TIME
from runner.errors import FlowInvalid, FlowrunError
from runner.executor import ANSWER, WINDOW_WAIT, Executor, RunOptions, Summary
from runner.ledger import RunLedger, default_path, is_postgres, now, open_for_run
from runner.marketing import dialect_for
from runner.pacing import run_pace
from runner.plan import Plan
from runner.progress import Progress
from runner.recipients import normalize_phone
from runner.target import ApiTarget, api_target, base_url_error
from runner.template_lock import lock_path, read_entries
from runner.transport import HttpTransport

from .checking import check
from .ledger_choice import chosen as chosen_ledger
from .limits import before_run


@dataclass(frozen=True, slots=True)
class RunRequest:
    """A run's command-line options, as the CLI parsed them."""

    ledger_path: str | None = None
    concurrency: int | None = None
    limit: int | None = None
    only: str | None = None
    retry_failed: bool = False
    retry_uncertain: bool = False
    use_sandbox: bool = False
    listen_port: int | None = None
    follow: bool = False
    base_url: str | None = None  # instead of the flow's api.base_url (--base-url)
    new_ledger: bool = False  # in CI: a new, empty ledger is meant (--new-ledger)


def run(flow_file: str, request: RunRequest) -> int:
    """Validate the whole flow, then send what the ledger says is not sent yet."""
    # Nothing leaves before every recipient rendered. The api section is rendered below, once,
    # as the run needs it (not also as validate does, which would say a missing token twice).
    checked = check(flow_file, api=False)
    plan = checked.plan
    only = _phone_option(request.only)
    if request.base_url is not None and request.use_sandbox:
        raise FlowrunError("--base-url and --sandbox: choose one (--sandbox is its own API)")
    if only is not None and all(r.phone != only for r in plan.recipients()):
        raise FlowrunError(f"--only {request.only}: {flow_file} has no recipient with this phone")
    with contextlib.ExitStack() as stack:
        target = _target(plan, stack, request.use_sandbox, request.base_url)
        dialect = dialect_for(plan, target)  # MARKETING templates: api.marketing_messages
        settings = plan.flow.settings
        rate, interval = run_pace(settings, dialect, sandbox=request.use_sandbox)
        options = RunOptions(
            concurrency=request.concurrency or settings.concurrency,
            limit=request.limit,
            only=only,
            retry_failed=request.retry_failed,
            retry_uncertain=request.retry_uncertain,
            rate=rate,
            interval=interval,
            follow=request.follow,
        )
        # Sent elsewhere than the flow's API (a sandbox, by --base-url): a ledger of its own,
        # as --sandbox keeps, so that trying a flow never marks a real message as sent.
        elsewhere = request.use_sandbox or request.base_url is not None
        location = chosen_ledger(request.ledger_path, elsewhere=elsewhere)
        path = Path(location) if location else default_path(plan.loaded.path, elsewhere)
        chosen = location or path
        if not elsewhere:
            _refuse_a_fresh_ledger_in_ci(chosen, request.new_ledger)
        limit = before_run(plan, dialect, chosen, clock.now())  # (before the run's lock)
        if limit is not None:
            click.echo(limit, err=True)
        ledger = stack.enter_context(contextlib.closing(open_for_run(chosen, plan.loaded.name)))
        _check_renamed(ledger, ledger.location, chosen=location is not None)
        # The receiver (--listen, --sandbox --follow) records in this run's ledger, a file or
        # PostgreSQL: ledger.location names it without a password (runner/receiver/process.py)
        if request.use_sandbox and request.follow:
            _live_sandbox(stack, target, ledger.location, request.listen_port)
        elif request.follow and request.listen_port is None:
            click.echo(
                f"flowrun: following without --listen: customers' messages are heard only if a"
                f" flowrun listen records them in {ledger.location}",
                err=True,
            )
        elif request.listen_port is not None:
            from runner.receiver.process import listening

            stack.enter_context(listening(ledger.location, request.listen_port))
        started = now()
        total = checked.survey.messages
        with asyncio.Runner(loop_factory=_loop_factory()) as runner:
            execute = _execute(
                plan,
                target,
                dialect,
                ledger,
                options,
                total=total,
                recipients=checked.survey.recipients,
                proxies=not request.use_sandbox,  # the sandbox is this process, on loopback
            )
            summary = runner.run(execute)
        if request.listen_port is not None and not summary.interrupted:
            from runner.receiver.process import await_statuses

            # (an interrupted run stops now: waiting is for a run that finished)
            await_statuses(ledger, started)
    _print_summary(flow_file, summary, ledger.location)
    return summary.exit_code


def _refuse_a_fresh_ledger_in_ci(location: str | Path, meant: bool) -> None:
    """In CI (`CI=true`, as GitHub Actions, GitLab and most others set it), a ledger file that
    does not exist yet almost always means the job's machine is new and the campaign's history
    is elsewhere: every message would go again, to real customers. A warning in a CI log is read
    after the fact; so the run is refused with the fix, unless the first run is meant
    (--new-ledger). Not for PostgreSQL (it lives outside the job) nor for tries (sandbox)."""
    if meant or is_postgres(location) or os.environ.get("CI", "").lower() not in ("true", "1"):
        return
    path = Path(location)
    if path.exists() and path.stat().st_size > 0:
        return
    raise FlowrunError(
        f"{path}: a new, empty ledger in CI: every message would be sent as if for the first"
        " time. Keep the ledger where the next job finds it (FLOWRUN_LEDGER=postgresql://...,"
        " see README, 'Running from CI and cron'), or pass --new-ledger if this is the"
        " campaign's first run"
    )


def _live_sandbox(
    stack: contextlib.ExitStack, target: ApiTarget, ledger: str, port: int | None
) -> None:
    """`--sandbox --follow`: a receiver beside the run (on --listen's port, else a free one),
    and the sandbox's customers answering to it, so a flow's branches play out end to end."""
    from runner import sandbox
    from runner.receiver.process import listening

    port = port or _free_port()
    secret = secrets.token_hex(16)  # between this run's sandbox and its receiver only
    stack.enter_context(listening(ledger, port, secret))
    assert target.base_url is not None
    sandbox.customers_answer(target.base_url, f"http://127.0.0.1:{port}/", secret)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _target(
    plan: Plan, stack: contextlib.ExitStack, use_sandbox: bool, base_url: str | None
) -> ApiTarget:
    """The flow's API (at `base_url` instead of its own, if given), or a sandbox started for
    this run (in the flow's dialect)."""
    if use_sandbox:
        from runner import sandbox

        state = sandbox.state_for(plan.flow)
        lock = lock_path(plan.loaded.path)
        if lock.is_file():  # the account's templates, as validated (runner/template_lock.py)
            state.use_templates(read_entries(lock))
        base_url, _ = stack.enter_context(sandbox.running(state=state))
        return sandbox.target_for(plan.flow.api, base_url)
    if base_url is not None:
        error = base_url_error(base_url)
        if error:
            raise FlowrunError(f"--base-url {base_url}: {error}")
    target = api_target(plan, for_run=True, base_url=base_url)
    if plan.problems.has_errors() or not target.ready:
        raise FlowInvalid(plan.problems)
    return target


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


def _check_renamed(ledger: RunLedger, path: str, chosen: bool) -> None:
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
    if only is None:
        return None
    try:
        return normalize_phone(only)
    except ValueError as exc:
        raise FlowrunError(f"--only: {exc}") from None


async def _execute(
    plan: Plan,
    target: ApiTarget,
    dialect: dialects.Dialect,
    ledger: RunLedger,
    options: RunOptions,
    *,
    total: int,
    recipients: int,
    proxies: bool,
) -> Summary:
    assert target.base_url is not None
    progress = Progress.of_run(total, recipients, limit=options.limit, only=options.only)
    transport = HttpTransport(
        target.base_url, target.token, plan.flow.api.timeout, options.concurrency, proxies=proxies
    )
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
            return await executor.run()
    finally:
        progress.close()


def _print_summary(flow_file: str, summary: Summary, ledger_path: str) -> None:
    rate = summary.sent / summary.seconds if summary.seconds > 0 else 0.0
    for line in _advice(summary):
        click.echo(line, err=True)
    for reason, count in sorted(summary.failures.items(), key=lambda kv: -kv[1])[:10]:
        click.echo(f"  failed {count:,}x: {reason}", err=True)
    if not summary.sent and summary.already and not summary.failed:
        click.echo(f"{flow_file}: nothing to send: {summary.already:,} message(s) were sent before")
    elif summary.already:  # a resume: what this run sent is what was due, the rest went before
        click.echo(
            f"{flow_file}: {summary.already:,} message(s) were sent before, by an earlier run;"
            " not sent again"
        )
    waiting = sum(summary.waiting.values())
    click.echo(
        f"{flow_file}: sent {summary.sent:,}, failed {summary.failed:,}, skipped"
        f" {summary.skipped + summary.blocked + summary.opted_out + summary.expired:,},"
        + (f" waiting {waiting:,}," if waiting else "")
        + f" uncertain {summary.uncertain:,}, uploads"
        f" {summary.uploads}, {summary.seconds:.1f} s ({rate:,.0f} msg/s)"
        + (" — interrupted" if summary.interrupted else "")
        # the flow's statement that everyone wrote lately, said where the outcome is
        + (" (settings.window: open, trusted)" if summary.trusted_window else "")
    )
    click.echo(f"ledger: {ledger_path}")


def _shared(summary: Summary) -> list[str]:
    """What other runs of the flow on the same ledger did (PostgreSQL: they share the work)."""
    lines = []
    if summary.elsewhere:
        lines.append(
            f"{summary.elsewhere:,} recipient(s) were served by another run of this flow on the"
            " same ledger at the same time (the counts below are this run's)"
        )
    if summary.taken_over:
        lines.append(
            f"{summary.taken_over:,} recipient(s) of a run that ended before it got through them"
            " were served by this one"
        )
    return lines


def _conversation(summary: Summary) -> list[str]:
    """What waits for the customers, and what the flow's own statement about them did."""
    lines = []
    window = summary.waiting.get(WINDOW_WAIT, 0)
    if window:
        refused = (
            f" ({summary.refused_window:,} after the API said so)" if summary.refused_window else ""
        )
        lines.append(
            f"{window:,} step(s) wait for the customer to write{refused}: only a template may"
            " reach someone who has not written in the last 24 hours; the next run (or"
            " --follow) sends them once they write"
        )
    answer = summary.waiting.get(ANSWER, 0)
    if answer:
        lines.append(
            f"{answer:,} step(s) wait for an answer to an earlier step (their when: reads it);"
            " the next run (or --follow) goes on once the customer answers"
        )
    timed = summary.waiting.get(WAITS_TIME, 0)
    if timed:
        lines.append(f"{timed:,} step(s) wait for their time (after:)")
    events = summary.waiting.get(WAITS_EVENT, 0)
    if events:
        lines.append(
            f"{events:,} step(s) wait for what their after: names (a message read, a reply);"
            " flowrun listen records it"
        )
    quiet = summary.waiting.get(WAITS_QUIET, 0)
    if quiet:
        lines.append(f"{quiet:,} step(s) wait for the recipient's morning (settings.send_between)")
    if summary.next_due is not None:
        lines.append(
            f"next message due {summary.next_due.strftime('%Y-%m-%d %H:%M')} UTC: run again"
            " then (from cron, say), or keep one running with --follow"
        )
    gives_up = summary.gives_up
    if gives_up is not None and (summary.next_due is None or gives_up < summary.next_due):
        lines.append(
            f"the first wait for a customer gives up {gives_up.strftime('%Y-%m-%d %H:%M')} UTC"
            " (expires:); a run then skips that step and goes on with the flow"
        )
    if summary.expired:
        lines.append(
            f"{summary.expired:,} step(s) waited until they expired and were skipped; the flows"
            " went on (expires: on a step, settings.expires for all)"
        )
    return lines


def _advice(summary: Summary) -> list[str]:
    """What the operator should know, and do, after this run."""
    lines = _shared(summary)
    if summary.recovered:
        lines.append(
            f"{summary.recovered:,} message(s) of an interrupted run are uncertain (the API may"
            " have them); --retry-uncertain sends them again"
        )
    if summary.changed:
        lines.append(
            f"{summary.changed:,} message(s) sent before read differently in the flow now;"
            " they are not sent again"
        )
    lines += _conversation(summary)
    if summary.opted_out:
        lines.append(
            f"{summary.opted_out:,} message(s) not sent: their customers asked to stop"
            " (flowrun report lists them as skipped, opted out)"
        )
    if summary.spam:
        lines.append(
            f"the API's spam rate limit refused {summary.spam:,} message(s) (too many of the"
            " number's messages were blocked or reported): the run paused and slowed down"
        )
    if summary.later:
        lines.append(
            f"{summary.later:,} message(s) refused by Meta's per-user marketing limit wait until"
            f" {summary.later_until} UTC (a day after the refusal); --retry-failed sends them then"
        )
    if summary.never:
        lines.append(
            f"{summary.never:,} message(s) will not be sent again: the API will not take it for"
            " those numbers (see flowrun report)"
        )
    for step, count in summary.unusable.items():
        lines.append(
            f"{count:,} message(s) of step {step} not sent: its template cannot be used (see the"
            " failure below); fix it in WhatsApp Manager or in the flow, then run with"
            " --retry-failed"
        )
    if summary.held:
        lines.append(
            f"{summary.held:,} recipient(s) wait behind a failed or uncertain message of an"
            " earlier run; see flowrun report, then --retry-failed or --retry-uncertain"
        )
    for reason, count in summary.upload_failed.items():
        lines.append(
            f"{count:,} message(s) not sent: {reason}; they are not failed (they never reached"
            " the API): the next run sends them"
        )
    if summary.unsent:
        lines.append(
            f"{summary.unsent:,} message(s) refused by the API were waiting for a retry when the"
            " run stopped; the next run sends them"
        )
    if summary.throttled:
        lines.append(
            f"the API asked to slow down {summary.throttled:,} time(s); flowrun slowed the run"
            " and retried (settings.rate sets a lower pace from the start)"
        )
    return lines
