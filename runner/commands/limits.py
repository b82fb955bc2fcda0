"""The business portfolio's messaging limit, said before it bites: `plan` and a run warn (one
line, not a refusal) when more distinct customers would get a template now, outside their
24-hour window, than `settings.messaging_limit` lets reach them in a rolling 24 hours.

Why: since October 2025 the limit (250, 2,000, 10,000, 100,000 or unlimited) counts the
distinct customers a business portfolio messages outside a customer service window, across
all its numbers (docs/whatsapp-api.md#messaging-limits); a campaign larger than it is not sent
in one day, and flowrun cannot read the tier itself from the flow. Counted the way `plan`
counts a run now (runner/commands/outlook.py `Outlook.business_initiated`).
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from runner.dialect import Dialect
from runner.plan import Plan

from .ledger_choice import readable
from .outlook import outlook


def messaging_limit(plan: Plan) -> int | None:
    """The flow's stated limit; None when unset or unlimited (nothing to check)."""
    limit = plan.flow.settings.messaging_limit
    return None if limit is None or limit == "unlimited" else limit


def over_limit(plan: Plan, business_initiated: int) -> str | None:
    """The warning line when `business_initiated` recipients exceed the flow's limit."""
    limit = messaging_limit(plan)
    if limit is None or business_initiated <= limit:
        return None
    return (
        f"warning: {business_initiated:,} recipient(s) would get a template now outside their"
        f" 24-hour window, more than settings.messaging_limit ({limit:,} distinct customers"
        " per rolling 24 hours, per business portfolio): past it WhatsApp may hold or refuse"
        " them; send the rest later (--limit N) or wait for a higher limit"
    )


def before_run(plan: Plan, dialect: Dialect, ledger: str | Path, now: datetime) -> str | None:
    """A run's warning, before it sends: read as `plan` reads it (a PostgreSQL ledger from a
    snapshot: ledger_choice.py), and only when the flow has more recipients than its limit
    (otherwise it cannot be over it: no extra pass, no copy)."""
    limit = messaging_limit(plan)
    if limit is None or sum(1 for _ in plan.recipients()) <= limit:
        return None
    with readable(ledger) as (path, _name):
        return over_limit(plan, outlook(plan, dialect, path, now).business_initiated)
