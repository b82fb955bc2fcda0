"""The API target: where and how a run reaches the API, rendered from the flow's `api` section
and the environment.

It is rendered apart from the messages, and only when needed: `validate` and `plan` run in CI
without secrets (a missing variable is a warning there), a run needs every value (an error),
and `--sandbox` uses the sandbox's own values instead (runner/sandbox). Secrets are kept out of
repr and never written anywhere.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from . import models
from .errors import Problem, Severity
from .plan import Plan
from .render import check_rendered
from .templates import RENDER_ERRORS, MissingEnv, compile_text, describe, vars_fields
from .yamldoc import YamlPath

_SECRETS = ("token", "password")  # a token file's trailing newline is stripped


@dataclass(frozen=True, slots=True)
class ApiTarget:
    """Where and how to reach the API (None where a value could not be rendered)."""

    kind: str
    base_url: str | None
    token: str | None = field(default=None, repr=False)
    phone_number_id: str | None = None
    version: str | None = None
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    template_namespace: str | None = None
    waba_id: str | None = None  # Cloud: the WhatsApp Business Account (templates pull)

    @property
    def ready(self) -> bool:
        """Whether a run can reach the API with this: a URL and a credential (and on Cloud,
        the phone number's id)."""
        credential = self.token is not None or (
            self.username is not None and self.password is not None
        )
        number = self.kind != "cloud" or self.phone_number_id is not None
        return self.base_url is not None and credential and number


def api_target(
    plan: Plan, *, for_run: bool, account: bool = False, base_url: str | None = None
) -> ApiTarget:
    """The flow's API target; what cannot be rendered is added to `plan.problems`.

    A missing environment variable is a warning where nothing is sent (validate and plan run
    in CI without secrets) and an error for a real run. `account`: also the WhatsApp Business
    Account's id (only `templates pull` needs it; a run must not ask for it). `base_url` (a
    run's --base-url, checked by `base_url_error`) replaces the flow's: its own is then not
    rendered at all.
    """
    api = plan.flow.api
    sources: dict[str, tuple[str | None, YamlPath]] = {
        "base_url": (api.base_url if base_url is None else None, ("api", "base_url")),
        "token": (api.token, ("api", "token")),
    }
    if isinstance(api, models.CloudApi):
        sources["phone_number_id"] = (api.phone_number_id, ("api", "phone_number_id"))
        if account:
            sources["waba_id"] = (api.waba_id, ("api", "waba_id"))
    else:
        sources["template_namespace"] = (api.template_namespace, ("api", "template_namespace"))
        if api.login is not None:
            sources["username"] = (api.login.username, ("api", "login", "username"))
            sources["password"] = (api.login.password, ("api", "login", "password"))
    values = {
        name: _render(plan, name, source, where, for_run)
        for name, (source, where) in sources.items()
        if source is not None
    }
    base_url = values.get("base_url", base_url)
    return ApiTarget(
        kind=api.kind,
        base_url=base_url.rstrip("/") if base_url else None,
        token=values.get("token"),
        phone_number_id=values.get("phone_number_id"),
        version=getattr(api, "version", None),
        username=values.get("username"),
        password=values.get("password"),
        template_namespace=values.get("template_namespace"),
        waba_id=values.get("waba_id"),
    )


def _render(plan: Plan, name: str, source: str, where: YamlPath, for_run: bool) -> str | None:
    # The api section is where secrets are read: it sees every variable (messages do not).
    context = {"env": plan.env, "vars": vars_fields(plan.flow.vars)}
    location = plan.loaded.locate(where)
    try:
        value = compile_text(source, api=True)(context)
    except MissingEnv as exc:
        severity: Severity = "error" if for_run else "warning"
        message = describe(exc) + ("" if for_run else "; a real run needs it")
        plan.problems.add(Problem(location, message, severity=severity))
        return None
    except RENDER_ERRORS as exc:
        plan.problems.add(Problem(location, describe(exc)))
        return None
    if name in _SECRETS:
        value = value.strip()
    error = _check(name, value)
    if error:
        plan.problems.add(Problem(location, error))
        return None
    return value


def base_url_error(url: str) -> str | None:
    """What is wrong with a base URL given on the command line (--base-url,
    FLOWRUN_BASE_URL), by the rule of the flow's own api.base_url; None if it can be used."""
    return _check("base_url", url)


def _check(name: str, value: str) -> str | None:
    """Rules on rendered API settings; a bad one would fail inside the HTTP client, after
    messages were marked, so it is refused before the run."""
    if name == "base_url":
        return check_rendered("link", value)
    if name == "phone_number_id" and not value.isdigit():
        return f"phone_number_id should be the number's id (digits), got {value!r}"
    if name == "waba_id" and not value.isdigit():
        return f"waba_id should be the WhatsApp Business Account's id (digits), got {value!r}"
    if name in _SECRETS and (not value or any(ord(c) < 32 or ord(c) == 127 for c in value)):
        return f"the {name} is empty or holds a control character (a line break?)"
    return None
