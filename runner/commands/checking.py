"""What several commands share: a flow checked completely (loaded, compiled, rendered for every
recipient), and the ledger a command reads."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from runner import dialect as dialects
from runner.errors import FlowInvalid, FlowrunError
from runner.ledger import default_path
from runner.loader import load_flow, missing_csv
from runner.marketing import option_warning
from runner.plan import Plan, compile_plan
from runner.render import Message, Survey, survey
from runner.target import ApiTarget, api_target


@dataclass(frozen=True, slots=True)
class Checked:
    plan: Plan
    survey: Survey
    target: ApiTarget


def check(
    flow_file: str,
    sample: int = 0,
    on_body: Callable[[dict[str, Any]], None] | None = None,
    *,
    api: bool = True,
    offline: bool = False,
    on_message: Callable[[Message], None] | None = None,
) -> Checked:
    """Load, compile and render a flow for every recipient (passing each message's body to
    `on_body`); the problems found are raised together (warnings are printed and let pass).

    `api` False: the flow's api section is not rendered (a run renders it once, itself, or
    uses the sandbox's), so its secrets are not asked for. `offline`: the template lock beside
    the flow is not read (runner/template_lock.py). `on_message`: called with every message
    rendered (plan counts what it needs from them: runner/marketing.py `PlusOne`)."""
    plan = compile_plan(load_flow(flow_file), offline=offline)
    missing = missing_csv(plan.loaded)  # said at the flow's line, before the CSV is read
    if missing is not None:
        plan.problems.add(missing)
        raise FlowInvalid(plan.problems)
    target = api_target(plan, for_run=False) if api else ApiTarget(plan.flow.api.kind, None)
    marketing_option = option_warning(plan, offline=offline)
    if marketing_option is not None:
        plan.problems.add(marketing_option)
    each = on_message
    if on_body is not None:
        dialect = dialects.build(target)

        def each(message: Message) -> None:
            on_body(message.body(dialect))
            if on_message is not None:
                on_message(message)

    result = survey(plan, sample, each)
    for line in plan.problems.lines("warning"):
        click.echo(line, err=True)
    if plan.problems.has_errors():
        raise FlowInvalid(plan.problems)
    return Checked(plan, result, target)


def ledger_for(
    flow_file: str | None, ledger_path: str | None, use_sandbox: bool
) -> tuple[Path, str | None]:
    """The ledger a command reads (--ledger, else the FLOW's), and the FLOW's name if given."""
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
