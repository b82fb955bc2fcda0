"""The seam between flowrun and an API dialect (On-Premises `/v1`, or the Cloud API).

Everything that differs between the two (paths, body shapes, uploads, error envelopes, what an
error code means, limits, logging in, what a flow may say) lives behind `Dialect`; the executor
asks it questions and acts on the answers, so a third dialect is a module, not `if`s across
flowrun. This package is the one place a concrete dialect is chosen: `build` for a run,
`check_flow` for a flow's per-dialect rules, both by the flow's `api.kind`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .base import TEMPLATE_HINT, ApiFailure, Dialect, LoginFailed, Verdict, first, template_key

if TYPE_CHECKING:
    from runner.errors import Problems
    from runner.loader import LoadedFlow
    from runner.target import ApiTarget

__all__ = [
    "TEMPLATE_HINT",
    "ApiFailure",
    "Dialect",
    "LoginFailed",
    "Verdict",
    "build",
    "check_flow",
    "first",
    "template_key",
]


def build(target: ApiTarget, marketing: frozenset[tuple[str, str]] = frozenset()) -> Dialect:
    """The dialect that speaks to `target` (placeholders where values are unknown, so that
    `plan` shows bodies in CI without secrets). `marketing`: the (name, language) of the
    templates a Cloud run sends through the Marketing Messages API (runner/marketing.py)."""
    if target.kind == "cloud":
        from .cloud import BASE_URL, VERSION, Cloud

        return Cloud(
            target.base_url or BASE_URL,
            target.version or VERSION,
            target.phone_number_id or "PHONE_NUMBER_ID",
            marketing,
        )
    from .onprem import Credentials, OnPrem

    login = None
    if target.username is not None and target.password is not None:
        login = Credentials(target.username, target.password)
    return OnPrem(target.base_url or "", login, target.template_namespace)


def check_flow(loaded: LoadedFlow, problems: Problems) -> None:
    """What the flow's dialect accepts and the other does not, located at the step."""
    if loaded.flow.api.kind == "cloud":
        from .cloud import check_flow as cloud_rules

        cloud_rules(loaded, problems)
    else:
        from .onprem import check_flow as onprem_rules

        onprem_rules(loaded, problems)
