"""Marketing templates: which steps go through the Marketing Messages API, and where Meta will
not deliver them.

A template's category is known only from the template lock beside the flow
(runner/template_lock.py, written by `flowrun templates pull`): the flow itself never says it.
So:
- `api.marketing_messages: true` (Cloud) sends the steps whose template the lock files as
  MARKETING through `POST /{version}/{phone_number_id}/marketing_messages`, with the body a
  `/messages` send has; every other message keeps `/messages` (the Marketing Messages API takes
  marketing templates only: docs/whatsapp-api.md#marketing-messages-api). Without a lock no
  step uses it, and a warning at the option says why: sending every template there would have
  Meta refuse the utility ones, and guessing a category is worse than the ordinary path.
- `plan` warns at a step whose MARKETING template would go to +1 numbers: Meta has not
  delivered marketing templates to them since April 2025 (error 131049,
  docs/whatsapp-api.md#marketing-templates-to-1-numbers), whichever API sends them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from . import dialect as dialects
from . import models
from .dialect import template_key
from .errors import Problem
from .template_lock import LockError, lock_path, read_lock

if TYPE_CHECKING:
    from .plan import Plan
    from .render import Message
    from .target import ApiTarget

MARKETING = "MARKETING"  # the template category (Graph's `category`)
NANP = "1"  # WhatsApp ids of +1 numbers start with the country code


def marketing_templates(flow_path: Path) -> frozenset[tuple[str, str]]:
    """(name, language) of the MARKETING templates of the lock beside the flow at
    `flow_path`; none without a (readable) lock (a broken lock is reported where the flow is
    checked, runner/template_lock.py)."""
    path = lock_path(flow_path)
    if not path.is_file():
        return frozenset()
    try:
        shapes = read_lock(path)
    except LockError:
        return frozenset()
    return frozenset(key for key, shape in shapes.items() if shape.category == MARKETING)


def routed(plan: Plan) -> frozenset[tuple[str, str]]:
    """The templates a run sends through the Marketing Messages API: the lock's MARKETING
    ones when the flow says `api.marketing_messages: true`, else none."""
    api = plan.flow.api
    if not isinstance(api, models.CloudApi) or not api.marketing_messages:
        return frozenset()
    return marketing_templates(plan.loaded.path)


def dialect_for(plan: Plan, target: ApiTarget) -> dialects.Dialect:
    """The flow's dialect, knowing which templates take the Marketing Messages API."""
    return dialects.build(target, routed(plan))


def option_warning(plan: Plan, *, offline: bool = False) -> Problem | None:
    """A warning at `api.marketing_messages: true` when nothing tells flowrun which templates
    are MARKETING (no lock beside the flow, or --offline): every step then uses /messages."""
    api = plan.flow.api
    if not isinstance(api, models.CloudApi) or not api.marketing_messages:
        return None
    if not offline and lock_path(plan.loaded.path).is_file():
        return None
    return Problem(
        plan.loaded.locate(("api", "marketing_messages"), key=True),
        "api.marketing_messages: without the template lock flowrun cannot tell which templates"
        " are MARKETING, so every step goes through /messages",
        f"run flowrun templates pull {plan.loaded.path.name} (it writes"
        f" {lock_path(plan.loaded.path).name}, with each template's category)",
        severity="warning",
    )


@dataclass
class PlusOne:
    """Counts, per step, the +1 recipients a MARKETING template would go to (fed every
    rendered message, `collect`), for `plan`'s warning at those steps."""

    marketing: frozenset[tuple[str, str]]
    found: dict[str, set[str]] = field(default_factory=dict)  # step key → WhatsApp ids

    @classmethod
    def beside(cls, flow_path: Path) -> PlusOne:
        """For the flow at `flow_path` (known before it is compiled: `check` feeds it)."""
        return cls(marketing_templates(flow_path))

    @property
    def collect(self) -> Callable[[Message], None] | None:
        """What `check` calls with every message; None when the lock knows no MARKETING
        template (nothing to count)."""
        return self._one if self.marketing else None

    def _one(self, message: Message) -> None:
        if message.step.kind != "template" or not message.recipient.phone.startswith(NANP):
            return
        if template_key(message.content) in self.marketing:
            self.found.setdefault(message.step.key, set()).add(message.recipient.phone)

    def problems(self, plan: Plan) -> list[Problem]:
        """A located warning per step, with the count of such recipients."""
        steps = {step.key: step for step in plan.steps}
        return [
            Problem(
                plan.loaded.locate((*steps[key].path, "template"), key=True),
                f"step '{key}' sends a MARKETING template to {len(phones):,} recipient(s) with"
                " +1 (US) numbers: Meta has not delivered marketing templates to +1 numbers"
                " since April 2025 (they fail with error 131049)",
                "leave them out (recipients: {csv: ..., when: ...}), or use a UTILITY template"
                " if the message is one",
                severity="warning",
            )
            for key, phones in self.found.items()
        ]
