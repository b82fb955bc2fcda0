"""`flowrun contacts FLOW`: the customers of the flow's number who asked not to be messaged,
and `--import FILE.csv` to add a business's own opt-out list (a CSV with a `phone` column).

What counts is what the run honours (runner/contacts.py, with the flow's stop words): a stop
word the customer wrote, a marketing stop, an imported opt-out; a later resume word undoes a
stop.
"""

from __future__ import annotations

import csv
import sys
from dataclasses import dataclass
from pathlib import Path

import click

from runner import clock
from runner import dialect as dialects
from runner.contacts import IMPORTED, Contact, Keywords
from runner.errors import EXIT_OK, FlowInvalid, FlowrunError, Location, Problem, Problems
from runner.ledger import Preference, is_postgres, open_for_customers
from runner.loader import load_flow
from runner.plan import Plan, compile_plan
from runner.recipients import CsvError, normalize_phone, read_csv, with_phone
from runner.target import api_target
from runner.untrusted import printable

from .ledger_choice import location_of, named


@dataclass(frozen=True, slots=True)
class ContactsRequest:
    ledger_path: str | None = None
    use_sandbox: bool = False
    import_file: str | None = None
    as_csv: bool = False


def contacts(flow_file: str, request: ContactsRequest) -> int:
    plan = compile_plan(load_flow(flow_file))
    business = _business(plan, request.use_sandbox)
    location = location_of(plan.loaded.path, request.ledger_path, sandbox=request.use_sandbox)
    name = named(location)
    if request.import_file is not None:
        phones = _read_opt_outs(request.import_file)
        with open_for_customers(location) as ledger:
            at = clock.now().isoformat(timespec="seconds")
            ledger.record_webhooks([Preference(business, p, at, "stop", IMPORTED) for p in phones])
        click.echo(f"{request.import_file}: {len(phones):,} opt-out(s) added to {name}")
        return EXIT_OK
    if not is_postgres(location) and not Path(location).is_file():
        raise FlowrunError(f"{name}: no ledger here; run the flow first, or name one with --ledger")
    settings = plan.flow.settings
    words = Keywords.from_settings(settings.opt_out_keywords, settings.resume_keywords)
    with open_for_customers(location) as ledger:
        listed = []
        for customer in ledger.customers_heard(business):
            contact = Contact.of(*ledger.heard_from(business, customer), words)
            if contact.opted_out or contact.marketing_stopped:
                listed.append((customer, contact))
    _show(listed, request.as_csv)
    return EXIT_OK


def _business(plan: Plan, use_sandbox: bool) -> str:
    """The business number whose customers these are (as webhooks name it)."""
    if use_sandbox:
        from runner import sandbox

        return dialects.build(sandbox.target_for(plan.flow.api, "http://127.0.0.1")).business
    target = api_target(plan, for_run=True)
    if plan.problems.has_errors():
        raise FlowInvalid(plan.problems)
    return dialects.build(target).business


def _read_opt_outs(file: str) -> list[str]:
    """The phones of an opt-out list, normalised as recipients' are; every bad one is a
    located problem, and then nothing is imported."""
    problems = Problems()
    phones: dict[str, None] = {}
    try:
        for line, row in read_csv(Path(file), file, None):
            try:
                phones.setdefault(normalize_phone(with_phone(dict(row)).get("phone")))
            except ValueError as exc:
                problems.add(Problem(Location(file, line, 1), str(exc)))
    except CsvError as exc:
        problems.add(Problem(exc.location, str(exc), exc.hint))
    if problems.has_errors():
        raise FlowInvalid(problems)
    return list(phones)


def _show(listed: list[tuple[str, Contact]], as_csv: bool) -> None:
    rows = [
        (customer, "everything" if c.opted_out else "marketing", c.opted_out or c.marketing_stopped)
        for customer, c in listed
    ]
    if as_csv:
        writer = csv.writer(sys.stdout)
        writer.writerow(("customer", "withheld", "why"))
        writer.writerows(rows)
        return
    for customer, scope, why in rows:
        click.echo(f"{customer}  no {scope}: {printable(why or '')}")
    click.echo(f"{len(rows):,} customer(s) opted out")
